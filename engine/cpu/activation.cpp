// CPU ReLU forward / backward (OpenMP, vectorised). CUDA twin:
// engine/cuda/activation.cu. Reference: the RELU cases of tests/test_backend_ops.cpp.
#include "engine/backend.h"

namespace ttq::cpu {

void relu_forward(const Tensor& x, Tensor& y) {
  const Tensor xc = x.contiguous();
  dispatch_float(x.dtype(), "relu_forward", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = xc.data<T>();
    T* yp = y.data<T>();
    const int64_t n = y.numel();
    // `v < 0 ? 0 : v` lets NaN through, as PyTorch's relu does.
#pragma omp parallel for simd if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) yp[i] = xp[i] < T(0) ? T(0) : xp[i];
  });
}

void relu_backward(const Tensor& gy, const Tensor& y, Tensor& gx) {
  const Tensor gc = gy.contiguous(), yc = y.contiguous();
  dispatch_float(gy.dtype(), "relu_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = gc.data<T>();
    const T* yp = yc.data<T>();
    T* o = gx.data<T>();
    const int64_t n = gx.numel();
    // Load g unconditionally: a conditional load keeps the compiler from
    // if-converting, and a branch on the sign of y mispredicts half the time.
#pragma omp parallel for simd if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) {
      const T g = gp[i];
      o[i] = yp[i] > T(0) ? g : T(0);
    }
  });
}

}  // namespace ttq::cpu
