// CUDA twins of the fused inference ops (kernels/packed_ops.h): one thread per
// pooled output, one warp per (sample, channel) mean and per linear output. No
// scratch memory, so they can be captured in a CUDA graph. CPU twins:
// kernels/packed_ops.cpp. Tests: tests/test_packed_model.cpp.
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

// One thread per output; consecutive threads take consecutive columns (coalesced x
// reads), the weights of an output channel are read by a whole warp at once.
struct DenseConv {
  const float* x;
  int64_t ci, h, w;
  const float* wgt;
  const float* b;
  int64_t co, k;
  int pad;
  float* y;
  int64_t ho, wo;
  __device__ void operator()(int64_t i) const {
    const int64_t ow = i % wo, oh = (i / wo) % ho, o = (i / (wo * ho)) % co, n = i / (wo * ho * co);
    const float* xn = x + n * ci * h * w;
    const float* wo_ = wgt + o * ci * k * k;
    float acc = 0.0f;
    for (int64_t c = 0; c < ci; ++c) {
      for (int64_t r = 0; r < k; ++r) {
        const int64_t ih = oh - pad + r;
        if (ih < 0 || ih >= h) continue;
        for (int64_t s = 0; s < k; ++s) {
          const int64_t iw = ow - pad + s;
          if (iw < 0 || iw >= w) continue;
          acc = fmaf(__ldg(xn + (c * h + ih) * w + iw), __ldg(wo_ + (c * k + r) * k + s), acc);
        }
      }
    }
    y[i] = acc + (b ? b[o] : 0.0f);
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

void dense_conv2d_cuda(const float* x, int64_t n, int64_t ci, int64_t h, int64_t w, const float* wgt,
                       const float* b, int64_t co, int64_t k, int pad, float* y, int64_t ho, int64_t wo,
                       cudaStream_t stream) {
  DenseConv f{x, ci, h, w, wgt, b, co, k, pad, y, ho, wo};
  cuda::launch_elementwise(n * co * ho * wo, stream, f);
}

}  // namespace ttq::kernels
