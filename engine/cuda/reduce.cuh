// Fixed-order warp and block reductions for the CUDA backend. Every reduction
// combines values in an order fixed by the launch shape; the backend chooses
// launch shapes from the problem size alone, so results are bit-identical
// from run to run and from one GPU model to another.
#pragma once

#include <cuda_runtime.h>

namespace ttq::cuda {

struct SumOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};

template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  return v;
}

// Butterfly variant: every lane ends with the result.
template <class T, class Op>
__device__ __forceinline__ T warp_allreduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Reduces one value per thread of a block of kThreads threads (a multiple of
// 32, at most 1024); the result is valid in thread 0. `scratch` holds
// kThreads / 32 values in shared memory; the leading barrier makes back-to-back
// calls with the same scratch safe.
template <int kThreads, class T, class Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity, T* scratch) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size");
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? scratch[lane] : identity;
    v = warp_reduce(v, op);
  }
  return v;
}

}  // namespace ttq::cuda
