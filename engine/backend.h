// The backend interface: every engine op as a raw, non-differentiable function
// with the same signature in ttq::cpu (engine/cpu/, the reference backend) and
// ttq::cuda (engine/cuda/, compiled with TTQ_HAS_CUDA). The front end in
// engine/ops/ picks one with TTQ_BACKEND(device, fn)(args...).
//
// Conventions for every function here:
//  - inputs and outputs are on the same device and have the same float dtype
//    (F32 on every backend; F64 on the CPU for gradient checks);
//  - outputs are preallocated by the caller with the right shape and are fully
//    overwritten (callers may poison them); inputs may be any strides unless
//    "contiguous" is stated — conv / pool / BN / GEMM operands are contiguous;
//  - shapes are checked by the front end, not here.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace ttq {

// Cross-correlation as PyTorch's conv2d: output (oh, ow) of channel o reads input
// (oh*stride - pad + i*dilation, ow*stride - pad + j*dilation) of the channels of o's
// group. groups divides both channel counts; the weight is [Co, Ci/groups, kh, kw] and
// output channels [g*Co/groups, (g+1)*Co/groups) see input channels
// [g*Ci/groups, (g+1)*Ci/groups). Depthwise: groups == Ci.
struct Conv2dParams {
  int stride_h = 1, stride_w = 1;
  int pad_h = 0, pad_w = 0;
  int dilation_h = 1, dilation_w = 1;
  int groups = 1;
};

struct Pool2dParams {
  int kernel_h = 2, kernel_w = 2;
  int stride_h = 2, stride_w = 2;
  int pad_h = 0, pad_w = 0;
  bool ceil_mode = false;
  bool count_include_pad = true;  // avg pool only, PyTorch's default
};

// PyTorch's output-size rule for pooling (ceil_mode: the last window must start
// inside the input or left padding).
int64_t pool_out_size(int64_t in, int kernel, int stride, int pad, bool ceil_mode);
// requires in + 2*pad >= dilation*(kernel-1) + 1 (the dilated kernel fits the padded input).
inline int64_t conv_out_size(int64_t in, int kernel, int stride, int pad, int dilation = 1) {
  const int64_t span = static_cast<int64_t>(dilation) * (kernel - 1) + 1;  // the dilated kernel
  return (in + 2 * static_cast<int64_t>(pad) - span) / stride + 1;
}

enum class BinaryOp : uint8_t { Add, Sub, Mul };

}  // namespace ttq

// clang-format off
#define TTQ_BACKEND_DECLS                                                                          \
  /* y[N,Co,Ho,Wo] = conv(x[N,Ci,H,W], w[Co,Ci/groups,kh,kw]) + bias[Co] (bias may be undefined), */ \
  /* Conv2dParams' rule. CPU: x and y may be channel slices (each sample a dense block). */          \
  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,                        \
                      const Conv2dParams& p, Tensor& y);                                           \
  void conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dParams& p, Tensor& gx); \
  /* gw = dL/dw; gbias = dL/dbias when defined. */                                                 \
  void conv2d_backward_filter(const Tensor& gy, const Tensor& x, const Conv2dParams& p,            \
                              Tensor& gw, Tensor& gbias);                                          \
  /* c = alpha * op(a) @ op(b) + beta * c, 2-D contiguous, op = transpose when trans_*. */         \
  void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& a, const Tensor& b,            \
            double beta, Tensor& c);                                                               \
  /* Training BN over (N,H,W) per channel: biased batch variance normalises; running_var */       \
  /* is updated with the unbiased one, running = (1-momentum)*running + momentum*batch. */          \
  /* save_mean / save_invstd [C] receive the batch mean and 1/sqrt(var+eps). */                    \
  void batch_norm_forward_train(const Tensor& x, const Tensor& weight, const Tensor& bias,          \
                                Tensor& running_mean, Tensor& running_var, double momentum,        \
                                double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd);    \
  void batch_norm_forward_eval(const Tensor& x, const Tensor& weight, const Tensor& bias,          \
                               const Tensor& running_mean, const Tensor& running_var, double eps,  \
                               Tensor& y);                                                         \
  /* Backward of the training forward. */                                                         \
  void batch_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& weight,                \
                           const Tensor& save_mean, const Tensor& save_invstd, Tensor& gx,         \
                           Tensor& gweight, Tensor& gbias);                                        \
  /* Fused BN (training) + ReLU over x = concat(parts, dim 1), never materialised: every part */ \
  /* [N,C_i,H,W] with dense samples (any batch stride), same N,H,W; sum C_i = C; z, gz [N,C,H,W] */ \
  /* contiguous; per-channel tensors contiguous [C] (weight / bias / running stats may be */       \
  /* undefined: 1 / 0 / not updated). Per channel c over its N*H*W values:                 */      \
  /*   mean, var (biased) accumulated in double; invstd = 1/sqrt(var+eps);                  */     \
  /*   scale = T(weight * invstd) (one rounding); z = relu((x - T(mean)) * scale + bias),   */     \
  /*   evaluated in T without contraction; running stats as batch_norm_forward_train.       */     \
  /* save_mean, save_invstd, save_scale [C] receive T(mean), T(invstd), scale. */                  \
  void batch_norm_relu_forward_train(const std::vector<Tensor>& parts, const Tensor& weight,       \
                                     const Tensor& bias, Tensor& running_mean,                     \
                                     Tensor& running_var, double momentum, double eps, Tensor& z,  \
                                     Tensor& save_mean, Tensor& save_invstd, Tensor& save_scale);  \
  /* z = relu((x - save_mean) * save_scale + bias): bit-identical to the forward's z on the */     \
  /* same device, without a statistics pass. */                                                    \
  void batch_norm_relu_recompute(const std::vector<Tensor>& parts, const Tensor& save_mean,        \
                                 const Tensor& save_scale, const Tensor& bias, Tensor& z);         \
  /* Backward of z = relu(BN_train(x)) given gz and z: g = gz where z > 0, else 0; then, in */     \
  /* double per channel, sum_g = sum g, sum_gx = sum g * (x - mean); gbias = sum_g; */             \
  /* gweight = sum_gx * invstd; gx = g*k + (x - mean)*u + v in T (no contraction) with */          \
  /* k = w*invstd, u = -k*sum_gx*invstd^2/count, v = -k*sum_g/count; gparts[i] (contiguous, */     \
  /* parts[i]'s shape) receive part i's channels of gx. */                                        \
  void batch_norm_relu_backward(const Tensor& gz, const Tensor& z, const std::vector<Tensor>& parts, \
                                const Tensor& weight, const Tensor& save_mean,                     \
                                const Tensor& save_invstd, std::vector<Tensor>& gparts,            \
                                Tensor& gweight, Tensor& gbias);                                   \
  void relu_forward(const Tensor& x, Tensor& y);                                                   \
  /* gx = gy where y > 0, else 0. */                                                               \
  void relu_backward(const Tensor& gy, const Tensor& y, Tensor& gx);                               \
  /* indices (I32) hold the flat h*W+w position of each max inside its (n,c) plane; */             \
  /* ties pick the first in scan order, as PyTorch. */                                             \
  void max_pool2d_forward(const Tensor& x, const Pool2dParams& p, Tensor& y, Tensor& indices);     \
  void max_pool2d_backward(const Tensor& gy, const Tensor& indices, Tensor& gx);                   \
  void avg_pool2d_forward(const Tensor& x, const Pool2dParams& p, Tensor& y);                      \
  void avg_pool2d_backward(const Tensor& gy, const Pool2dParams& p, Tensor& gx);                   \
  /* out = a op b, same shape, any strides; out contiguous. */                                     \
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out);                         \
  /* out = alpha * a + beta * b (b may be undefined: out = alpha * a). */                          \
  void axpby(double alpha, const Tensor& a, double beta, const Tensor& b, Tensor& out);            \
  /* out[1 element] = sum of all elements of x (accumulated in double on the CPU). */              \
  void sum_all(const Tensor& x, Tensor& out);                                                      \
  /* dst = src elementwise, any strides, dtype converted; same device. */                          \
  void copy(const Tensor& src, Tensor& dst);                                                       \
  void fill(Tensor& t, double value);                                                              \
  /* Inverted dropout: mask[i] = (uniform(seed, offset+i) >= p); y = x*mask/(1-p). */              \
  /* mask is U8 (1 = kept), contiguous, i = row-major index; uniform = rng::uniform_f32. */         \
  void dropout_forward(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y,       \
                       Tensor& mask);                                                              \
  void dropout_backward(const Tensor& gy, const Tensor& mask, double p, Tensor& gx);               \
  /* Row-wise over [N,C]. */                                                                       \
  void log_softmax_forward(const Tensor& x, Tensor& y);                                            \
  /* loss[1] = mean_n -logp[n, label[n]] (labels I64); logp from log_softmax_forward. */           \
  void nll_loss_forward(const Tensor& logp, const Tensor& labels, Tensor& loss);                   \
  /* gx = g/N * (softmax - onehot), g = grad of the mean loss (1 element). */                      \
  void cross_entropy_backward(const Tensor& g, const Tensor& logp, const Tensor& labels,           \
                              Tensor& gx);                                                         \
  /* In-place optimiser updates (PyTorch semantics), params/grads/state contiguous. */             \
  /* SGD: g += wd*p; buf = first ? g : momentum*buf + g; g = nesterov ? g + momentum*buf : buf; */ \
  /* p -= lr*g. */                                                                                 \
  void sgd_step(Tensor& param, const Tensor& grad, Tensor& momentum_buf, double lr,                \
                double momentum, double weight_decay, bool nesterov, bool first_step);             \
  /* Adam with L2 decay added to the gradient and bias correction at `step` (1-based). */          \
  void adam_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,           \
                 double lr, double beta1, double beta2, double eps, double weight_decay,           \
                 int64_t step);
// clang-format on

namespace ttq::cpu {
TTQ_BACKEND_DECLS
}  // namespace ttq::cpu

#ifdef TTQ_HAS_CUDA
namespace ttq::cuda {
TTQ_BACKEND_DECLS
}  // namespace ttq::cuda
#endif

// TTQ_BACKEND(device, fn)(args...): calls ttq::cpu::fn or ttq::cuda::fn.
#ifdef TTQ_HAS_CUDA
#define TTQ_BACKEND(device, fn) ((device).is_cuda() ? &::ttq::cuda::fn : &::ttq::cpu::fn)
#else
namespace ttq::detail {
inline void require_cpu(Device d) { TTQ_CHECK(!d.is_cuda()) << "this build has no CUDA backend"; }
}  // namespace ttq::detail
#define TTQ_BACKEND(device, fn) (::ttq::detail::require_cpu(device), &::ttq::cpu::fn)
#endif
