// Front end of the GEMM-shaped ops: conv2d, linear, matmul. Forward checks and
// dispatch, then the backward rules of the group:
//   conv2d: gx = conv_transpose(gy, w), gw = corr(x, gy), gbias = sum_{n,h,w} gy
//   linear: gx = gy w, gw = gy^T x, gbias = 1^T gy
//   matmul: ga = g b^T, gb = a^T g
// Tested by the CONV2D / LINEAR / MATMUL cases of tests/test_backend_ops.cpp.
#include "engine/ops/common.h"

namespace ttq::ops {

using detail::check_floating;
using detail::check_operand;
using detail::describe;
using detail::new_output;

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int padding, int dilation,
              int groups) {
  Conv2dParams p;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = padding;
  p.dilation_h = p.dilation_w = dilation;
  p.groups = groups;
  return conv2d(x, w, bias, p);
}

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  check_floating("conv2d", "x", x);
  check_operand("conv2d", "w", w, "x", x);
  check_operand("conv2d", "bias", bias, "x", x);
  TTQ_CHECK(x.dim() == 4 && w.dim() == 4)
      << "conv2d: " << describe("x", x) << " and " << describe("w", w) << " must both be 4-d (NCHW, OIHW)";
  TTQ_CHECK(p.groups >= 1 && x.size(1) % p.groups == 0 && w.size(0) % p.groups == 0)
      << "conv2d: " << p.groups << " groups do not divide the channels of " << describe("x", x) << " and "
      << describe("w", w);
  TTQ_CHECK(x.size(1) == w.size(1) * p.groups)
      << "conv2d: " << describe("x", x) << " has " << x.size(1) << " channels but " << describe("w", w)
      << " expects " << w.size(1) * p.groups << " (" << w.size(1) << " per group, " << p.groups << " groups)";
  TTQ_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == w.size(0)))
      << "conv2d: " << describe("bias", bias) << " does not match " << describe("w", w);
  TTQ_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.pad_h >= 0 && p.pad_w >= 0 && p.dilation_h >= 1 &&
            p.dilation_w >= 1)
      << "conv2d: stride " << p.stride_h << "x" << p.stride_w << " / padding " << p.pad_h << "x" << p.pad_w
      << " / dilation " << p.dilation_h << "x" << p.dilation_w << " invalid";
  const int kh = static_cast<int>(w.size(2)), kw = static_cast<int>(w.size(3));
  TTQ_CHECK(x.size(2) + 2 * int64_t{p.pad_h} >= int64_t{p.dilation_h} * (kh - 1) + 1 &&
            x.size(3) + 2 * int64_t{p.pad_w} >= int64_t{p.dilation_w} * (kw - 1) + 1)
      << "conv2d: " << describe("w", w) << " with padding " << p.pad_h << "x" << p.pad_w << " and dilation "
      << p.dilation_h << "x" << p.dilation_w << " does not fit " << describe("x", x);
  const int64_t ho = conv_out_size(x.size(2), kh, p.stride_h, p.pad_h, p.dilation_h);
  const int64_t wo = conv_out_size(x.size(3), kw, p.stride_w, p.pad_w, p.dilation_w);
  const Tensor xd = detail::dense_nchw(x), wc = w.contiguous();
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  Tensor y = new_output({x.size(0), w.size(0), ho, wo}, x.dtype(), x.device());
  TTQ_OP_BACKEND(x, conv2d_forward)(xd, wc, bc, p, y);

  if (autograd::any_requires_grad({&x, &w, &bias})) {
    const bool need_x = x.requires_grad();
    const bool need_wb = w.requires_grad() || (bias.defined() && bias.requires_grad());
    // Keep only what the needed gradients read: x for the filter, w for the data.
    autograd::record(
        "conv2d", {&x, &w, &bias}, {&y},
        [xs = need_wb ? xd.detach() : Tensor(), ws = need_x ? wc.detach() : Tensor(), x_shape = x.shape(),
         w_shape = w.shape(), has_bias = bias.defined(), need_x, need_wb, p](const std::vector<Tensor>& g) {
          const Tensor gy = g[0].contiguous();
          Tensor gx, gw, gb;
          if (need_x) {
            gx = new_output(x_shape, gy.dtype(), gy.device());
            TTQ_OP_BACKEND(gy, conv2d_backward_data)(gy, ws, p, gx);
          }
          if (need_wb) {
            gw = new_output(w_shape, gy.dtype(), gy.device());
            if (has_bias) gb = new_output({w_shape[0]}, gy.dtype(), gy.device());
            TTQ_OP_BACKEND(gy, conv2d_backward_filter)(gy, xs, p, gw, gb);
          }
          return std::vector<Tensor>{gx, gw, gb};
        });
  }
  return y;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  check_floating("linear", "x", x);
  check_operand("linear", "w", w, "x", x);
  check_operand("linear", "bias", bias, "x", x);
  TTQ_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1))
      << "linear: " << describe("x", x) << " does not match " << describe("w", w)
      << " (expected [N,in] and [out,in])";
  TTQ_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == w.size(0)))
      << "linear: " << describe("bias", bias) << " does not match " << describe("w", w);
  const int64_t n = x.size(0), out = w.size(0);
  const Tensor xc = x.contiguous(), wc = w.contiguous();
  Tensor y = new_output({n, out}, x.dtype(), x.device());
  double beta = 0;
  if (bias.defined()) {  // y = broadcast(bias), then y += x w^T
    const Tensor bc = bias.contiguous();
    TTQ_OP_BACKEND(x, copy)(bc.as_strided({n, out}, {0, 1}, bc.offset()), y);
    beta = 1;
  }
  TTQ_OP_BACKEND(x, gemm)(false, true, 1.0, xc, wc, beta, y);

  if (autograd::any_requires_grad({&x, &w, &bias})) {
    const bool need_x = x.requires_grad(), need_w = w.requires_grad();
    const bool need_b = bias.defined() && bias.requires_grad();
    autograd::record("linear", {&x, &w, &bias}, {&y},
                     [xs = need_w ? xc.detach() : Tensor(), ws = need_x ? wc.detach() : Tensor(), need_x,
                      need_w, need_b](const std::vector<Tensor>& g) {
                       const Tensor gy = g[0].contiguous();
                       const int64_t n = gy.size(0), out = gy.size(1);
                       Tensor gx, gw, gb;
                       if (need_x) {
                         gx = new_output({n, ws.size(1)}, gy.dtype(), gy.device());
                         TTQ_OP_BACKEND(gy, gemm)(false, false, 1.0, gy, ws, 0.0, gx);
                       }
                       if (need_w) {
                         gw = new_output({out, xs.size(1)}, gy.dtype(), gy.device());
                         TTQ_OP_BACKEND(gy, gemm)(true, false, 1.0, gy, xs, 0.0, gw);
                       }
                       if (need_b) {
                         const Tensor ones = Tensor::ones({1, n}, gy.dtype(), gy.device());
                         gb = new_output({1, out}, gy.dtype(), gy.device());
                         TTQ_OP_BACKEND(gy, gemm)(false, false, 1.0, ones, gy, 0.0, gb);
                         gb = gb.view({out});
                       }
                       return std::vector<Tensor>{gx, gw, gb};
                     });
  }
  return y;
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_floating("matmul", "a", a);
  check_operand("matmul", "b", b, "a", a);
  TTQ_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0))
      << "matmul: " << describe("a", a) << " and " << describe("b", b) << " do not chain ([m,k] @ [k,n])";
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor c = new_output({a.size(0), b.size(1)}, a.dtype(), a.device());
  TTQ_OP_BACKEND(a, gemm)(false, false, 1.0, ac, bc, 0.0, c);

  if (autograd::any_requires_grad({&a, &b})) {
    const bool need_a = a.requires_grad(), need_b = b.requires_grad();
    autograd::record("matmul", {&a, &b}, {&c},
                     [as = need_b ? ac.detach() : Tensor(), bs = need_a ? bc.detach() : Tensor(), need_a,
                      need_b, m = a.size(0), k = a.size(1), n = b.size(1)](const std::vector<Tensor>& g) {
                       const Tensor gc = g[0].contiguous();
                       Tensor ga, gb;
                       if (need_a) {
                         ga = new_output({m, k}, gc.dtype(), gc.device());
                         TTQ_OP_BACKEND(gc, gemm)(false, true, 1.0, gc, bs, 0.0, ga);
                       }
                       if (need_b) {
                         gb = new_output({k, n}, gc.dtype(), gc.device());
                         TTQ_OP_BACKEND(gc, gemm)(true, false, 1.0, as, gc, 0.0, gb);
                       }
                       return std::vector<Tensor>{ga, gb};
                     });
  }
  return c;
}

}  // namespace ttq::ops
