// CUDA twin of the packed 2-bit convolution (kernels/packed_conv.h): an implicit
// GEMM, output channels x output pixels, K = ci*kh*kw, one launch per conv, no
// scratch memory (so a whole model can be captured in a CUDA graph). CPU twin:
// kernels/packed_conv_cpu.cpp; reference: kernels/packed_conv_ref.cpp; weight layouts
// (relayout_mma): kernels/packed_layout.cpp; tests: tests/test_packed_conv.cpp (CUDA vs CPU);
// timing: bench/bench_packed_conv.cpp (against cuDNN fp32 and fp16).
//
// Layers (docs/architecture.md, "Twins"): __device__ load_input / store_output ->
// the two __global__ kernels -> launch_* (templated tiles, raw pointers, explicit
// stream) -> packed_conv_cuda (picks the path; the tensor entry is in
// packed_conv.cpp).
//
// Tensor-core path: mma.sync.m16n8k16, fp16 operands, fp32 accumulators. A is read
// straight from global memory in fragment order (relayout_mma: one uint16 per lane
// per 16x16 tile, 64 coalesced bytes per warp) and decoded in registers into two
// 0/1 operands, P and N (a half 1.0 is 0x3C00, so a pair of codes becomes a half2 with
// one AND, one shift, one OR and one multiply); two MMAs share each B fragment and
// the epilogue forms Wp * acc_P - Wn * acc_N, so the signs are exact and only the
// activations are rounded (to fp16, after the prologue). Hopper has no 2-bit or 1-bit
// MMA; decoding to fp16 keeps the weights 2-bit in memory and HMMA does the rest.
// B (the implicit im2col of the activated input) goes through shared memory, two
// buffers, the next stage's global loads issued before the current stage's MMAs.
// These convs are small (a batch-1 DenseNet layer is 2-30 MFLOP), so the kernel is
// latency-bound: tiles are chosen to put at least one block on every SM when the
// problem allows, and the weights (a few KB per layer) stay in L2.
// Grouped convs: blockIdx.z is the group; a block computes output channels of its
// group only (rows relative to the group, co/groups of them) from the group's input
// channels, so every tile, offset and fragment of the one-group kernel is unchanged.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>

#include "engine/cuda/check.h"
#include "engine/cuda/context.h"
#include "engine/cuda/runtime.h"
#include "kernels/packed_conv.h"
#include "kernels/packed_format.h"

namespace ttq::kernels {

namespace {

// Everything a kernel needs, precomputed on the host (passed by value).
// co / ci: all channels; og / cg: per group (equal to co / ci with one group); k = cg*kh*kw.
struct Geo {
  int n, ci, h, w, co, kh, kw, stride, pad, hs, ws, ho, wo, k, pixels;
  int groups, cg, og;
  bool pool2, pre_relu, post_relu;
  int64_t x_sn, x_sc, y_sn, y_sc, r_sn, r_sc;
  const float* x;
  float* y;
  const float* res;
  const float *pre_scale, *pre_shift, *post_scale, *post_shift;
  float wp, wn;
};

__device__ __forceinline__ float pre_act(const Geo& g, float v, int c) {
  if (g.pre_scale) v = v * __ldg(g.pre_scale + c);
  if (g.pre_shift) v = v + __ldg(g.pre_shift + c);
  if (g.pre_relu) v = fmaxf(v, 0.0f);
  return v;
}

// The conv's input at (n, c, ih, iw) of the activated (and pooled) plane; 0 in the padding.
__device__ __forceinline__ float load_input(const Geo& g, int n, int c, int ih, int iw) {
  if (ih < 0 || ih >= g.hs || iw < 0 || iw >= g.ws) return 0.0f;
  const float* plane = g.x + n * g.x_sn + c * g.x_sc;
  if (!g.pool2) return pre_act(g, __ldg(plane + ih * g.w + iw), c);
  const float* p = plane + 2 * ih * g.w + 2 * iw;
  const float s = ((pre_act(g, __ldg(p), c) + pre_act(g, __ldg(p + 1), c)) + pre_act(g, __ldg(p + g.w), c)) +
                  pre_act(g, __ldg(p + g.w + 1), c);
  return s * 0.25f;
}

// co: the output channel within group grp.
__device__ __forceinline__ void store_output(const Geo& g, float v, int grp, int co, int pix) {
  if (co >= g.og || pix >= g.pixels) return;
  co += grp * g.og;
  const int plane = g.ho * g.wo;
  const int n = pix / plane, p = pix - n * plane;
  if (g.post_scale) v = v * __ldg(g.post_scale + co);
  if (g.post_shift) v = v + __ldg(g.post_shift + co);
  if (g.post_relu) v = fmaxf(v, 0.0f);
  if (g.res) v += __ldg(g.res + n * g.r_sn + co * g.r_sc + p);
  g.y[n * g.y_sn + co * g.y_sc + p] = v;
}

// Tap k = (c, i, j) of pixel (n, oh, ow), c counted from the group's first input
// channel c0; KS = kernel size when known at compile time.
template <int KS>
__device__ __forceinline__ float im2col_value(const Geo& g, int n, int c0, int ih0, int iw0, int k) {
  const int kh = KS > 0 ? KS : g.kh, kw = KS > 0 ? KS : g.kw;
  const int c = k / (kh * kw), rem = k - c * (kh * kw), i = rem / kw, j = rem - i * kw;
  return load_input(g, n, c0 + c, ih0 + i, iw0 + j);
}

// ---- CUDA-core fallback: any shape, fp32 FMA ----------------------------------------------

constexpr int kSimtBM = 32, kSimtBN = 64, kSimtBK = 16, kSimtTM = 4, kSimtTN = 4;
constexpr int kSimtThreads = (kSimtBM / kSimtTM) * (kSimtBN / kSimtTN);

__global__ void __launch_bounds__(kSimtThreads)
    packed_conv_simt_kernel(Geo g, const uint8_t* __restrict__ codes) {
  __shared__ float as[kSimtBK][kSimtBM];
  __shared__ float bs[kSimtBK][kSimtBN];
  const int tid = threadIdx.x;
  const int co0 = blockIdx.y * kSimtBM, pix0 = blockIdx.x * kSimtBN, grp = blockIdx.z;
  const int c0 = grp * g.cg;
  const int tx = tid % (kSimtBN / kSimtTN), ty = tid / (kSimtBN / kSimtTN);
  float acc[kSimtTM][kSimtTN] = {};
  const int plane = g.ho * g.wo;
  for (int k0 = 0; k0 < g.k; k0 += kSimtBK) {
    for (int e = tid; e < kSimtBK * kSimtBM; e += kSimtThreads) {
      const int kk = e / kSimtBM, m = e % kSimtBM, co = co0 + m, k = k0 + kk;
      float v = 0.0f;
      if (co < g.og && k < g.k) {
        // Row grp*og + co of the layer's [co, k] canonical matrix.
        const int64_t idx = (static_cast<int64_t>(grp) * g.og + co) * g.k + k;
        v = packed::value_of(packed::code_at(codes[packed::byte_of(idx)], idx), g.wp, g.wn);
      }
      as[kk][m] = v;
    }
    for (int e = tid; e < kSimtBK * kSimtBN; e += kSimtThreads) {
      const int kk = e / kSimtBN, nn = e % kSimtBN, pix = pix0 + nn, k = k0 + kk;
      float v = 0.0f;
      if (pix < g.pixels && k < g.k) {
        const int n = pix / plane, p = pix - n * plane, oh = p / g.wo, ow = p - oh * g.wo;
        v = im2col_value<0>(g, n, c0, oh * g.stride - g.pad, ow * g.stride - g.pad, k);
      }
      bs[kk][nn] = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSimtBK; ++kk) {
      float av[kSimtTM], bv[kSimtTN];
#pragma unroll
      for (int i = 0; i < kSimtTM; ++i) av[i] = as[kk][ty * kSimtTM + i];
#pragma unroll
      for (int j = 0; j < kSimtTN; ++j) bv[j] = bs[kk][tx * kSimtTN + j];
#pragma unroll
      for (int i = 0; i < kSimtTM; ++i)
#pragma unroll
        for (int j = 0; j < kSimtTN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kSimtTM; ++i)
#pragma unroll
    for (int j = 0; j < kSimtTN; ++j)
      store_output(g, acc[i][j], grp, co0 + ty * kSimtTM + i, pix0 + tx * kSimtTN + j);
}

// ---- tensor-core path ----------------------------------------------------------------

// Two codes (4 bits: low k in bits 0-1) -> half2 of their P membership (code 1) and of
// their N membership (code 2), 1.0 or 0.0 each, low half = low k.
__device__ __forceinline__ uint32_t decode_p(uint32_t nib) {
  return ((nib & 1u) | ((nib & 4u) << 14)) * 0x3C00u;
}
__device__ __forceinline__ uint32_t decode_n(uint32_t nib) {
  return (((nib >> 1) & 1u) | ((nib & 8u) << 13)) * 0x3C00u;
}

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // never launched: packed_conv_cuda checks the binary's architecture
#endif
}

constexpr int kMmaThreads = 128;  // 4 warps
constexpr int kMmaBK = 32;        // two k16 steps per stage
constexpr int kMmaPad = 8;        // halves of padding per B row: conflict-free fragment reads

// Block tile (16*MT*WM) output channels x (8*NT*WN) pixels of group blockIdx.z; warp
// (wm, wn) owns MT x NT m16n8 tiles. KS: kernel size (0: read from g). words: every
// group's fragments, mtiles * ksteps * 32 per group.
template <int MT, int NT, int WM, int WN, int KS>
__global__ void __launch_bounds__(kMmaThreads)
    packed_conv_mma_kernel(Geo g, const uint16_t* __restrict__ words, int mtiles, int ksteps) {
  static_assert(WM * WN * 32 == kMmaThreads, "4 warps");
  constexpr int BM = 16 * MT * WM, BN = 8 * NT * WN;
  static_assert(kMmaThreads % BN == 0, "each thread loads B for one pixel");
  constexpr int kRowsPerPass = kMmaThreads / BN;  // k rows a pass of the block covers
  constexpr int kLoads = kMmaBK / kRowsPerPass;   // B elements per thread per stage
  __shared__ __align__(16) __half bs[2][BN][kMmaBK + kMmaPad];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp / WN, wn = warp % WN;
  const int gq = lane / 4, tq = lane % 4;
  const int mt0 = blockIdx.y * (BM / 16) + wm * MT;  // first m-tile of this warp (in its group)
  const int pix0 = blockIdx.x * BN;
  const int grp = blockIdx.z, c0 = grp * g.cg;
  words += static_cast<int64_t>(grp) * mtiles * ksteps * 32;

  // This thread's B pixel (fixed for the whole K loop).
  const int my_n = tid % BN, my_k = tid / BN;
  const int pix = pix0 + my_n;
  const bool pix_ok = pix < g.pixels;
  int n = 0, ih0 = 0, iw0 = 0;
  if (pix_ok) {
    const int plane = g.ho * g.wo;
    n = pix / plane;
    const int p = pix - n * plane, oh = p / g.wo, ow = p - oh * g.wo;
    ih0 = oh * g.stride - g.pad;
    iw0 = ow * g.stride - g.pad;
  }

  float acc_p[MT][NT][4], acc_n[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_p[i][j][e] = acc_n[i][j][e] = 0.0f;

  float b_next[kLoads];
  uint32_t a_next[MT][2];
  auto load_stage = [&](int stage) {
    const int k0 = stage * kMmaBK;
#pragma unroll
    for (int r = 0; r < kLoads; ++r) {
      const int k = k0 + my_k + r * kRowsPerPass;
      b_next[r] = pix_ok && k < g.k ? im2col_value<KS>(g, n, c0, ih0, iw0, k) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const int mt = mt0 + i, ks = stage * 2 + s;
        a_next[i][s] = mt < mtiles && ks < ksteps
                           ? __ldg(words + (static_cast<int64_t>(mt) * ksteps + ks) * 32 + lane)
                           : 0u;
      }
  };
  auto store_stage = [&](int buf) {
#pragma unroll
    for (int r = 0; r < kLoads; ++r) bs[buf][my_n][my_k + r * kRowsPerPass] = __float2half_rn(b_next[r]);
  };

  const int stages = (ksteps + 1) / 2;
  load_stage(0);
  store_stage(0);
  uint32_t a_cur[MT][2];
#pragma unroll
  for (int i = 0; i < MT; ++i) a_cur[i][0] = a_next[i][0], a_cur[i][1] = a_next[i][1];
  __syncthreads();
  for (int stage = 0; stage < stages; ++stage) {
    const int buf = stage & 1;
    if (stage + 1 < stages) load_stage(stage + 1);  // global loads in flight during the MMAs
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      uint32_t ap[MT][4], an[MT][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const uint32_t w = a_cur[i][s];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const uint32_t nib = (w >> (4 * r)) & 0xFu;
          ap[i][r] = decode_p(nib);
          an[i][r] = decode_n(nib);
        }
      }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int col = wn * NT * 8 + j * 8 + gq;
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(&bs[buf][col][s * 16 + 2 * tq]);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(&bs[buf][col][s * 16 + 2 * tq + 8]);
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          mma_16816(acc_p[i][j], ap[i], b0, b1);
          mma_16816(acc_n[i][j], an[i], b0, b1);
        }
      }
    }
    if (stage + 1 < stages) {
      store_stage(buf ^ 1);
#pragma unroll
      for (int i = 0; i < MT; ++i) a_cur[i][0] = a_next[i][0], a_cur[i][1] = a_next[i][1];
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < MT; ++i) {
    const int co_base = (mt0 + i) * 16 + gq;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int p_base = pix0 + wn * NT * 8 + j * 8 + 2 * tq;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float v = g.wp * acc_p[i][j][e] - g.wn * acc_n[i][j][e];
        store_output(g, v, grp, co_base + (e >= 2 ? 8 : 0), p_base + (e & 1));
      }
    }
  }
}

template <int MT, int NT, int WM, int WN>
void launch_mma(const Geo& g, const uint16_t* words, int mtiles, int ksteps, cudaStream_t stream) {
  constexpr int BM = 16 * MT * WM, BN = 8 * NT * WN;
  const dim3 grid((g.pixels + BN - 1) / BN, (g.og + BM - 1) / BM, g.groups);
  if (g.kh == 1 && g.kw == 1) {
    packed_conv_mma_kernel<MT, NT, WM, WN, 1><<<grid, kMmaThreads, 0, stream>>>(g, words, mtiles, ksteps);
  } else if (g.kh == 3 && g.kw == 3) {
    packed_conv_mma_kernel<MT, NT, WM, WN, 3><<<grid, kMmaThreads, 0, stream>>>(g, words, mtiles, ksteps);
  } else {
    packed_conv_mma_kernel<MT, NT, WM, WN, 0><<<grid, kMmaThreads, 0, stream>>>(g, words, mtiles, ksteps);
  }
  TTQ_CUDA_CHECK_LAUNCH();
}

// Tile choice: BM from the channel count of a group (16, 32 or 64 rows), then the
// widest BN in {128, 64, 32} (as the BM allows) that still gives every SM a block; the
// narrowest otherwise (batch-1 layers are too small to fill the GPU at any tile).
void launch_tensor_core(const Geo& g, const uint16_t* words, int mtiles, int ksteps, cudaStream_t stream) {
  const int sms = cuda::sm_count();
  auto blocks = [&](int bm, int bn) {
    return static_cast<int64_t>(g.groups) * ((g.og + bm - 1) / bm) * ((g.pixels + bn - 1) / bn);
  };
  if (g.og <= 16) {
    if (blocks(16, 128) >= sms) return launch_mma<1, 4, 1, 4>(g, words, mtiles, ksteps, stream);
    if (blocks(16, 64) >= sms) return launch_mma<1, 2, 1, 4>(g, words, mtiles, ksteps, stream);
    return launch_mma<1, 1, 1, 4>(g, words, mtiles, ksteps, stream);
  }
  if (g.og <= 32) {
    if (blocks(32, 64) >= sms) return launch_mma<2, 2, 1, 4>(g, words, mtiles, ksteps, stream);
    return launch_mma<2, 1, 1, 4>(g, words, mtiles, ksteps, stream);
  }
  if (blocks(64, 64) >= sms) return launch_mma<2, 4, 2, 2>(g, words, mtiles, ksteps, stream);
  return launch_mma<2, 2, 2, 2>(g, words, mtiles, ksteps, stream);
}

void launch_simt(const Geo& g, const uint8_t* codes, cudaStream_t stream) {
  const dim3 grid((g.pixels + kSimtBN - 1) / kSimtBN, (g.og + kSimtBM - 1) / kSimtBM, g.groups);
  packed_conv_simt_kernel<<<grid, kSimtThreads, 0, stream>>>(g, codes);
  TTQ_CUDA_CHECK_LAUNCH();
}

int checked_int(int64_t v, const char* what) {
  TTQ_CHECK(v >= 0 && v <= INT32_MAX) << "packed_conv_cuda: " << what << " = " << v << " exceeds int";
  return static_cast<int>(v);
}

}  // namespace

bool packed_conv_tensor_cores_supported() {
  // The architecture of the binary that would run (not only the device's): a build
  // for an older target runs PTX without mma.m16n8k16.
  static std::mutex mutex;
  static int cached[64];
  static bool known[64] = {};
  const int dev = cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  if (dev < 64 && known[dev]) return cached[dev] != 0;
  const int ok =
      cuda::kernel_binary_version(reinterpret_cast<const void*>(packed_conv_mma_kernel<1, 1, 1, 4, 1>)) >= 80
          ? 1
          : 0;
  if (dev < 64) {
    cached[dev] = ok;
    known[dev] = true;
  }
  return ok != 0;
}

void packed_conv_cuda(const PackedConvArgs& a, const uint8_t* canonical, const uint16_t* mma, CudaPath path,
                      cudaStream_t stream) {
  const PackedConvShape& s = a.shape;
  TTQ_CHECK(s.n >= 0 && s.ci >= 1 && s.co >= 1 && s.kh >= 1 && s.kw >= 1 && s.stride >= 1 && s.pad >= 0)
      << "packed_conv_cuda: bad shape";
  TTQ_CHECK(s.groups >= 1 && s.groups <= 65535 && s.ci % s.groups == 0 && s.co % s.groups == 0)
      << "packed_conv_cuda: " << s.groups << " groups for " << s.ci << " -> " << s.co
      << " channels (at most 65535, dividing both)";
  TTQ_CHECK(s.ho() >= 1 && s.wo() >= 1) << "packed_conv_cuda: empty output";
  TTQ_CHECK(a.x && a.y && canonical) << "packed_conv_cuda: null operand";
  Geo g{};
  g.n = checked_int(s.n, "n");
  g.ci = checked_int(s.ci, "ci");
  g.h = checked_int(s.h, "h");
  g.w = checked_int(s.w, "w");
  g.co = checked_int(s.co, "co");
  g.kh = checked_int(s.kh, "kh");
  g.kw = checked_int(s.kw, "kw");
  g.stride = s.stride;
  g.pad = s.pad;
  g.hs = checked_int(s.hs(), "hs");
  g.ws = checked_int(s.ws(), "ws");
  g.ho = checked_int(s.ho(), "ho");
  g.wo = checked_int(s.wo(), "wo");
  g.k = checked_int(s.k(), "k");
  g.groups = checked_int(s.groups, "groups");
  g.cg = checked_int(s.cg(), "ci/groups");
  g.og = checked_int(s.og(), "co/groups");
  g.pixels = checked_int(s.n * s.ho() * s.wo(), "pixels");
  checked_int(s.co * s.k(), "co*k");
  checked_int(s.h * s.w, "h*w");  // load_input indexes a plane in int
  g.pool2 = s.pool2;
  g.pre_relu = a.pre.relu;
  g.post_relu = a.post.relu;
  g.x_sn = a.x_sn;
  g.x_sc = a.x_sc;
  g.y_sn = a.y_sn;
  g.y_sc = a.y_sc;
  g.r_sn = a.r_sn;
  g.r_sc = a.r_sc;
  g.x = a.x;
  g.y = a.y;
  g.res = a.residual;
  g.pre_scale = a.pre.scale;
  g.pre_shift = a.pre.shift;
  g.post_scale = a.post.scale;
  g.post_shift = a.post.shift;
  g.wp = a.wp;
  g.wn = a.wn;
  if (g.pixels == 0) return;
  if (path == CudaPath::Auto)
    path = mma && packed_conv_tensor_cores_supported() ? CudaPath::TensorCore : CudaPath::Simt;
  if (path == CudaPath::TensorCore) {
    TTQ_CHECK(mma != nullptr) << "packed_conv_cuda: the tensor-core path needs the fragment-order codes";
    TTQ_CHECK(packed_conv_tensor_cores_supported())
        << "packed_conv_cuda: the tensor-core path needs a build and a device of compute capability >= 8.0";
    launch_tensor_core(g, mma, (g.og + 15) / 16, (g.k + 15) / 16, stream);
    return;
  }
  launch_simt(g, canonical, stream);
}

}  // namespace ttq::kernels
