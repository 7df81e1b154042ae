// CPU sgd_step / adam_step (engine/backend.h): in-place optimiser updates with
// PyTorch's exact arithmetic order, in the parameter's dtype, so that float32
// trajectories match torch.optim to rounding. Front end and the formulas:
// engine/optim/optimizer.h. CUDA twin: engine/cuda/optim.cu. Tests:
// tests/test_optim.cpp.
#include <cmath>

#include "engine/backend.h"

namespace ttq::cpu {

void sgd_step(Tensor& param, const Tensor& grad, Tensor& momentum_buf, double lr, double momentum,
              double weight_decay, bool nesterov, bool first_step) {
  dispatch_float(param.dtype(), "sgd_step", [&](auto tag) {
    using T = decltype(tag);
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* buf = momentum != 0 ? momentum_buf.data<T>() : nullptr;
    const int64_t n = param.numel();
    const T wd = static_cast<T>(weight_decay), mom = static_cast<T>(momentum);
    const T neg_lr = static_cast<T>(-lr);
    const bool decay = weight_decay != 0;
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
      T d = g[i];
      if (decay) d = d + wd * p[i];  // grad.add(param, alpha=wd)
      if (buf != nullptr) {
        T b = first_step ? d : buf[i] * mom + d;  // buf.mul_(momentum).add_(d)
        buf[i] = b;
        d = nesterov ? d + mom * b : b;
      }
      p[i] = p[i] + neg_lr * d;  // param.add_(d, alpha=-lr)
    }
  });
}

void adam_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, double lr,
               double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  // Scalars derived in double as torch.optim does in Python, then cast once.
  const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(step));
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  dispatch_float(param.dtype(), "adam_step", [&](auto tag) {
    using T = decltype(tag);
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* m = exp_avg.data<T>();
    T* v = exp_avg_sq.data<T>();
    const int64_t n = param.numel();
    const T wd = static_cast<T>(weight_decay);
    const T b1 = static_cast<T>(beta1), w1 = static_cast<T>(1 - beta1);
    const T b2 = static_cast<T>(beta2), w2 = static_cast<T>(1 - beta2);
    const T bc2s = static_cast<T>(bias_correction2_sqrt), e = static_cast<T>(eps);
    const T neg_step = static_cast<T>(-step_size);
    const bool decay = weight_decay != 0;
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
      T d = g[i];
      if (decay) d = d + wd * p[i];
      // exp_avg.mul_(beta1).add_(d, alpha=1 - beta1)
      const T mi = m[i] * b1 + w1 * d;
      m[i] = mi;
      // exp_avg_sq.mul_(beta2).addcmul_(d, d, value=1 - beta2)
      const T vi = v[i] * b2 + w2 * d * d;
      v[i] = vi;
      const T denom = std::sqrt(vi) / bc2s + e;
      p[i] = p[i] + neg_step * mi / denom;  // addcdiv_(m, denom, value=-step_size)
    }
  });
}

}  // namespace ttq::cpu
