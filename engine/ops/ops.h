// The public, differentiable op API (ttq::ops). Each op checks its inputs,
// allocates outputs, dispatches to the backend of the inputs' device
// (engine/backend.h) and records its backward rule (engine/ops/*.cpp) when
// a gradient is needed. All inputs of one op must be on one device.
#pragma once

#include <functional>
#include <vector>

#include "engine/backend.h"
#include "engine/tensor.h"

namespace ttq::ops {

// requires x [N,Ci,H,W], w [Co,Ci/groups,kh,kw], bias [Co] or undefined, same float dtype;
// groups divides Ci and Co; the dilated kernel d*(k-1)+1 fits the padded input.
// ensures y [N,Co,(H+2p-d*(kh-1)-1)/s+1,(W+2p-d*(kw-1)-1)/s+1], y = cross-correlation as
// PyTorch's conv2d(x, w, bias, stride, padding, dilation, groups) (Conv2dParams in
// engine/backend.h: output channel o sees only the input channels of its group).
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, int stride = 1, int padding = 0,
              int dilation = 1, int groups = 1);
// The same with per-axis stride, padding and dilation.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p);
// requires x [N,in], w [out,in], bias [out] or undefined. ensures y = x w^T + bias.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias);
// c = a @ b for 2-D a [m,k], b [k,n].
Tensor matmul(const Tensor& a, const Tensor& b);
// BatchNorm2d as PyTorch (eps, momentum; training uses batch stats and updates the
// running buffers in place, eval uses the running stats). weight/bias may be undefined.
Tensor batch_norm2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                    Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);
// Synchronised BatchNorm for data-parallel training (PyTorch's SyncBatchNorm):
// while a sum is set, batch_norm2d in training normalises with the statistics of
// the global batch, the union of every process's batch. `sum` replaces a host
// vector by its element-wise sum over the processes (an all-reduce; every
// process calls it in the same order). Per channel, with n_r values on process r:
//   forward:  n = sum n_r, mean = sum(x) / n, var = sum(x^2) / n - mean^2 (biased;
//             the running variance takes var * n / (n - 1)), gathered from each
//             process's own mean and variance;
//   backward: gx = w * invstd * (gy - sum(gy) / n - xhat * sum(gy * xhat) / n) with
//             both sums global; gweight, gbias stay the process's own sums (the
//             gradient reducer adds them up).
// With a world of one this is batch_norm2d up to rounding. dense_bottleneck is
// not synchronised: models run their naive graph under sync (models::ModelConfig).
// Tested against one process's batch_norm2d on the whole batch by tests/dist_worker.cpp.
using ChannelSum = std::function<void(std::vector<double>&)>;
void set_batch_norm_sync(ChannelSum sum);  // an empty function: local statistics
bool batch_norm_sync_enabled();
Tensor relu(const Tensor& x);
// The bottleneck of a DenseNet-BC dense layer in training mode, with the memory
// of conv1(relu(norm1(concat(features)))) reduced to the feature maps and three
// [C] vectors:
//   x     = concat(features, dim 1), [N, C, H, W], C = sum_i C_i (never materialised)
//   mu_c  = mean of x[:, c] over (N, H, W); var_c = the biased variance
//   z     = relu((x - mu_c) * (bn_weight_c / sqrt(var_c + eps)) + bn_bias_c)
//   out   = conv2d(z, conv_weight), 1x1, stride 1, no padding, no bias: [N, Co, H, W]
// running_mean / running_var are updated once, as batch_norm2d in training
// (unbiased variance, running = (1 - momentum) * running + momentum * batch).
// The backward recomputes z from the saved statistics (the feature maps are kept,
// not copied, when each sample is dense) and writes every feature's gradient
// directly; gradients reach every feature map, bn_weight, bn_bias and
// conv_weight (pass the effective, possibly quantized, weight: its gradient
// flows on to the latent one through the graph).
// requires: features non-empty, each [N, C_i, H, W] with the same N, H, W, float
//           dtype and device, N*H*W > 1; bn_weight, bn_bias [C] or undefined
//           (1, 0); running stats contiguous [C] or undefined (not tracked);
//           conv_weight [Co, C, 1, 1]; eps > 0, 0 <= momentum <= 1.
// ensures:  out as above. On the CPU out, the gradients and the running stats are
//           bit-identical to conv2d(relu(batch_norm2d(concat(features), training))).
Tensor dense_bottleneck(const std::vector<Tensor>& features, const Tensor& bn_weight, const Tensor& bn_bias,
                        Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                        const Tensor& conv_weight);
Tensor max_pool2d(const Tensor& x, int kernel, int stride, int padding = 0, bool ceil_mode = false);
Tensor avg_pool2d(const Tensor& x, int kernel, int stride, int padding = 0, bool ceil_mode = false,
                  bool count_include_pad = true);
// [N,C,H,W] -> [N,C]: mean over H, W.
Tensor global_avg_pool2d(const Tensor& x);
// Concatenation along `dim`; all other sizes equal.
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
// Elementwise, same shapes.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, double s);
// Reductions to a 0-d tensor.
Tensor sum(const Tensor& x);
Tensor mean(const Tensor& x);
// Inverted dropout (identity when !training or p == 0); draws numel counters from gen.
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);
// Row-wise log-softmax / softmax of [N,C].
Tensor log_softmax(const Tensor& x);
Tensor softmax(const Tensor& x);
// Mean cross-entropy of logits [N,C] against labels [N] (I64), a 0-d tensor.
Tensor cross_entropy(const Tensor& logits, const Tensor& labels);
// Differentiable views.
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor flatten(const Tensor& x);  // [N, ...] -> [N, prod(...)]
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);

// No gradient: number of rows whose label strictly wins a top-k place. The one
// place accuracy is computed. A row counts when fewer than k other classes score
// at least as high as its label (a tie counts against it: a collapsed network
// whose logits are all equal scores 0), and only when every logit of the row is
// finite (a NaN or an infinity anywhere makes the row wrong).
int64_t topk_correct(const Tensor& logits, const Tensor& labels, int k);

// Debugging: when on, every output the ops allocate (forward and backward) is
// filled with NaN (integers: a fixed byte pattern) before the backend runs, so a
// kernel that leaves elements unwritten fails its tests. Also switched on by the
// environment variable TTQ_POISON_OUTPUTS=1. Off by default (it costs a fill).
void set_poison_outputs(bool on);
bool poison_outputs();

}  // namespace ttq::ops
