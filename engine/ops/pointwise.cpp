// Front end of the elementwise ops and full reductions. Backward rules:
//   add: (g, g)            sub: (g, -g)          mul: (g*b, g*a)
//   scale(a, s): s*g       relu: g where y > 0   dropout: g * mask / (1-p)
//   sum: broadcast(g)      mean: broadcast(g) / numel
// Tested by the ADD / SUB / MUL / SCALE / RELU / DROPOUT / SUM / MEAN cases of
// tests/test_backend_ops.cpp.
#include "engine/ops/common.h"

namespace ttq::ops {

using detail::check_floating;
using detail::check_operand;
using detail::describe;
using detail::new_output;

namespace {

Tensor scaled(const Tensor& g, double s) {
  Tensor out = new_output(g.shape(), g.dtype(), g.device());
  TTQ_OP_BACKEND(g, axpby)(s, g, 0.0, Tensor(), out);
  return out;
}

// dL/dx of a reduction to a scalar: g (one element) spread over `shape`, times s.
Tensor spread(const Tensor& g, const Shape& shape, double s) {
  Tensor out = new_output(shape, g.dtype(), g.device());
  TTQ_OP_BACKEND(g, copy)(detail::broadcast_scalar(g, shape), out);
  if (s != 1.0) TTQ_OP_BACKEND(g, axpby)(s, out, 0.0, Tensor(), out);
  return out;
}

Tensor binary_op(const char* name, BinaryOp op, const Tensor& a, const Tensor& b) {
  check_floating(name, "a", a);
  check_operand(name, "b", b, "a", a);
  TTQ_CHECK(b.defined() && a.shape() == b.shape())
      << name << ": shapes " << shape_str(a.shape()) << " and "
      << (b.defined() ? shape_str(b.shape()) : "(undefined)") << " differ";
  Tensor y = new_output(a.shape(), a.dtype(), a.device());
  TTQ_OP_BACKEND(a, binary)(op, a, b, y);
  if (autograd::any_requires_grad({&a, &b})) {
    const bool need_a = a.requires_grad(), need_b = b.requires_grad();
    // Only mul reads its inputs back.
    const bool keep = op == BinaryOp::Mul;
    autograd::record(name, {&a, &b}, {&y},
                     [op, need_a, need_b, as = keep && need_b ? a.detach() : Tensor(),
                      bs = keep && need_a ? b.detach() : Tensor()](const std::vector<Tensor>& g) {
                       const Tensor& gy = g[0];
                       Tensor ga, gb;
                       switch (op) {
                         case BinaryOp::Add:
                           ga = need_a ? gy : Tensor();
                           gb = need_b ? gy : Tensor();
                           break;
                         case BinaryOp::Sub:
                           ga = need_a ? gy : Tensor();
                           gb = need_b ? scaled(gy, -1.0) : Tensor();
                           break;
                         case BinaryOp::Mul:
                           if (need_a) {
                             ga = new_output(gy.shape(), gy.dtype(), gy.device());
                             TTQ_OP_BACKEND(gy, binary)(BinaryOp::Mul, gy, bs, ga);
                           }
                           if (need_b) {
                             gb = new_output(gy.shape(), gy.dtype(), gy.device());
                             TTQ_OP_BACKEND(gy, binary)(BinaryOp::Mul, gy, as, gb);
                           }
                           break;
                       }
                       return std::vector<Tensor>{ga, gb};
                     });
  }
  return y;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary_op("add", BinaryOp::Add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary_op("sub", BinaryOp::Sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_op("mul", BinaryOp::Mul, a, b); }

Tensor scale(const Tensor& a, double s) {
  check_floating("scale", "a", a);
  Tensor y = scaled(a, s);
  if (autograd::any_requires_grad({&a})) {
    autograd::record("scale", {&a}, {&y},
                     [s](const std::vector<Tensor>& g) { return std::vector<Tensor>{scaled(g[0], s)}; });
  }
  return y;
}

Tensor relu(const Tensor& x) {
  check_floating("relu", "x", x);
  Tensor y = new_output(x.shape(), x.dtype(), x.device());
  TTQ_OP_BACKEND(x, relu_forward)(x, y);
  if (autograd::any_requires_grad({&x})) {
    autograd::record("relu", {&x}, {&y}, [ys = y.detach()](const std::vector<Tensor>& g) {
      Tensor gx = new_output(ys.shape(), ys.dtype(), ys.device());
      TTQ_OP_BACKEND(ys, relu_backward)(g[0], ys, gx);
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  check_floating("dropout", "x", x);
  TTQ_CHECK(p >= 0 && p <= 1) << "dropout: probability " << p << " outside [0, 1]";
  if (!training || p == 0) return x;
  Tensor y = new_output(x.shape(), x.dtype(), x.device());
  Tensor mask = new_output(x.shape(), DType::U8, x.device());
  const uint64_t offset = gen.take(static_cast<uint64_t>(x.numel()));
  TTQ_OP_BACKEND(x, dropout_forward)(x, p, gen.seed(), offset, y, mask);
  if (autograd::any_requires_grad({&x})) {
    autograd::record("dropout", {&x}, {&y}, [mask, p](const std::vector<Tensor>& g) {
      Tensor gx = new_output(g[0].shape(), g[0].dtype(), g[0].device());
      TTQ_OP_BACKEND(gx, dropout_backward)(g[0], mask, p, gx);
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}

Tensor sum(const Tensor& x) {
  check_floating("sum", "x", x);
  Tensor y = new_output({}, x.dtype(), x.device());
  TTQ_OP_BACKEND(x, sum_all)(x, y);
  if (autograd::any_requires_grad({&x})) {
    autograd::record("sum", {&x}, {&y}, [shape = x.shape()](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{spread(g[0], shape, 1.0)};
    });
  }
  return y;
}

Tensor mean(const Tensor& x) {
  check_floating("mean", "x", x);
  TTQ_CHECK(x.numel() > 0) << "mean: " << describe("x", x) << " is empty";
  const double inv = 1.0 / static_cast<double>(x.numel());
  Tensor y = new_output({}, x.dtype(), x.device());
  TTQ_OP_BACKEND(x, sum_all)(x, y);
  TTQ_OP_BACKEND(x, axpby)(inv, y, 0.0, Tensor(), y);
  if (autograd::any_requires_grad({&x})) {
    autograd::record("mean", {&x}, {&y}, [shape = x.shape(), inv](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{spread(g[0], shape, inv)};
    });
  }
  return y;
}

}  // namespace ttq::ops
