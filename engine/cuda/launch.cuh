// The one launch helper for elementwise CUDA kernels, the strided-index
// functor they share and the view helpers that choose between it and the
// identity. A kernel body is a functor `f(i)` over a flat index i in [0, n);
// launch_elementwise() runs it in a grid-stride loop, returns on n == 0 and
// checks the launch. Used by every engine/cuda/*.cu file.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "engine/cuda/check.h"
#include "engine/cuda/context.h"
#include "engine/tensor.h"

namespace ttq::cuda {

constexpr int kBlock = 256;

// Blocks for a grid-stride loop over n items: enough to fill every
// multiprocessor several times over, never more than the items need.
inline unsigned grid_for(int64_t n, int block = kBlock) {
  const int64_t need = (n + block - 1) / block;
  const int64_t cap = static_cast<int64_t>(sm_count()) * 16;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(need, cap)));
}

template <class F>
__global__ void elementwise_kernel(int64_t n, F f) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) f(i);
}

// requires F is a trivially copyable functor with `__device__ void operator()(int64_t) const`.
template <class F>
void launch_elementwise(int64_t n, cudaStream_t s, const F& f) {
  if (n <= 0) return;
  elementwise_kernel<<<grid_for(n), kBlock, 0, s>>>(n, f);
  TTQ_CUDA_CHECK_LAUNCH();
}

// Maps the row-major flat index of a view to its element offset. Size-1
// dimensions are dropped and dimensions that are contiguous with each other
// are merged, so most views reduce to one or two dimensions.
constexpr int kMaxDims = 8;
struct StridedIndex {
  int nd = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};

  __host__ __device__ __forceinline__ int64_t operator()(int64_t i) const {
    int64_t off = 0;
    for (int d = nd - 1; d > 0; --d) {
      off += (i % sizes[d]) * strides[d];
      i /= sizes[d];
    }
    return nd > 0 ? off + i * strides[0] : 0;
  }
  bool contiguous() const { return nd == 0 || (nd == 1 && strides[0] == 1); }
};

inline StridedIndex make_strided_index(const Shape& shape, const std::vector<int64_t>& strides) {
  StridedIndex ix;
  int64_t sz[64], st[64];
  int n = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (n > 0 && st[n - 1] == strides[d] * shape[d]) {  // merges with the outer one
      sz[n - 1] *= shape[d];
      st[n - 1] = strides[d];
      continue;
    }
    TTQ_CHECK(n < 64) << "too many dimensions";
    sz[n] = shape[d];
    st[n] = strides[d];
    ++n;
  }
  TTQ_CHECK(n <= kMaxDims) << "CUDA strided access supports up to " << kMaxDims
                           << " non-mergeable dimensions, got " << n << " for shape " << shape_str(shape);
  ix.nd = n;
  for (int d = 0; d < n; ++d) {
    ix.sizes[d] = sz[d];
    ix.strides[d] = st[d];
  }
  return ix;
}
inline StridedIndex make_strided_index(const Tensor& t) { return make_strided_index(t.shape(), t.strides()); }

// The flat index itself (contiguous views).
struct ContiguousIndex {
  __host__ __device__ __forceinline__ int64_t operator()(int64_t i) const { return i; }
};

// True when every defined tensor of `ts` is contiguous (a kernel can then index
// all of them with ContiguousIndex).
inline bool all_contiguous(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && !t->is_contiguous()) return false;
  return true;
}

// The StridedIndex of a view; an empty one for an undefined tensor.
inline StridedIndex index_of(const Tensor& t) { return t.defined() ? make_strided_index(t) : StridedIndex{}; }

}  // namespace ttq::cuda
