// CUDA twin of the W2A8 convolution (kernels/int8_conv.h): an implicit GEMM, output
// channels x output pixels, reduced over k-quads (4 input channels at one tap) with
// __dp4a on int8x4 words, int32 accumulators, one launch, no scratch memory. CPU twin,
// reference and the layout: kernels/int8_conv.cpp; docs/int8.md; tests:
// tests/test_int8_conv.cpp (against the reference, bit for bit).
//
// The weights are the CPU layout's mask words (Int8WeightLayout::masks) on the device:
// byte e of a word is 0 or 1 for channel 4*cq + e, one word for +1 and one for -1 per
// (row, quad). Activations enter dp4a as signed bytes q (the padding holds the zero point
// zx, channels past the group's hold 0), so
//   acc_P = sum over +1 taps of q_or_zx,  P = acc_P - zx * npos
// exactly, and N likewise. The float steps use the _rn intrinsics (no contraction), in
// int8_dequant / int8_requant's order, so the bits match the CPU.
#include <cuda_runtime.h>

#include <climits>

#include "engine/cuda/check.h"
#include "kernels/int8_conv.h"

namespace ttq::kernels {

namespace {

struct Geo {
  int ci, h, w, co, kh, kw, stride, pad, ho, wo, cg, og, cqs, kqs, blocks, pixels;
  int64_t x_sn, x_sc, y_sn, y_sc;
  const int8_t* x;
  int zx;
  Int8Out out;
  int32_t* p_sum;
  int32_t* n_sum;
  float* y;
  int8_t* yq;
  const float* post_scale;
  const float* post_shift;
  bool relu;
  float a, b, inv;
  int zy;
};

constexpr int kBM = 32, kBN = 64, kBKQ = 8, kTM = 2, kTN = 4;
constexpr int kThreads = (kBM / kTM) * (kBN / kTN);  // 256
static_assert(kBKQ * kBM == kThreads, "one weight word per thread per stage");

// The word of channels 4cq..4cq+3 (of the group starting at channel c0) at input (ih, iw).
__device__ __forceinline__ uint32_t load_quad(const Geo& g, int n, int c0, int cq, int ih, int iw) {
  const bool inside = ih >= 0 && ih < g.h && iw >= 0 && iw < g.w;
  uint32_t word = 0;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int c = 4 * cq + e;
    uint32_t b = 0;
    if (c < g.cg) {
      b = inside ? static_cast<uint8_t>(__ldg(g.x + n * g.x_sn + (c0 + c) * g.x_sc + ih * g.w + iw))
                 : static_cast<uint8_t>(g.zx);
    }
    word |= b << (8 * e);
  }
  return word;
}

__device__ __forceinline__ void store_output(const Geo& g, int o, int pix, int p, int m) {
  const int plane = g.ho * g.wo;
  const int n = pix / plane, pos = pix - n * plane;
  const int64_t idx = n * g.y_sn + o * g.y_sc + pos;
  if (g.out == Int8Out::Int32) {
    g.p_sum[idx] = p;
    g.n_sum[idx] = m;
    return;
  }
  float v = __fmaf_rn(g.a, __int2float_rn(p), -__fmul_rn(g.b, __int2float_rn(m)));
  v = __fmaf_rn(v, g.post_scale ? __ldg(g.post_scale + o) : 1.0f,
                g.post_shift ? __ldg(g.post_shift + o) : 0.0f);
  if (g.relu) v = v > 0.0f ? v : 0.0f;
  if (g.out == Int8Out::F32) {
    g.y[idx] = v;
    return;
  }
  float f = __fmul_rn(v, g.inv);
  f = f > -256.0f ? f : -256.0f;
  f = f < 256.0f ? f : 256.0f;
  int q = __float2int_rn(f) + g.zy;
  q = q < -128 ? -128 : (q > 127 ? 127 : q);
  g.yq[idx] = static_cast<int8_t>(q);
}

// Block: kBM rows of group blockIdx.z x kBN pixels; thread: kTM rows x kTN pixels.
__global__ void __launch_bounds__(kThreads)
    int8_conv_dp4a_kernel(Geo g, const uint32_t* __restrict__ masks, const int32_t* __restrict__ counts) {
  __shared__ uint32_t wps[kBKQ][kBM];
  __shared__ uint32_t wns[kBKQ][kBM];
  __shared__ uint32_t xs[kBKQ][kBN];
  const int tid = threadIdx.x;
  const int row0 = blockIdx.y * kBM, pix0 = blockIdx.x * kBN, grp = blockIdx.z;
  const int c0 = grp * g.cg;
  const int tx = tid % (kBN / kTN), ty = tid / (kBN / kTN);
  const int plane = g.ho * g.wo, taps = g.kh * g.kw;
  int accp[kTM][kTN] = {}, accn[kTM][kTN] = {};
  for (int kq0 = 0; kq0 < g.kqs; kq0 += kBKQ) {
    {
      const int kk = tid / kBM, m = tid % kBM, row = row0 + m, kq = kq0 + kk;
      uint32_t pm = 0, nm = 0;
      if (row < g.og && kq < g.kqs) {
        const int64_t at =
            ((((static_cast<int64_t>(grp) * g.blocks + row / 4) * g.kqs + kq) * 4) + row % 4) * 2;
        pm = __ldg(masks + at);
        nm = __ldg(masks + at + 1);
      }
      wps[kk][m] = pm;
      wns[kk][m] = nm;
    }
    for (int e = tid; e < kBKQ * kBN; e += kThreads) {
      const int kk = e / kBN, nn = e % kBN, pix = pix0 + nn, kq = kq0 + kk;
      uint32_t word = 0;
      if (pix < g.pixels && kq < g.kqs) {
        const int n = pix / plane, p = pix - n * plane, oh = p / g.wo, ow = p - oh * g.wo;
        const int cq = kq / taps, rem = kq - cq * taps, i = rem / g.kw, j = rem - i * g.kw;
        word = load_quad(g, n, c0, cq, oh * g.stride - g.pad + i, ow * g.stride - g.pad + j);
      }
      xs[kk][nn] = word;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBKQ; ++kk) {
      int pv[kTM], nv[kTM], xv[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        pv[i] = static_cast<int>(wps[kk][ty * kTM + i]);
        nv[i] = static_cast<int>(wns[kk][ty * kTM + i]);
      }
#pragma unroll
      for (int j = 0; j < kTN; ++j) xv[j] = static_cast<int>(xs[kk][tx * kTN + j]);
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) {
          accp[i][j] = __dp4a(xv[j], pv[i], accp[i][j]);
          accn[i][j] = __dp4a(xv[j], nv[i], accn[i][j]);
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int row = row0 + ty * kTM + i;
    if (row >= g.og) continue;
    const int o = grp * g.og + row;
    const int corr_p = g.zx * __ldg(counts + o), corr_n = g.zx * __ldg(counts + g.co + o);
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int pix = pix0 + tx * kTN + j;
      if (pix < g.pixels) store_output(g, o, pix, accp[i][j] - corr_p, accn[i][j] - corr_n);
    }
  }
}

}  // namespace

void ternary_int8_conv_cuda(const Int8ConvArgs& a, const uint32_t* masks, const int32_t* counts,
                            cudaStream_t stream) {
  ternary_int8_conv_check(a);
  const Int8ConvShape& s = a.shape;
  TTQ_CHECK(masks != nullptr && counts != nullptr) << "ternary_int8_conv_cuda: null weight layout";
  if (s.n == 0) return;
  TTQ_CHECK(s.n * s.ho() * s.wo() <= INT_MAX && s.ci <= INT_MAX && s.co <= INT_MAX && s.h * s.w <= INT_MAX)
      << "ternary_int8_conv_cuda: sizes past the kernel's 32-bit indices";
  TTQ_CHECK(s.groups <= 65535) << "ternary_int8_conv_cuda: " << s.groups << " groups (at most 65535)";
  Geo g;
  g.ci = static_cast<int>(s.ci);
  g.h = static_cast<int>(s.h);
  g.w = static_cast<int>(s.w);
  g.co = static_cast<int>(s.co);
  g.kh = static_cast<int>(s.kh);
  g.kw = static_cast<int>(s.kw);
  g.stride = s.stride;
  g.pad = s.pad;
  g.ho = static_cast<int>(s.ho());
  g.wo = static_cast<int>(s.wo());
  g.cg = static_cast<int>(s.cg());
  g.og = static_cast<int>(s.og());
  g.cqs = (g.cg + 3) / 4;
  g.kqs = g.cqs * g.kh * g.kw;
  g.blocks = (g.og + 3) / 4;
  g.pixels = static_cast<int>(s.n * s.ho() * s.wo());
  g.x_sn = a.x_sn;
  g.x_sc = a.x_sc;
  g.y_sn = a.y_sn;
  g.y_sc = a.y_sc;
  g.x = a.x;
  g.zx = a.x_quant.zero_point;
  g.out = a.out;
  g.p_sum = a.p_sum;
  g.n_sum = a.n_sum;
  g.y = a.y;
  g.yq = a.yq;
  g.post_scale = a.post.scale;
  g.post_shift = a.post.shift;
  g.relu = a.post.relu;
  // The same float products as the CPU's make_epi.
  g.a = a.wp * a.x_quant.scale;
  g.b = a.wn * a.x_quant.scale;
  g.inv = 1.0f / a.y_quant.scale;
  g.zy = a.y_quant.zero_point;
  const int64_t grid_y = (g.og + kBM - 1) / kBM;
  TTQ_CHECK(grid_y <= 65535) << "ternary_int8_conv_cuda: " << g.og << " output channels per group";
  const dim3 grid(static_cast<unsigned>((g.pixels + kBN - 1) / kBN), static_cast<unsigned>(grid_y),
                  static_cast<unsigned>(s.groups));
  int8_conv_dp4a_kernel<<<grid, kThreads, 0, stream>>>(g, masks, counts);
  TTQ_CUDA_CHECK_LAUNCH();
}

}  // namespace ttq::kernels
