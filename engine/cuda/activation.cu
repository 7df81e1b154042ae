// CUDA ReLU forward / backward. CPU twin: engine/cpu/activation.cpp; tested
// against it by the RELU cases of tests/test_backend_ops.cpp.
//
// Every kernel is a functor over the flat row-major index run by
// launch_elementwise(); views are read through StridedIndex when any operand
// is not contiguous, through the identity otherwise. Memory bound: an fp32 relu
// over n elements moves 8n bytes (about 3 TB/s on an H100 makes 1M elements ~3 us).
#include "engine/backend.h"
#include "engine/cuda/launch.cuh"

namespace ttq::cuda {

namespace {

// `x < 0 ? 0 : x` lets NaN through, as PyTorch's relu does (and as the CPU twin).
template <class T>
__device__ __forceinline__ T relu_elem(T x) {
  return x < T(0) ? T(0) : x;
}

template <class T, class IX>
struct ReluForward {
  const T* x;
  T* y;
  IX xi, yi;
  __device__ void operator()(int64_t i) const { y[yi(i)] = relu_elem(x[xi(i)]); }
};

template <class T, class IX>
struct ReluBackward {
  const T* gy;
  const T* y;
  T* gx;
  IX gyi, yi, gxi;
  __device__ void operator()(int64_t i) const { gx[gxi(i)] = y[yi(i)] > T(0) ? gy[gyi(i)] : T(0); }
};

}  // namespace

// ---- raw-pointer launcher --------------------------------------------------------

template <class T>
void relu_forward_cuda(const T* x, T* y, int64_t n, cudaStream_t s) {
  launch_elementwise(n, s, ReluForward<T, ContiguousIndex>{x, y, {}, {}});
}
template void relu_forward_cuda<float>(const float*, float*, int64_t, cudaStream_t);

// ---- backend entries -------------------------------------------------------------

void relu_forward(const Tensor& x, Tensor& y) {
  DeviceGuard g(x);
  dispatch_float(x.dtype(), "cuda::relu_forward", [&](auto tag) {
    using T = decltype(tag);
    if (all_contiguous({&x, &y})) {
      relu_forward_cuda(x.data<T>(), y.data<T>(), y.numel(), stream());
    } else {
      launch_elementwise(y.numel(), stream(),
                         ReluForward<T, StridedIndex>{x.data<T>(), y.data<T>(), index_of(x), index_of(y)});
    }
  });
}

void relu_backward(const Tensor& gy, const Tensor& y, Tensor& gx) {
  DeviceGuard g(gy);
  dispatch_float(gy.dtype(), "cuda::relu_backward", [&](auto tag) {
    using T = decltype(tag);
    if (all_contiguous({&gy, &y, &gx})) {
      launch_elementwise(
          gx.numel(), stream(),
          ReluBackward<T, ContiguousIndex>{gy.data<T>(), y.data<T>(), gx.data<T>(), {}, {}, {}});
    } else {
      launch_elementwise(gx.numel(), stream(),
                         ReluBackward<T, StridedIndex>{gy.data<T>(), y.data<T>(), gx.data<T>(), index_of(gy),
                                                       index_of(y), index_of(gx)});
    }
  });
}

}  // namespace ttq::cuda
