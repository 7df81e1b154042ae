// CPU BatchNorm2d (PyTorch semantics): training forward with running-stat
// update, eval forward, and the training backward. OpenMP over channels;
// statistics accumulate in double. Reference: the BATCH_NORM cases and the
// running-stats test of tests/test_backend_ops.cpp.
#include <algorithm>
#include <cmath>

#include "engine/backend.h"
#include "engine/cpu/parallel.h"

namespace ttq::cpu {

namespace {

// x is [N,C,H,W] with each sample dense and any batch stride (a channel slice
// of a wider buffer normalises without a copy); y / gy / gx are contiguous.
struct BnGeom {
  int64_t n, c, hw, x_batch_stride;
};

BnGeom geometry(const Tensor& x) {
  TTQ_CHECK(x.dim() == 4 && x.stride(3) == 1 && x.stride(2) == x.size(3) &&
            x.stride(1) == x.size(2) * x.size(3))
      << "batch norm: dense NCHW samples expected, got strides of " << x.str();
  const int64_t hw = x.size(2) * x.size(3);
  return {x.size(0), x.size(1), hw, x.size(0) > 1 ? x.stride(0) : x.size(1) * hw};
}

// Optional per-channel parameter (undefined weight = 1, bias = 0).
template <class T>
T param(const Tensor& t, int64_t c, T dflt) {
  return t.defined() ? t.data<T>()[c] : dflt;
}

template <class T>
void forward_train_typed(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                         Tensor& running_var, double momentum, double eps, Tensor& y, Tensor& save_mean,
                         Tensor& save_invstd) {
  const BnGeom g = geometry(x);
  const T* xp = x.data<T>();
  T* yp = y.data<T>();
  const int64_t count = g.n * g.hw;
#pragma omp parallel for schedule(dynamic, 1) if (count * g.c >= kParallelElements)
  for (int64_t c = 0; c < g.c; ++c) {
    // One pass, shifted by the first element so that a large mean does not cancel the variance.
    const double shift = count > 0 ? static_cast<double>(xp[c * g.hw]) : 0.0;
    double s1 = 0, s2 = 0;
    for (int64_t n = 0; n < g.n; ++n) {
      const T* r = xp + n * g.x_batch_stride + c * g.hw;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t i = 0; i < g.hw; ++i) {
        const double d = static_cast<double>(r[i]) - shift;
        s1 += d;
        s2 += d * d;
      }
    }
    const double mean_d = s1 / static_cast<double>(count);
    const double var = std::max(0.0, s2 / static_cast<double>(count) - mean_d * mean_d);
    const double mean = shift + mean_d;
    const double invstd = 1.0 / std::sqrt(var + eps);
    save_mean.data<T>()[c] = static_cast<T>(mean);
    save_invstd.data<T>()[c] = static_cast<T>(invstd);
    if (running_mean.defined()) {
      T& rm = running_mean.data<T>()[c];
      rm = static_cast<T>((1 - momentum) * static_cast<double>(rm) + momentum * mean);
    }
    if (running_var.defined()) {
      const double unbiased =
          count > 1 ? var * static_cast<double>(count) / static_cast<double>(count - 1) : var;
      T& rv = running_var.data<T>()[c];
      rv = static_cast<T>((1 - momentum) * static_cast<double>(rv) + momentum * unbiased);
    }
    // y = (x - mean) * a + bias with a = w * invstd (centred first: no cancellation for large means).
    const T af = static_cast<T>(static_cast<double>(param<T>(weight, c, T(1))) * invstd);
    const T bf = param<T>(bias, c, T(0)), mf = static_cast<T>(mean);
    for (int64_t n = 0; n < g.n; ++n) {
      const T* r = xp + n * g.x_batch_stride + c * g.hw;
      T* o = yp + (n * g.c + c) * g.hw;
#pragma omp simd
      for (int64_t i = 0; i < g.hw; ++i) o[i] = (r[i] - mf) * af + bf;
    }
  }
}

template <class T>
void forward_eval_typed(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                        const Tensor& running_var, double eps, Tensor& y) {
  const BnGeom g = geometry(x);
  const T* xp = x.data<T>();
  T* yp = y.data<T>();
  const T* rm = running_mean.data<T>();
  const T* rv = running_var.data<T>();
#pragma omp parallel for collapse(2) schedule(static) if (g.n * g.c * g.hw >= kParallelElements)
  for (int64_t n = 0; n < g.n; ++n) {
    for (int64_t c = 0; c < g.c; ++c) {
      const T af = static_cast<T>(static_cast<double>(param<T>(weight, c, T(1))) /
                                  std::sqrt(static_cast<double>(rv[c]) + eps));
      const T bf = param<T>(bias, c, T(0)), mf = rm[c];
      const T* r = xp + n * g.x_batch_stride + c * g.hw;
      T* o = yp + (n * g.c + c) * g.hw;
#pragma omp simd
      for (int64_t i = 0; i < g.hw; ++i) o[i] = (r[i] - mf) * af + bf;
    }
  }
}

template <class T>
void backward_typed(const Tensor& gy, const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                    const Tensor& save_invstd, Tensor& gx, Tensor& gweight, Tensor& gbias) {
  const BnGeom g = geometry(x);
  const T* xp = x.data<T>();
  const T* gyp = gy.data<T>();
  const int64_t count = g.n * g.hw;
#pragma omp parallel for schedule(dynamic, 1) if (count * g.c >= kParallelElements)
  for (int64_t c = 0; c < g.c; ++c) {
    const double mean = static_cast<double>(save_mean.data<T>()[c]);
    const double invstd = static_cast<double>(save_invstd.data<T>()[c]);
    // sum_gy = sum(gy), sum_gyx = sum(gy * (x - mean)).
    double sum_gy = 0, sum_gyx = 0;
    for (int64_t n = 0; n < g.n; ++n) {
      const T* r = xp + n * g.x_batch_stride + c * g.hw;
      const T* d = gyp + (n * g.c + c) * g.hw;
#pragma omp simd reduction(+ : sum_gy, sum_gyx)
      for (int64_t i = 0; i < g.hw; ++i) {
        const double gv = static_cast<double>(d[i]);
        sum_gy += gv;
        sum_gyx += gv * (static_cast<double>(r[i]) - mean);
      }
    }
    if (gweight.defined()) gweight.data<T>()[c] = static_cast<T>(sum_gyx * invstd);
    if (gbias.defined()) gbias.data<T>()[c] = static_cast<T>(sum_gy);
    if (!gx.defined()) continue;
    // gx = w*invstd * (gy - mean(gy) - xhat * mean(gy*xhat)), xhat = (x-mean)*invstd,
    // written as gx = gy * k + (x - mean) * u + v per channel.
    const double w = static_cast<double>(param<T>(weight, c, T(1)));
    const double inv_count = 1.0 / static_cast<double>(count);
    const double k = w * invstd;
    const double u = -k * sum_gyx * invstd * invstd * inv_count;
    const double v = -k * sum_gy * inv_count;
    const T kf = static_cast<T>(k), uf = static_cast<T>(u), vf = static_cast<T>(v), mf = static_cast<T>(mean);
    T* gxp = gx.data<T>();
    for (int64_t n = 0; n < g.n; ++n) {
      const T* r = xp + n * g.x_batch_stride + c * g.hw;
      const T* d = gyp + (n * g.c + c) * g.hw;
      T* o = gxp + (n * g.c + c) * g.hw;
#pragma omp simd
      for (int64_t i = 0; i < g.hw; ++i) o[i] = d[i] * kf + (r[i] - mf) * uf + vf;
    }
  }
}

}  // namespace

void batch_norm_forward_train(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                              Tensor& running_var, double momentum, double eps, Tensor& y, Tensor& save_mean,
                              Tensor& save_invstd) {
  dispatch_float(x.dtype(), "batch_norm_forward_train", [&](auto tag) {
    forward_train_typed<decltype(tag)>(x, weight, bias, running_mean, running_var, momentum, eps, y,
                                       save_mean, save_invstd);
  });
}

void batch_norm_forward_eval(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             const Tensor& running_mean, const Tensor& running_var, double eps, Tensor& y) {
  dispatch_float(x.dtype(), "batch_norm_forward_eval", [&](auto tag) {
    forward_eval_typed<decltype(tag)>(x, weight, bias, running_mean, running_var, eps, y);
  });
}

void batch_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                         const Tensor& save_invstd, Tensor& gx, Tensor& gweight, Tensor& gbias) {
  TTQ_CHECK(gy.is_contiguous() && (!gx.defined() || gx.is_contiguous()))
      << "batch_norm_backward: contiguous gy/gx expected";
  dispatch_float(x.dtype(), "batch_norm_backward", [&](auto tag) {
    backward_typed<decltype(tag)>(gy, x, weight, save_mean, save_invstd, gx, gweight, gbias);
  });
}

}  // namespace ttq::cpu
