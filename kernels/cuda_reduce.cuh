// Launch geometry and fixed-order warp / block reductions for the ternary
// kernels (kernels/*.cu). Every reduction here combines values in an order that
// depends only on the launch shape, and the launch shapes depend only on n, so
// results are bit-identical from run to run and from one GPU model to another.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ttq::kernels::cuda_detail {

constexpr int kBlock = 256;  // threads per block for every kernel in kernels/
constexpr int kWarps = kBlock / 32;

// Blocks for a grid-stride loop over `work` items with `per_thread` items per
// thread, at least 1 (so that n == 0 still launches and writes its outputs),
// at most `cap`.
inline unsigned grid_for(int64_t work, int per_thread, unsigned cap) {
  int64_t per_block = static_cast<int64_t>(kBlock) * per_thread;
  int64_t b = (work + per_block - 1) / per_block;
  if (b < 1) b = 1;
  if (b > cap) b = cap;
  return static_cast<unsigned>(b);
}

struct MaxOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};
struct SumOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  return v;
}

// Reduces one value per thread of a kBlock-thread block; the result is valid in
// thread 0. `scratch` holds kWarps values in shared memory; the leading barrier
// makes back-to-back calls with the same scratch safe.
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity, T* scratch) {
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

}  // namespace ttq::kernels::cuda_detail
