// CUDA twin of kernels/scale_grad.cpp. Pass 1 writes dL/dW and one float partial
// sum of G over P and over N per block; pass 2 (one block) adds the partials in
// double in a fixed order. The grid depends only on n, so the sums are the same
// bits on every run and every GPU. Tests: tests/test_scale_grad.cpp.
//
// Napkin math: 12 B per element (read G and W, write dL/dW) and nothing else
// touches memory; pass 2 reads at most 2 x kMaxBlocks floats.
#include <cuda_runtime.h>

#include "engine/cuda/check.h"
#include "kernels/cuda_launch.cuh"
#include "kernels/scale_grad.h"

namespace ttq::kernels {

namespace {
using namespace cuda_detail;

constexpr int kItems = 4;
constexpr unsigned kMaxBlocks = 1024;

template <bool kVector>
__global__ void scale_grad_kernel(const float* __restrict__ g, const float* __restrict__ w, int64_t n,
                                  const float* __restrict__ delta_ptr, const float* __restrict__ wp_ptr,
                                  const float* __restrict__ wn_ptr, float* __restrict__ gw,
                                  float* __restrict__ partial) {
  __shared__ float scratch[kWarps];
  const float delta = *delta_ptr, wp = *wp_ptr, wn = *wn_ptr;
  float sp = 0.0f, sn = 0.0f;
  const int64_t groups = (n + kItems - 1) / kItems;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < groups; k += stride) {
    const int64_t base = k * kItems;
    float gv[kItems], wv[kItems];
    const bool full = base + kItems <= n;
    if (kVector && full) {
      const float4 a = reinterpret_cast<const float4*>(g)[k];
      const float4 b = reinterpret_cast<const float4*>(w)[k];
      gv[0] = a.x, gv[1] = a.y, gv[2] = a.z, gv[3] = a.w;
      wv[0] = b.x, wv[1] = b.y, wv[2] = b.z, wv[3] = b.w;
    } else {
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        const bool in = base + j < n;
        gv[j] = in ? g[base + j] : 0.0f;  // padding adds 0 to the sums
        wv[j] = in ? w[base + j] : 0.0f;
      }
    }
    float out[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const bool p = wv[j] > delta, q = wv[j] < -delta;
      out[j] = p ? wp * gv[j] : (q ? wn * gv[j] : gv[j]);
      sp += p ? gv[j] : 0.0f;
      sn += q ? gv[j] : 0.0f;
    }
    if (kVector && full) {
      reinterpret_cast<float4*>(gw)[k] = make_float4(out[0], out[1], out[2], out[3]);
    } else {
#pragma unroll
      for (int j = 0; j < kItems; ++j)
        if (base + j < n) gw[base + j] = out[j];
    }
  }
  sp = block_reduce(sp, SumOp{}, 0.0f, scratch);
  sn = block_reduce(sn, SumOp{}, 0.0f, scratch);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = sp;
    partial[2 * blockIdx.x + 1] = sn;
  }
}

__global__ void scale_grad_finalize_kernel(const float* __restrict__ partial, unsigned num_blocks, bool exact,
                                           float* __restrict__ gwp, float* __restrict__ gwn) {
  __shared__ double scratch[kWarps];
  double sp = 0.0, sn = 0.0;
  for (unsigned b = threadIdx.x; b < num_blocks; b += blockDim.x) {
    sp += static_cast<double>(partial[2 * b]);
    sn += static_cast<double>(partial[2 * b + 1]);
  }
  sp = block_reduce(sp, SumOp{}, 0.0, scratch);
  sn = block_reduce(sn, SumOp{}, 0.0, scratch);
  if (threadIdx.x == 0) {
    *gwp = static_cast<float>(sp);
    *gwn = static_cast<float>(exact ? -sn : sn);
  }
}

unsigned blocks_for(int64_t n) { return grid_for((n + kItems - 1) / kItems, 1, kMaxBlocks); }

}  // namespace

size_t scale_grad_cuda_workspace(int64_t n) { return 2 * sizeof(float) * blocks_for(n); }

void scale_grad_cuda(const float* g, const float* w, int64_t n, const float* delta, const float* wp,
                     const float* wn, WnGradMode mode, float* gw, float* gwp, float* gwn, void* workspace,
                     cudaStream_t stream) {
  TTQ_CHECK(n >= 0 && gw != nullptr && gwp != nullptr && gwn != nullptr && workspace != nullptr)
      << "scale_grad_cuda: bad arguments";
  float* partial = static_cast<float*>(workspace);
  const unsigned blocks = blocks_for(n);
  const bool vector =
      ((reinterpret_cast<uintptr_t>(g) | reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(gw)) &
       15) == 0;
  if (vector) {
    scale_grad_kernel<true><<<blocks, kBlock, 0, stream>>>(g, w, n, delta, wp, wn, gw, partial);
  } else {
    scale_grad_kernel<false><<<blocks, kBlock, 0, stream>>>(g, w, n, delta, wp, wn, gw, partial);
  }
  TTQ_CUDA_CHECK_LAUNCH();
  scale_grad_finalize_kernel<<<1, kBlock, 0, stream>>>(partial, blocks, mode == WnGradMode::Exact, gwp, gwn);
  TTQ_CUDA_CHECK_LAUNCH();
}

}  // namespace ttq::kernels
