// CUDA twin of kernels/ternarize.cpp: a max-abs reduction, then one fused pass
// that finishes the reduction on the device, derives delta and writes Wq, the
// codes and the counts. Nothing comes back to the host in between. Tested against
// the CPU twin in tests/test_ternarize.cpp; timed in bench/bench_ttq_kernels.cpp.
//
// Napkin math: the fused pass reads 4 B and writes 4 B of Wq per element (plus
// 1 B or 0.25 B of codes); the max pass reads 4 B. At ~3 TB/s the largest layer
// of the three models (512x1024, 2 MiB) takes ~2 us per pass, so small layers are
// launch-bound and the design keeps it to two launches.
#include <cuda_runtime.h>

#include "engine/cuda/check.h"
#include "kernels/cuda_launch.cuh"
#include "kernels/packed_format.h"
#include "kernels/ternarize.h"

namespace ttq::kernels {

namespace {
using namespace cuda_detail;

constexpr int kItems = 4;               // elements per thread per step (one packed byte)
constexpr unsigned kMaxPartials = 256;  // max-abs partials, re-read by every block of pass 2
constexpr unsigned kMaxBlocks = 2048;

// Pass 1: partial[b] = max |w| over the elements that block b visits.
__global__ void max_abs_partial_kernel(const float* __restrict__ w, int64_t n, float* __restrict__ partial,
                                       int64_t* __restrict__ counts) {
  __shared__ float scratch[kWarps];
  float m = 0.0f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    m = fmaxf(m, fabsf(w[i]));
  m = block_reduce(m, MaxOp{}, 0.0f, scratch);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = m;
    // Pass 2 accumulates counts with integer atomics; this pass runs before it
    // on the same stream, so it can clear them without another launch.
    if (blockIdx.x == 0 && counts != nullptr) counts[0] = counts[1] = counts[2] = 0;
  }
}

// Pass 2: every block reduces the partials (at most kMaxPartials floats, from
// L2) to max|W|, so no block waits for another; block 0 publishes delta.
template <bool kVector>
__global__ void ternarize_kernel(const float* __restrict__ w, int64_t n, float t,
                                 const float* __restrict__ wp_ptr, const float* __restrict__ wn_ptr,
                                 float* __restrict__ wq, uint8_t* __restrict__ codes,
                                 uint8_t* __restrict__ packed, float* __restrict__ delta_out,
                                 int64_t* __restrict__ counts, const float* __restrict__ partial,
                                 unsigned num_partials) {
  __shared__ float scratch[kWarps];
  __shared__ unsigned long long count_scratch[kWarps];
  __shared__ float s_delta;
  float m = 0.0f;
  for (unsigned i = threadIdx.x; i < num_partials; i += blockDim.x) m = fmaxf(m, partial[i]);
  m = block_reduce(m, MaxOp{}, 0.0f, scratch);
  if (threadIdx.x == 0) {
    // The same single rounding as the CPU's `t * max|W|`.
    s_delta = __fmul_rn(t, m);
    if (blockIdx.x == 0) *delta_out = s_delta;
  }
  __syncthreads();
  const float delta = s_delta;
  const float wp = *wp_ptr, wn = *wn_ptr;

  unsigned long long np = 0, nn = 0, nz = 0;
  const int64_t groups = (n + kItems - 1) / kItems;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const int64_t base = g * kItems;
    float x[kItems];
    if (kVector && base + kItems <= n) {
      const float4 v = reinterpret_cast<const float4*>(w)[g];
      x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
    } else {
#pragma unroll
      for (int k = 0; k < kItems; ++k) x[k] = base + k < n ? w[base + k] : 0.0f;
    }
    uint8_t c[kItems];
    float q[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      c[k] = packed::code_of(x[k], delta);  // padding elements are 0 -> code 0
      q[k] = c[k] == packed::kPos ? wp : (c[k] == packed::kNeg ? -wn : 0.0f);
      np += c[k] == packed::kPos;
      nn += c[k] == packed::kNeg;
      nz += c[k] == packed::kZero && base + k < n;
    }
    const bool full = base + kItems <= n;
    if (wq != nullptr) {
      if (kVector && full) {
        reinterpret_cast<float4*>(wq)[g] = make_float4(q[0], q[1], q[2], q[3]);
      } else {
#pragma unroll
        for (int k = 0; k < kItems; ++k)
          if (base + k < n) wq[base + k] = q[k];
      }
    }
    if (codes != nullptr) {
#pragma unroll
      for (int k = 0; k < kItems; ++k)
        if (base + k < n) codes[base + k] = c[k];
    }
    if (packed != nullptr) packed[g] = packed::pack4(c[0], c[1], c[2], c[3]);
  }
  if (counts != nullptr) {
    np = block_reduce(np, SumOp{}, 0ull, count_scratch);
    nn = block_reduce(nn, SumOp{}, 0ull, count_scratch);
    nz = block_reduce(nz, SumOp{}, 0ull, count_scratch);
    if (threadIdx.x == 0) {
      // Integer atomics: the totals do not depend on the order blocks finish.
      atomicAdd(reinterpret_cast<unsigned long long*>(counts), np);
      atomicAdd(reinterpret_cast<unsigned long long*>(counts + 1), nn);
      atomicAdd(reinterpret_cast<unsigned long long*>(counts + 2), nz);
    }
  }
}

__global__ void clamp_min_kernel(float* __restrict__ x, int64_t n, float lo) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = fmaxf(x[i], lo);
}

unsigned num_partials_for(int64_t n) { return grid_for(n, 4, kMaxPartials); }

}  // namespace

size_t ternarize_cuda_workspace(int64_t n) { return sizeof(float) * num_partials_for(n); }

void ternarize_cuda(const float* w, int64_t n, float t, const float* wp, const float* wn, float* wq,
                    uint8_t* codes, uint8_t* packed, float* delta, int64_t* counts, void* workspace,
                    cudaStream_t stream) {
  TTQ_CHECK(n >= 0 && delta != nullptr && workspace != nullptr) << "ternarize_cuda: bad arguments";
  float* partial = static_cast<float*>(workspace);
  const unsigned parts = num_partials_for(n);
  max_abs_partial_kernel<<<parts, kBlock, 0, stream>>>(w, n, partial, counts);
  TTQ_CUDA_CHECK_LAUNCH();
  const int64_t groups = (n + kItems - 1) / kItems;
  const unsigned blocks = grid_for(groups, 1, kMaxBlocks);
  const bool vector =
      (reinterpret_cast<uintptr_t>(w) & 15) == 0 && (reinterpret_cast<uintptr_t>(wq) & 15) == 0;
  if (vector) {
    ternarize_kernel<true>
        <<<blocks, kBlock, 0, stream>>>(w, n, t, wp, wn, wq, codes, packed, delta, counts, partial, parts);
  } else {
    ternarize_kernel<false>
        <<<blocks, kBlock, 0, stream>>>(w, n, t, wp, wn, wq, codes, packed, delta, counts, partial, parts);
  }
  TTQ_CUDA_CHECK_LAUNCH();
}

void clamp_min_cuda(float* x, int64_t n, float lo, cudaStream_t stream) {
  if (n == 0) return;
  clamp_min_kernel<<<grid_for(n, 1, 1024), kBlock, 0, stream>>>(x, n, lo);
  TTQ_CUDA_CHECK_LAUNCH();
}

}  // namespace ttq::kernels
