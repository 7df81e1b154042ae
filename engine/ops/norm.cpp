// Front end of batch_norm2d (PyTorch's BatchNorm2d). Backward rules:
//   training: the backend's batch_norm_backward (gx through the batch statistics);
//   eval:     y = (x - rm) * s + b with s = w / sqrt(rv + eps), affine in x:
//             gx = gy * s, gw = sum gy * xhat, gb = sum gy (xhat = (x - rm) / sqrt(rv + eps)).
// The eval rule is built from backend calls every device has: gx is an eval
// forward of gy with zero mean and no bias; gw / gb are the per-channel sums of
// batch_norm_backward evaluated at xhat with unit scale.
// Synchronised statistics (set_batch_norm_sync): batch_norm2d_sync below, built
// from the same backend calls plus two host sums per layer.
// Tested by the BATCH_NORM2D cases and the running-stats test of tests/test_backend_ops.cpp;
// the synchronised path by tests/dist_worker.cpp (2 processes vs one on the whole batch).
#include <cmath>

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

ChannelSum& sync_sum() {
  static ChannelSum sum;
  return sum;
}

Tensor to_channels(const std::vector<double>& v, size_t first, int64_t c, const Tensor& like) {
  std::vector<float> f(static_cast<size_t>(c));
  for (int64_t i = 0; i < c; ++i)
    f[static_cast<size_t>(i)] = static_cast<float>(v[first + static_cast<size_t>(i)]);
  return Tensor::from_vector(f, {c}, like.device()).to(like.dtype());
}

// Per channel of a contiguous F32 NCHW CPU tensor, in double: the mean and the
// biased variance (two passes). The backend returns both rounded to T; summed
// over ranks, T's rounding of a mean far from 0 would show in every xhat.
void channel_moments_cpu(const Tensor& x, std::vector<double>& mean, std::vector<double>& var) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  const float* p = x.data<float>();
  for (int64_t ch = 0; ch < c; ++ch) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < hw; ++j) s += p[(i * c + ch) * hw + j];
    const double m = s / static_cast<double>(n * hw);
    double q = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < hw; ++j) {
        const double d = p[(i * c + ch) * hw + j] - m;
        q += d * d;
      }
    mean[static_cast<size_t>(ch)] = m;
    var[static_cast<size_t>(ch)] = q / static_cast<double>(n * hw);
  }
}

// Per channel, in double: gw = sum gy * (x - mean) * invstd, gb = sum gy (what the
// backend's batch_norm_backward sums before rounding them to T).
void channel_grad_sums_cpu(const Tensor& gy, const Tensor& x, const std::vector<double>& mean,
                           const std::vector<double>& invstd, std::vector<double>& gw,
                           std::vector<double>& gb) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  const float *g = gy.data<float>(), *p = x.data<float>();
  for (int64_t ch = 0; ch < c; ++ch) {
    const size_t k = static_cast<size_t>(ch);
    const double m = static_cast<float>(mean[k]);  // the T(mean) the backend subtracts
    double sg = 0, sgx = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < hw; ++j) {
        const int64_t at = (i * c + ch) * hw + j;
        sg += g[at];
        sgx += g[at] * (p[at] - m);
      }
    gw[k] = sgx * invstd[k];
    gb[k] = sg;
  }
}

// Training batch_norm2d with the global batch's statistics (ops.h, set_batch_norm_sync).
Tensor batch_norm2d_sync(const Tensor& x, const Tensor& xd, const Tensor& weight, const Tensor& bias,
                         const Tensor& w, const Tensor& b, Tensor& running_mean, Tensor& running_var,
                         double momentum, double eps) {
  const int64_t c = x.size(1);
  const size_t cs = static_cast<size_t>(c);
  const double n_local = static_cast<double>(x.size(0) * x.size(2) * x.size(3));
  // This process's mean and biased variance (the backend's, accumulated in double).
  Tensor y = new_output(x.shape(), x.dtype(), x.device());
  Tensor local_mean = new_output({c}, x.dtype(), x.device());
  Tensor local_invstd = new_output({c}, x.dtype(), x.device());
  Tensor no_running;
  TTQ_OP_BACKEND(x, batch_norm_forward_train)
  (xd, w, b, no_running, no_running, momentum, eps, y, local_mean, local_invstd);
  std::vector<double> lm = local_mean.to_vector<double>(), lvar = local_invstd.to_vector<double>();
  for (double& iv : lvar) iv = std::max(0.0, 1.0 / (iv * iv) - eps);  // the backend's variance, in T
  if (x.device().is_cpu() && x.dtype() == DType::F32) channel_moments_cpu(xd, lm, lvar);  // exact, in double
  // [n, sum x (c), sum x^2 (c)] summed over the processes.
  std::vector<double> v(1 + 2 * cs);
  v[0] = n_local;
  for (size_t i = 0; i < cs; ++i) {
    v[1 + i] = n_local * lm[i];
    v[1 + cs + i] = n_local * (lvar[i] + lm[i] * lm[i]);
  }
  sync_sum()(v);
  const double n = v[0];
  TTQ_CHECK(n > 1) << "batch_norm2d: training needs more than one value per channel in the global batch";
  std::vector<double> stats(3 * cs);  // mean, var, invstd
  for (size_t i = 0; i < cs; ++i) {
    const double mean = v[1 + i] / n;
    const double var = std::max(0.0, v[1 + cs + i] / n - mean * mean);
    stats[i] = mean;
    stats[cs + i] = var;
    stats[2 * cs + i] = 1.0 / std::sqrt(var + eps);
  }
  const Tensor mean_t = to_channels(stats, 0, c, x), var_t = to_channels(stats, cs, c, x);
  const Tensor invstd_t = to_channels(stats, 2 * cs, c, x);
  TTQ_OP_BACKEND(x, batch_norm_forward_eval)(xd, w, b, mean_t, var_t, eps, y);
  // Running statistics as the backend updates them: the unbiased global variance.
  for (int which = 0; which < 2; ++which) {
    Tensor& r = which == 0 ? running_mean : running_var;
    if (!r.defined()) continue;
    std::vector<double> rv = r.to_vector<double>();
    for (size_t i = 0; i < cs; ++i) {
      const double batch = which == 0 ? stats[i] : stats[cs + i] * n / (n - 1);
      rv[i] = (1 - momentum) * rv[i] + momentum * batch;
    }
    r.copy_(to_channels(rv, 0, c, r));
  }
  const bool need_x = x.requires_grad();
  const bool need_w = weight.defined() && weight.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  if (!autograd::any_requires_grad({&x, &weight, &bias})) return y;
  autograd::record(
      "batch_norm2d_sync", {&x, &weight, &bias}, {&y},
      [xs = xd.detach(), ws = w.detach(), mean_t, var_t, invstd_t, n, n_local, eps, need_x, need_w,
       need_b](const std::vector<Tensor>& g) {
        const Tensor gy = g[0].contiguous();
        const int64_t c = xs.size(1);
        const size_t cs = static_cast<size_t>(c);
        Tensor gx = new_output(gy.shape(), gy.dtype(), gy.device());
        Tensor gw = new_output({c}, gy.dtype(), gy.device());
        Tensor gb = new_output({c}, gy.dtype(), gy.device());
        // Local: gw = sum gy * xhat, gb = sum gy, gx with this process's sums and count.
        TTQ_OP_BACKEND(gy, batch_norm_backward)(gy, xs, ws, mean_t, invstd_t, gx, gw, gb);
        std::vector<double> lw = gw.to_vector<double>(), lb = gb.to_vector<double>();
        if (gy.device().is_cpu() && gy.dtype() == DType::F32)  // the same sums in double, unrounded
          channel_grad_sums_cpu(gy, xs, mean_t.to_vector<double>(), invstd_t.to_vector<double>(), lw, lb);
        std::vector<double> v(2 * cs);
        for (size_t i = 0; i < cs; ++i) {
          v[i] = lw[i];
          v[cs + i] = lb[i];
        }
        sync_sum()(v);
        // gx += xhat * a + d per channel, replacing the local means of gy and gy * xhat by the global ones:
        // a = k * (gw / n_local - GW / n), d = k * (gb / n_local - GB / n), k = w * invstd.
        const std::vector<double> wv = ws.to_vector<double>(), iv = invstd_t.to_vector<double>();
        std::vector<double> ad(2 * cs);
        for (size_t i = 0; i < cs; ++i) {
          const double k = wv[i] * iv[i];
          ad[i] = k * (lw[i] / n_local - v[i] / n);
          ad[cs + i] = k * (lb[i] / n_local - v[cs + i] / n);
        }
        if (need_x) {
          Tensor corr = new_output(gy.shape(), gy.dtype(), gy.device());
          TTQ_OP_BACKEND(gy, batch_norm_forward_eval)
          (xs, to_channels(ad, 0, c, gy), to_channels(ad, cs, c, gy), mean_t, var_t, eps, corr);
          TTQ_OP_BACKEND(gy, axpby)(1.0, gx, 1.0, corr, gx);
        }
        return std::vector<Tensor>{need_x ? gx : Tensor(), need_w ? gw : Tensor(), need_b ? gb : Tensor()};
      });
  return y;
}

}  // namespace

void set_batch_norm_sync(ChannelSum sum) { sync_sum() = std::move(sum); }
bool batch_norm_sync_enabled() { return static_cast<bool>(sync_sum()); }

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
    if (batch_norm_sync_enabled())
      return batch_norm2d_sync(x, xd, weight, bias, w, b, running_mean, running_var, momentum, eps);
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
