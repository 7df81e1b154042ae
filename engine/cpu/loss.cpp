// CPU row-wise log-softmax over [N,C], the mean negative log-likelihood and
// the fused cross-entropy gradient. Row sums in double. CUDA twin:
// engine/cuda/loss.cu. Reference: the LOG_SOFTMAX / CROSS_ENTROPY cases of
// tests/test_backend_ops.cpp.
#include <cmath>

#include "engine/backend.h"

namespace ttq::cpu {

void log_softmax_forward(const Tensor& x, Tensor& y) {
  TTQ_CHECK(x.dim() == 2 && y.is_contiguous()) << "log_softmax_forward: [N,C] expected, got " << x.str();
  const Tensor xc = x.contiguous();
  dispatch_float(x.dtype(), "log_softmax_forward", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = x.size(0), c = x.size(1);
    const T* xp = xc.data<T>();
    T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (n * c > (1 << 14))
    for (int64_t r = 0; r < n; ++r) {
      const T* xr = xp + r * c;
      T m = -INFINITY;
      for (int64_t j = 0; j < c; ++j) m = xr[j] > m ? xr[j] : m;
      double s = 0;
      for (int64_t j = 0; j < c; ++j) s += std::exp(static_cast<double>(xr[j]) - static_cast<double>(m));
      const double lse = static_cast<double>(m) + std::log(s);
      for (int64_t j = 0; j < c; ++j) yp[r * c + j] = static_cast<T>(static_cast<double>(xr[j]) - lse);
    }
  });
}

namespace {
// Labels as int64 with their range checked (an out-of-range label would read out of bounds).
const int64_t* checked_labels(const Tensor& labels, const Tensor& labels_c, int64_t n, int64_t c) {
  TTQ_CHECK(labels.dtype() == DType::I64 && labels.numel() == n)
      << "labels: " << n << " I64 values expected, got " << labels.str();
  const int64_t* l = labels_c.data<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TTQ_CHECK(l[i] >= 0 && l[i] < c) << "label " << l[i] << " of row " << i << " out of range [0, " << c
                                     << ")";
  return l;
}
}  // namespace

void nll_loss_forward(const Tensor& logp, const Tensor& labels, Tensor& loss) {
  const Tensor lc = logp.contiguous(), labc = labels.contiguous();
  const int64_t n = logp.size(0), c = logp.size(1);
  const int64_t* l = checked_labels(labels, labc, n, c);
  dispatch_float(logp.dtype(), "nll_loss_forward", [&](auto tag) {
    using T = decltype(tag);
    const T* p = lc.data<T>();
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s -= static_cast<double>(p[i * c + l[i]]);
    loss.data<T>()[0] = static_cast<T>(n > 0 ? s / static_cast<double>(n) : 0.0);
  });
}

void cross_entropy_backward(const Tensor& g, const Tensor& logp, const Tensor& labels, Tensor& gx) {
  TTQ_CHECK(g.numel() == 1 && gx.is_contiguous())
      << "cross_entropy_backward: scalar g, contiguous gx expected";
  const Tensor lc = logp.contiguous(), labc = labels.contiguous();
  const int64_t n = logp.size(0), c = logp.size(1);
  const int64_t* l = checked_labels(labels, labc, n, c);
  dispatch_float(logp.dtype(), "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    const double gs = static_cast<double>(g.data<T>()[0]) / static_cast<double>(n > 0 ? n : 1);
    const T* p = lc.data<T>();
    T* o = gx.data<T>();
#pragma omp parallel for schedule(static) if (n * c > (1 << 14))
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < c; ++j) {
        const double sm = std::exp(static_cast<double>(p[i * c + j]));
        o[i * c + j] = static_cast<T>(gs * (sm - (j == l[i] ? 1.0 : 0.0)));
      }
    }
  });
}

}  // namespace ttq::cpu
