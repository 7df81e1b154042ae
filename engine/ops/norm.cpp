// Front end of batch_norm2d (PyTorch's BatchNorm2d). Backward rules:
//   training: the backend's batch_norm_backward (gx through the batch statistics);
//   eval:     y = (x - rm) * s + b with s = w / sqrt(rv + eps), affine in x:
//             gx = gy * s, gw = sum gy * xhat, gb = sum gy (xhat = (x - rm) / sqrt(rv + eps)).
// The eval rule is built from backend calls every device has: gx is an eval
// forward of gy with zero mean and no bias; gw / gb are the per-channel sums of
// batch_norm_backward evaluated at xhat with unit scale.
// Tested by the BATCH_NORM2D cases and the running-stats test of tests/test_backend_ops.cpp.
#include "engine/ops/common.h"

namespace ttq::ops {

using detail::check_floating;
using detail::check_operand;
using detail::describe;
using detail::new_output;

namespace {

void check_channel_vector(const char* name, const Tensor& t, const Tensor& x) {
  if (!t.defined()) return;
  check_operand("batch_norm2d", name, t, "x", x);
  TTQ_CHECK(t.dim() == 1 && t.size(0) == x.size(1))
      << "batch_norm2d: " << describe(name, t) << " does not match the channels of " << describe("x", x);
}

Tensor channel_filled(const Tensor& x, double v) {
  return Tensor::full({x.size(1)}, v, x.dtype(), x.device());
}

std::vector<Tensor> eval_backward(const Tensor& gy_in, const Tensor& xs, const Tensor& w, const Tensor& rm,
                                  const Tensor& rv, double eps, bool need_x, bool need_w, bool need_b) {
  const Tensor gy = gy_in.contiguous();
  Tensor gx, gw, gb;
  const Tensor zeros = channel_filled(xs, 0.0), ones = channel_filled(xs, 1.0);
  if (need_x) {
    gx = new_output(gy.shape(), gy.dtype(), gy.device());
    TTQ_OP_BACKEND(gy, batch_norm_forward_eval)(gy, w, zeros, zeros, rv, eps, gx);
  }
  if (need_w || need_b) {
    Tensor xhat = new_output(xs.shape(), xs.dtype(), xs.device());
    TTQ_OP_BACKEND(gy, batch_norm_forward_eval)(xs, ones, zeros, rm, rv, eps, xhat);
    Tensor scratch = new_output(gy.shape(), gy.dtype(), gy.device());
    Tensor gw_all = new_output({xs.size(1)}, gy.dtype(), gy.device());
    Tensor gb_all = new_output({xs.size(1)}, gy.dtype(), gy.device());
    TTQ_OP_BACKEND(gy, batch_norm_backward)(gy, xhat, ones, zeros, ones, scratch, gw_all, gb_all);
    if (need_w) gw = gw_all;
    if (need_b) gb = gb_all;
  }
  return {gx, gw, gb};
}

}  // namespace

Tensor batch_norm2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                    Tensor& running_var, bool training, double momentum, double eps) {
  check_floating("batch_norm2d", "x", x);
  TTQ_CHECK(x.dim() == 4) << "batch_norm2d: " << describe("x", x) << " must be 4-d (NCHW)";
  check_channel_vector("weight", weight, x);
  check_channel_vector("bias", bias, x);
  check_channel_vector("running_mean", running_mean, x);
  check_channel_vector("running_var", running_var, x);
  TTQ_CHECK(eps > 0 && momentum >= 0 && momentum <= 1)
      << "batch_norm2d: eps " << eps << " / momentum " << momentum << " invalid";
  const int64_t c = x.size(1);
  // The backends always receive a scale and a shift.
  const Tensor w = weight.defined() ? weight.contiguous() : channel_filled(x, 1.0);
  const Tensor b = bias.defined() ? bias.contiguous() : channel_filled(x, 0.0);
  const Tensor xd = detail::dense_nchw(x);
  Tensor y = new_output(x.shape(), x.dtype(), x.device());
  const bool need = autograd::any_requires_grad({&x, &weight, &bias});
  const bool need_x = x.requires_grad();
  const bool need_w = weight.defined() && weight.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();

  if (training) {
    TTQ_CHECK(x.size(0) * x.size(2) * x.size(3) > 1)
        << "batch_norm2d: training needs more than one value per channel, got " << describe("x", x);
    for (const Tensor* r : {&running_mean, &running_var})
      TTQ_CHECK(!r->defined() || r->is_contiguous()) << "batch_norm2d: running statistics must be contiguous";
    // Without running buffers (track_running_stats=False) the update goes to scratch.
    Tensor rm = running_mean.defined() ? running_mean : channel_filled(x, 0.0);
    Tensor rv = running_var.defined() ? running_var : channel_filled(x, 1.0);
    Tensor save_mean = new_output({c}, x.dtype(), x.device());
    Tensor save_invstd = new_output({c}, x.dtype(), x.device());
    TTQ_OP_BACKEND(x, batch_norm_forward_train)(xd, w, b, rm, rv, momentum, eps, y, save_mean, save_invstd);
    if (need) {
      autograd::record("batch_norm2d", {&x, &weight, &bias}, {&y},
                       [xs = xd.detach(), ws = w.detach(), sm = save_mean, si = save_invstd, need_x, need_w,
                        need_b](const std::vector<Tensor>& g) {
                         const Tensor gy = g[0].contiguous();
                         Tensor gx = new_output(gy.shape(), gy.dtype(), gy.device());
                         Tensor gw = new_output({xs.size(1)}, gy.dtype(), gy.device());
                         Tensor gb = new_output({xs.size(1)}, gy.dtype(), gy.device());
                         TTQ_OP_BACKEND(gy, batch_norm_backward)(gy, xs, ws, sm, si, gx, gw, gb);
                         return std::vector<Tensor>{need_x ? gx : Tensor(), need_w ? gw : Tensor(),
                                                    need_b ? gb : Tensor()};
                       });
    }
    return y;
  }

  TTQ_CHECK(running_mean.defined() && running_var.defined())
      << "batch_norm2d: eval mode needs running_mean and running_var";
  const Tensor rm = running_mean.contiguous(), rv = running_var.contiguous();
  TTQ_OP_BACKEND(x, batch_norm_forward_eval)(xd, w, b, rm, rv, eps, y);
  if (need) {
    // The running statistics are buffers that a later training step updates in
    // place: the backward keeps copies of the values this forward used.
    autograd::record("batch_norm2d_eval", {&x, &weight, &bias}, {&y},
                     [xs = (need_w || need_b) ? xd.detach() : Tensor(), ws = w.detach(), rm = rm.clone(),
                      rv = rv.clone(), eps, need_x, need_w, need_b](const std::vector<Tensor>& g) {
                       return eval_backward(g[0], xs.defined() ? xs : g[0], ws, rm, rv, eps, need_x, need_w,
                                            need_b);
                     });
  }
  return y;
}

}  // namespace ttq::ops
