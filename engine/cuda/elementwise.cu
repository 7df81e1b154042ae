// CUDA elementwise ops and full reductions: binary, axpby, sum_all. CPU twin:
// engine/cpu/elementwise.cpp; tested against it by tests/test_backend_ops.cpp.
// The other elementwise ops pair with CPU files of their own name: relu
// (activation.cu), copy and fill (copy.cu), dropout (dropout.cu).
//
// Every kernel is a functor over the flat row-major index run by
// launch_elementwise(); views are read through StridedIndex when any operand
// is not contiguous, through the identity otherwise. These kernels are memory
// bound: one read or write per element per operand (activation.cu works out
// relu's time).
#include "engine/backend.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/reduce.cuh"

namespace ttq::cuda {

namespace {

// ---- element functions --------------------------------------------------------

template <class T>
__device__ __forceinline__ T binary_elem(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
  }
  return a;
}

// ---- functors (kernel bodies) ---------------------------------------------------

template <class T, class IX>
struct Binary {
  BinaryOp op;
  const T* a;
  const T* b;
  T* out;
  IX ai, bi, oi;
  __device__ void operator()(int64_t i) const { out[oi(i)] = binary_elem(op, a[ai(i)], b[bi(i)]); }
};

template <class T, class IX>
struct Axpby {
  T alpha, beta;
  const T* a;
  const T* b;  // null: out = alpha * a
  T* out;
  IX ai, bi, oi;
  __device__ void operator()(int64_t i) const {
    out[oi(i)] = b != nullptr ? alpha * a[ai(i)] + beta * b[bi(i)] : alpha * a[ai(i)];
  }
};

// ---- helpers -------------------------------------------------------------------

template <class T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

// ---- raw-pointer launchers -------------------------------------------------------

template <class T>
void axpby_cuda(T alpha, const T* a, T beta, const T* b, T* out, int64_t n, cudaStream_t s) {
  launch_elementwise(n, s, Axpby<T, ContiguousIndex>{alpha, beta, a, b, out, {}, {}, {}});
}
template void axpby_cuda<float>(float, const float*, float, const float*, float*, int64_t, cudaStream_t);

// ---- backend entries -------------------------------------------------------------

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  DeviceGuard g(out);
  dispatch_float(out.dtype(), "cuda::binary", [&](auto tag) {
    using T = decltype(tag);
    if (all_contiguous({&a, &b, &out})) {
      launch_elementwise(out.numel(), stream(),
                         Binary<T, ContiguousIndex>{op, a.data<T>(), b.data<T>(), out.data<T>(), {}, {}, {}});
    } else {
      launch_elementwise(out.numel(), stream(),
                         Binary<T, StridedIndex>{op, a.data<T>(), b.data<T>(), out.data<T>(), index_of(a),
                                                 index_of(b), index_of(out)});
    }
  });
}

void axpby(double alpha, const Tensor& a, double beta, const Tensor& b, Tensor& out) {
  DeviceGuard g(out);
  dispatch_float(out.dtype(), "cuda::axpby", [&](auto tag) {
    using T = decltype(tag);
    const T al = static_cast<T>(alpha), be = static_cast<T>(beta);
    if (all_contiguous({&a, &b, &out})) {
      axpby_cuda<T>(al, a.data<T>(), be, ptr<T>(b), out.data<T>(), out.numel(), stream());
    } else {
      launch_elementwise(out.numel(), stream(),
                         Axpby<T, StridedIndex>{al, be, a.data<T>(), ptr<T>(b), out.data<T>(), index_of(a),
                                                index_of(b), index_of(out)});
    }
  });
}

// ---- sum_all: two fixed-shape passes, accumulated in double ----------------------

namespace {

constexpr int kSumThreads = 256;
constexpr int kSumMaxBlocks = 512;

// The number of partial sums depends on n alone, so the summation order (and
// the bits of the result) do not depend on the GPU.
int sum_blocks(int64_t n) {
  const int64_t per_block = static_cast<int64_t>(kSumThreads) * 8;
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(kSumMaxBlocks, (n + per_block - 1) / per_block)));
}

template <class T, class IX>
__global__ void sum_partials_kernel(const T* x, IX xi, int64_t n, double* partials) {
  __shared__ double scratch[kSumThreads / 32];
  double acc = 0;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kSumThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kSumThreads + threadIdx.x; i < n; i += step)
    acc += static_cast<double>(x[xi(i)]);
  acc = block_reduce<kSumThreads>(acc, SumOp{}, 0.0, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

template <class T>
__global__ void sum_final_kernel(const double* partials, int count, T* out) {
  __shared__ double scratch[kSumThreads / 32];
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += kSumThreads) acc += partials[i];
  acc = block_reduce<kSumThreads>(acc, SumOp{}, 0.0, scratch);
  if (threadIdx.x == 0) out[0] = static_cast<T>(acc);
}

}  // namespace

template <class T, class IX>
void sum_all_cuda(const T* x, IX xi, int64_t n, double* partials, T* out, cudaStream_t s) {
  const int blocks = sum_blocks(n);
  sum_partials_kernel<T><<<blocks, kSumThreads, 0, s>>>(x, xi, n, partials);
  TTQ_CUDA_CHECK_LAUNCH();
  sum_final_kernel<T><<<1, kSumThreads, 0, s>>>(partials, blocks, out);
  TTQ_CUDA_CHECK_LAUNCH();
}

void sum_all(const Tensor& x, Tensor& out) {
  DeviceGuard g(x);
  TTQ_CHECK(out.numel() == 1) << "cuda::sum_all: output has " << out.numel() << " elements";
  dispatch_float(x.dtype(), "cuda::sum_all", [&](auto tag) {
    using T = decltype(tag);
    auto* partials = static_cast<double*>(workspace(sizeof(double) * kSumMaxBlocks));
    T* o = out.data<T>();
    if (x.is_contiguous()) {
      sum_all_cuda(x.data<T>(), ContiguousIndex{}, x.numel(), partials, o, stream());
    } else {
      sum_all_cuda(x.data<T>(), make_strided_index(x), x.numel(), partials, o, stream());
    }
  });
}

}  // namespace ttq::cuda
