// Front end of the row-wise softmax family over [N,C] and the classification
// helpers. Backward rules (s = rowsum, p = softmax(x)):
//   log_softmax: gx = gy - p * s(gy)
//   softmax:     gx = p * (gy - s(gy * p))
//   cross_entropy (mean over rows): gx = g/N * (p - onehot(labels))
// softmax and the two composite rules are built from backend calls that every
// device has (the interface has no elementwise exp): exp(logp) is read off the
// fused cross-entropy gradient of logp widened by one column of -inf that every
// row takes as its label, so that gradient is exactly exp(logp) on the real
// columns; row sums are GEMMs with a ones vector.
// Tested by the LOG_SOFTMAX / SOFTMAX / CROSS_ENTROPY cases and the topk test of
// tests/test_backend_ops.cpp.
#include <cmath>
#include <limits>

#include "engine/ops/common.h"

namespace ttq::ops {

using detail::check_floating;
using detail::describe;
using detail::new_output;

namespace {

void check_rows(const char* op, const Tensor& x) {
  check_floating(op, "x", x);
  TTQ_CHECK(x.dim() == 2 && x.size(1) > 0) << op << ": " << describe("x", x) << " must be [N,C] with C > 0";
}

Tensor log_softmax_raw(const Tensor& x) {
  Tensor y = new_output(x.shape(), x.dtype(), x.device());
  TTQ_OP_BACKEND(x, log_softmax_forward)(x, y);
  return y;
}

// exp(logp) for logp [N,C] (rows of log-probabilities), as explained above.
Tensor exp_of_logp(const Tensor& logp) {
  const int64_t n = logp.size(0), c = logp.size(1);
  const Device dev = logp.device();
  Tensor wide = new_output({n, c + 1}, logp.dtype(), dev);
  Tensor head = wide.narrow(1, 0, c);
  TTQ_BACKEND(dev, copy)(logp, head);
  const Tensor minus_inf = Tensor::full({}, -std::numeric_limits<double>::infinity(), logp.dtype(), dev);
  Tensor last = wide.narrow(1, c, 1);
  TTQ_BACKEND(dev, copy)(detail::broadcast_scalar(minus_inf, {n, 1}), last);
  const Tensor labels = Tensor::full({n}, static_cast<double>(c), DType::I64, dev);
  // g = N makes the gradient's 1/N factor exactly 1.
  const Tensor g = Tensor::full({}, static_cast<double>(n), logp.dtype(), dev);
  Tensor grad = new_output({n, c + 1}, logp.dtype(), dev);
  TTQ_BACKEND(dev, cross_entropy_backward)(g, wide, labels, grad);
  return grad.narrow(1, 0, c).contiguous();
}

// Row sums of [N,C] as [N,1].
Tensor row_sums(const Tensor& a) {
  const Tensor ac = a.contiguous();
  const Tensor ones = Tensor::ones({a.size(1), 1}, a.dtype(), a.device());
  Tensor s = new_output({a.size(0), 1}, a.dtype(), a.device());
  TTQ_OP_BACKEND(a, gemm)(false, false, 1.0, ac, ones, 0.0, s);
  return s;
}

Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b) {
  Tensor out = new_output(a.shape(), a.dtype(), a.device());
  TTQ_OP_BACKEND(a, binary)(op, a, b, out);
  return out;
}

}  // namespace

Tensor log_softmax(const Tensor& x) {
  check_rows("log_softmax", x);
  Tensor y = log_softmax_raw(x);
  if (autograd::any_requires_grad({&x})) {
    autograd::record("log_softmax", {&x}, {&y}, [ys = y.detach()](const std::vector<Tensor>& g) {
      const Tensor p = exp_of_logp(ys);
      const Tensor ps = binary_raw(BinaryOp::Mul, p, detail::broadcast_column(row_sums(g[0]), p.size(1)));
      return std::vector<Tensor>{binary_raw(BinaryOp::Sub, g[0], ps)};
    });
  }
  return y;
}

Tensor softmax(const Tensor& x) {
  check_rows("softmax", x);
  Tensor y = exp_of_logp(log_softmax_raw(x));
  if (autograd::any_requires_grad({&x})) {
    autograd::record("softmax", {&x}, {&y}, [ys = y.detach()](const std::vector<Tensor>& g) {
      const Tensor s = row_sums(binary_raw(BinaryOp::Mul, g[0], ys));
      const Tensor d = binary_raw(BinaryOp::Sub, g[0], detail::broadcast_column(s, ys.size(1)));
      return std::vector<Tensor>{binary_raw(BinaryOp::Mul, ys, d)};
    });
  }
  return y;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& labels) {
  check_rows("cross_entropy", logits);
  TTQ_CHECK(labels.defined() && labels.dtype() == DType::I64 && labels.dim() == 1 &&
            labels.size(0) == logits.size(0))
      << "cross_entropy: " << describe("labels", labels) << " must be I64 [N] for "
      << describe("logits", logits);
  TTQ_CHECK(labels.device() == logits.device())
      << "cross_entropy: " << describe("labels", labels) << " is on " << labels.device().str()
      << ", logits on " << logits.device().str();
  const Tensor logp = log_softmax_raw(logits);
  Tensor loss = new_output({}, logits.dtype(), logits.device());
  TTQ_OP_BACKEND(logits, nll_loss_forward)(logp, labels, loss);
  if (autograd::any_requires_grad({&logits})) {
    autograd::record("cross_entropy", {&logits}, {&loss},
                     [logp, labels = labels.detach()](const std::vector<Tensor>& g) {
                       Tensor gx = new_output(logp.shape(), logp.dtype(), logp.device());
                       TTQ_OP_BACKEND(logp, cross_entropy_backward)(g[0], logp, labels, gx);
                       return std::vector<Tensor>{gx};
                     });
  }
  return loss;
}

int64_t topk_correct(const Tensor& logits, const Tensor& labels, int k) {
  TTQ_CHECK(logits.dim() == 2 && labels.dim() == 1 && labels.size(0) == logits.size(0))
      << "topk_correct: " << describe("logits", logits) << " and " << describe("labels", labels)
      << " do not match";
  TTQ_CHECK(k >= 1) << "topk_correct: k = " << k;
  const std::vector<double> v = logits.to_vector<double>();
  const std::vector<int64_t> l = labels.to_vector<int64_t>();
  const int64_t n = logits.size(0), c = logits.size(1);
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    TTQ_CHECK(l[i] >= 0 && l[i] < c) << "topk_correct: label " << l[i] << " of row " << i
                                     << " out of range [0, " << c << ")";
    // Every other class scoring at least as high as the true class ranks ahead of it
    // (a tie is a miss), and a row with a NaN or an infinity is a miss whatever its values.
    const double* row = v.data() + i * c;
    const double target = row[l[i]];
    bool finite = true;
    int64_t ahead = 0;
    for (int64_t j = 0; j < c; ++j) {
      finite = finite && std::isfinite(row[j]);
      ahead += j != l[i] && row[j] >= target ? 1 : 0;
    }
    correct += finite && ahead < k ? 1 : 0;
  }
  return correct;
}

}  // namespace ttq::ops
