// Launch geometry for the ternary kernels (kernels/*.cu) and the block reduction
// they use (the engine's fixed-order one, engine/cuda/reduce.cuh, at kBlock
// threads). Grids here depend only on the problem size, never on the device, so
// that a reduction over them gives the same bits on every GPU model.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/reduce.cuh"

namespace ttq::kernels::cuda_detail {

constexpr int kBlock = 256;  // threads per block for every kernel in kernels/
constexpr int kWarps = kBlock / 32;

using ttq::cuda::MaxOp;
using ttq::cuda::SumOp;

// Blocks for a grid-stride loop over `work` items with `per_thread` items per
// thread, at least 1 (so that n == 0 still launches and writes its outputs),
// at most `cap`.
inline unsigned grid_for(int64_t work, int per_thread, unsigned cap) {
  const int64_t per_block = static_cast<int64_t>(kBlock) * per_thread;
  int64_t b = (work + per_block - 1) / per_block;
  if (b < 1) b = 1;
  if (b > cap) b = cap;
  return static_cast<unsigned>(b);
}

// One value per thread of a kBlock-thread block; the result is valid in thread 0.
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity, T* scratch) {
  return ttq::cuda::block_reduce<kBlock>(v, op, identity, scratch);
}

}  // namespace ttq::kernels::cuda_detail
