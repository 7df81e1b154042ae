// CUDA twins of the fused inference ops (kernels/packed_ops.h): one thread per
// pooled, added or dense-conv output, one warp per (sample, channel) mean and per
// linear output. No scratch memory, so they can be captured in a CUDA graph. CPU
// twins: kernels/packed_ops.cpp. Tests: tests/test_packed_ops.cpp,
// tests/test_packed_model.cpp.
#include <cuda_runtime.h>

#include "engine/cuda/check.h"
#include "engine/cuda/launch.cuh"
#include "kernels/packed_ops.h"

namespace ttq::kernels {

namespace {

__device__ __forceinline__ float act(float v, const float* scale, const float* shift, bool relu, int64_t c) {
  if (scale) v = v * scale[c];
  if (shift) v = v + shift[c];
  if (relu) v = fmaxf(v, 0.0f);
  return v;
}

struct AffineMaxPool {
  const float* x;
  int64_t x_sn, x_sc, c, h, w;
  const float *scale, *shift;
  bool relu;
  int kernel, stride, pad;
  float* y;
  int64_t y_sn, y_sc, ho, wo;
  __device__ void operator()(int64_t i) const {
    const int64_t ow = i % wo, oh = (i / wo) % ho, ch = (i / (wo * ho)) % c, n = i / (wo * ho * c);
    const float* in = x + n * x_sn + ch * x_sc;
    const int64_t h0 = max(oh * stride - pad, int64_t(0)), h1 = min(oh * stride - pad + kernel, h);
    const int64_t w0 = max(ow * stride - pad, int64_t(0)), w1 = min(ow * stride - pad + kernel, w);
    float m = __int_as_float(0xff800000);  // -inf: padding never wins
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        const float v = act(__ldg(in + ih * w + iw), scale, shift, relu, ch);
        m = fmaxf(m, v);
      }
    y[n * y_sn + ch * y_sc + oh * wo + ow] = m;
  }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

constexpr int kWarpsPerBlock = 8;

__global__ void affine_global_avgpool_kernel(const float* __restrict__ x, int64_t x_sn, int64_t x_sc,
                                             int64_t n, int64_t c, int64_t hw,
                                             const float* __restrict__ scale, const float* __restrict__ shift,
                                             bool relu, float* __restrict__ y) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n * c) return;
  const int64_t i = row / c, ch = row % c;
  const float* in = x + i * x_sn + ch * x_sc;
  float s = 0.0f;
  for (int64_t e = lane; e < hw; e += 32) s += act(__ldg(in + e), scale, shift, relu, ch);
  s = warp_sum(s);
  if (lane == 0) y[row] = s / static_cast<float>(hw);
}

__global__ void linear_kernel(const float* __restrict__ x, int64_t n, int64_t in, const float* __restrict__ w,
                              const float* __restrict__ b, int64_t out, float* __restrict__ y) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n * out) return;
  const int64_t i = row / out, o = row % out;
  const float* xr = x + i * in;
  const float* wr = w + o * in;
  float s = 0.0f;
  for (int64_t e = lane; e < in; e += 32) s = fmaf(__ldg(xr + e), __ldg(wr + e), s);
  s = warp_sum(s);
  if (lane == 0) y[row] = s + (b ? b[o] : 0.0f);
}

// PyTorch's avg_pool2d window: clipped to the padded input for the divisor when
// count_include_pad, then to the input for the sum (float accumulation, as PyTorch's
// CUDA kernel).
struct AvgPool {
  const float* x;
  int64_t x_sn, x_sc, c, h, w;
  int kernel, stride, pad;
  bool count_include_pad;
  float* y;
  int64_t y_sn, y_sc, ho, wo;
  __device__ void operator()(int64_t i) const {
    const int64_t ow = i % wo, oh = (i / wo) % ho, ch = (i / (wo * ho)) % c, n = i / (wo * ho * c);
    const float* in = x + n * x_sn + ch * x_sc;
    int64_t h0 = oh * stride - pad, w0 = ow * stride - pad;
    int64_t h1 = min(h0 + kernel, h + pad), w1 = min(w0 + kernel, w + pad);
    const int64_t padded = (h1 - h0) * (w1 - w0);
    h0 = max(h0, int64_t(0)), w0 = max(w0, int64_t(0));
    h1 = min(h1, h), w1 = min(w1, w);
    float s = 0.0f;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) s += __ldg(in + ih * w + iw);
    const int64_t inside = max(h1 - h0, int64_t(0)) * max(w1 - w0, int64_t(0));
    const int64_t divisor = count_include_pad ? padded : inside;
    y[n * y_sn + ch * y_sc + oh * wo + ow] = divisor > 0 ? s / static_cast<float>(divisor) : 0.0f;
  }
};

struct AddRelu {
  const float* a;
  int64_t a_sn, a_sc;
  const float* b;
  int64_t b_sn, b_sc;
  bool relu;
  float* y;
  int64_t y_sn, y_sc, c, hw;
  __device__ void operator()(int64_t i) const {
    const int64_t e = i % hw, ch = (i / hw) % c, n = i / (hw * c);
    // No __ldg: y may be a or b itself.
    float v = a[n * a_sn + ch * a_sc + e] + b[n * b_sn + ch * b_sc + e];
    if (relu) v = fmaxf(v, 0.0f);
    y[n * y_sn + ch * y_sc + e] = v;
  }
};

// One thread per output; consecutive threads take consecutive columns (coalesced x
// reads), the weights of an output channel are read by a whole warp at once. Output
// channel o reads the input channels of its group, [grp*cg, (grp+1)*cg).
struct DenseConv {
  const float* x;
  int64_t x_sn, x_sc, h, w;
  const float* wgt;
  const float* b;
  int64_t co, cg, og, kh, kw;  // cg / og: input / output channels per group
  int sh, sw, ph, pw, dh, dw;
  float* y;
  int64_t y_sn, y_sc, ho, wo;
  __device__ void operator()(int64_t i) const {
    const int64_t ow = i % wo, oh = (i / wo) % ho, o = (i / (wo * ho)) % co, n = i / (wo * ho * co);
    const float* xg = x + n * x_sn + (o / og) * cg * x_sc;
    const float* wo_ = wgt + o * cg * kh * kw;
    float acc = 0.0f;
    for (int64_t c = 0; c < cg; ++c) {
      for (int64_t r = 0; r < kh; ++r) {
        const int64_t ih = oh * sh - ph + r * dh;
        if (ih < 0 || ih >= h) continue;
        for (int64_t s = 0; s < kw; ++s) {
          const int64_t iw = ow * sw - pw + s * dw;
          if (iw < 0 || iw >= w) continue;
          acc = fmaf(__ldg(xg + c * x_sc + ih * w + iw), __ldg(wo_ + (c * kh + r) * kw + s), acc);
        }
      }
    }
    y[n * y_sn + o * y_sc + oh * wo + ow] = acc + (b ? b[o] : 0.0f);
  }
};

unsigned warp_blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

void affine_maxpool_cuda(const float* x, int64_t x_sn, int64_t x_sc, int64_t n, int64_t c, int64_t h,
                         int64_t w, const float* scale, const float* shift, bool relu,
                         const MaxPoolSpec& pool, float* y, int64_t y_sn, int64_t y_sc, int64_t ho,
                         int64_t wo, cudaStream_t stream) {
  AffineMaxPool f{x,           x_sn,        x_sc,     c, h,    w,    scale, shift, relu,
                  pool.kernel, pool.stride, pool.pad, y, y_sn, y_sc, ho,    wo};
  cuda::launch_elementwise(n * c * ho * wo, stream, f);
}

void affine_global_avgpool_cuda(const float* x, int64_t x_sn, int64_t x_sc, int64_t n, int64_t c, int64_t hw,
                                const float* scale, const float* shift, bool relu, float* y,
                                cudaStream_t stream) {
  if (n * c == 0) return;
  affine_global_avgpool_kernel<<<warp_blocks(n * c), 32 * kWarpsPerBlock, 0, stream>>>(
      x, x_sn, x_sc, n, c, hw, scale, shift, relu, y);
  TTQ_CUDA_CHECK_LAUNCH();
}

void linear_cuda(const float* x, int64_t n, int64_t in, const float* w, const float* b, int64_t out, float* y,
                 cudaStream_t stream) {
  if (n * out == 0) return;
  linear_kernel<<<warp_blocks(n * out), 32 * kWarpsPerBlock, 0, stream>>>(x, n, in, w, b, out, y);
  TTQ_CUDA_CHECK_LAUNCH();
}

void avg_pool_cuda(const float* x, int64_t x_sn, int64_t x_sc, int64_t n, int64_t c, int64_t h, int64_t w,
                   const AvgPoolSpec& pool, float* y, int64_t y_sn, int64_t y_sc, int64_t ho, int64_t wo,
                   cudaStream_t stream) {
  AvgPool f{x, x_sn, x_sc, c,  h, w, pool.kernel, pool.stride, pool.pad, pool.count_include_pad,
            y, y_sn, y_sc, ho, wo};
  cuda::launch_elementwise(n * c * ho * wo, stream, f);
}

void add_cuda(const float* a, int64_t a_sn, int64_t a_sc, const float* b, int64_t b_sn, int64_t b_sc,
              bool relu, float* y, int64_t y_sn, int64_t y_sc, int64_t n, int64_t c, int64_t hw,
              cudaStream_t stream) {
  AddRelu f{a, a_sn, a_sc, b, b_sn, b_sc, relu, y, y_sn, y_sc, c, hw};
  cuda::launch_elementwise(n * c * hw, stream, f);
}

void dense_conv2d_cuda(const float* x, int64_t x_sn, int64_t x_sc, int64_t n, int64_t ci, int64_t h,
                       int64_t w, const float* wgt, const float* b, int64_t co, int64_t kh, int64_t kw,
                       const Conv2dParams& p, float* y, int64_t y_sn, int64_t y_sc, int64_t ho, int64_t wo,
                       cudaStream_t stream) {
  DenseConv f{x,
              x_sn,
              x_sc,
              h,
              w,
              wgt,
              b,
              co,
              ci / p.groups,
              co / p.groups,
              kh,
              kw,
              p.stride_h,
              p.stride_w,
              p.pad_h,
              p.pad_w,
              p.dilation_h,
              p.dilation_w,
              y,
              y_sn,
              y_sc,
              ho,
              wo};
  cuda::launch_elementwise(n * co * ho * wo, stream, f);
}

}  // namespace ttq::kernels
