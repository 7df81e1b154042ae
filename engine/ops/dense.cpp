// Front end of dense_bottleneck: the memory-efficient bottleneck of a DenseNet-BC
// dense layer, conv1x1(relu(batch_norm_train(concat(features)))), fused so that
// the concatenation is never materialised and the BN+ReLU output lives only
// while a conv needs it. Backward rule (recorded below):
//   z   = relu((x - mean) * scale + bias)     recomputed from the saved statistics
//   gw  = corr(z, g)                          conv2d_backward_filter
//   gz  = conv_transpose(g, w)                conv2d_backward_data
//   gx_i, gbn_w, gbn_b = batch_norm_relu_backward(gz, z, ...)  (written per part)
// Backends: batch_norm_relu_* (engine/cpu/batch_norm.cpp, engine/cuda/batch_norm_relu.cu)
// and the conv2d calls. Tested by the DENSE_BOTTLENECK cases of
// tests/test_backend_ops.cpp and against the naive graph in tests/test_models.cpp.
#include "engine/ops/common.h"

namespace ttq::ops {

using detail::check_floating;
using detail::check_operand;
using detail::describe;
using detail::new_output;

namespace {

// Every sample of x is one dense [C_i, H, W] block (any batch stride): a
// channel slice of a wider buffer qualifies, and is read in place.
bool sample_dense(const Tensor& x) {
  return x.stride(3) == 1 && x.stride(2) == x.size(3) && x.stride(1) == x.size(2) * x.size(3);
}

void check_channel_vector(const char* name, const Tensor& t, const Tensor& x0, int64_t channels) {
  if (!t.defined()) return;
  check_operand("dense_bottleneck", name, t, "features[0]", x0);
  TTQ_CHECK(t.dim() == 1 && t.size(0) == channels)
      << "dense_bottleneck: " << describe(name, t) << " does not match the " << channels
      << " channels of the concatenated features";
}

}  // namespace

Tensor dense_bottleneck(const std::vector<Tensor>& features, const Tensor& bn_weight, const Tensor& bn_bias,
                        Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                        const Tensor& conv_weight) {
  TTQ_CHECK(!features.empty()) << "dense_bottleneck: no feature maps";
  const Tensor& x0 = features[0];
  check_floating("dense_bottleneck", "features[0]", x0);
  TTQ_CHECK(x0.dim() == 4) << "dense_bottleneck: " << describe("features[0]", x0) << " must be 4-d (NCHW)";
  int64_t channels = 0;
  for (size_t i = 0; i < features.size(); ++i) {
    const Tensor& f = features[i];
    TTQ_CHECK(f.defined()) << "dense_bottleneck: features[" << i << "] is undefined";
    check_operand("dense_bottleneck", "features[i]", f, "features[0]", x0);
    TTQ_CHECK(f.dim() == 4 && f.size(0) == x0.size(0) && f.size(2) == x0.size(2) && f.size(3) == x0.size(3))
        << "dense_bottleneck: " << describe("features[0]", x0) << " and features[" << i << "] "
        << shape_str(f.shape()) << " differ outside the channels";
    channels += f.size(1);
  }
  const int64_t n = x0.size(0), h = x0.size(2), w = x0.size(3);
  TTQ_CHECK(n * h * w > 1) << "dense_bottleneck: training BN needs more than one value per channel, got "
                           << describe("features[0]", x0);
  check_channel_vector("bn_weight", bn_weight, x0, channels);
  check_channel_vector("bn_bias", bn_bias, x0, channels);
  check_channel_vector("running_mean", running_mean, x0, channels);
  check_channel_vector("running_var", running_var, x0, channels);
  for (const Tensor* r : {&running_mean, &running_var})
    TTQ_CHECK(!r->defined() || r->is_contiguous())
        << "dense_bottleneck: running statistics must be contiguous";
  check_operand("dense_bottleneck", "conv_weight", conv_weight, "features[0]", x0);
  TTQ_CHECK(conv_weight.defined() && conv_weight.dim() == 4 && conv_weight.size(1) == channels &&
            conv_weight.size(2) == 1 && conv_weight.size(3) == 1)
      << "dense_bottleneck: " << describe("conv_weight", conv_weight) << " must be [Co, " << channels
      << ", 1, 1]";
  TTQ_CHECK(eps > 0 && momentum >= 0 && momentum <= 1)
      << "dense_bottleneck: eps " << eps << " / momentum " << momentum << " invalid";

  const Device dev = x0.device();
  const DType dt = x0.dtype();
  const Shape zs{n, channels, h, w};
  std::vector<Tensor> parts;
  parts.reserve(features.size());
  for (const Tensor& f : features) parts.push_back(sample_dense(f) ? f.detach() : f.contiguous().detach());
  // The backends always receive a scale and a shift; without running buffers the update goes to scratch.
  const Tensor bw = bn_weight.defined() ? bn_weight.contiguous() : Tensor::full({channels}, 1.0, dt, dev);
  const Tensor bb = bn_bias.defined() ? bn_bias.contiguous() : Tensor::full({channels}, 0.0, dt, dev);
  Tensor rm = running_mean.defined() ? running_mean : Tensor::full({channels}, 0.0, dt, dev);
  Tensor rv = running_var.defined() ? running_var : Tensor::full({channels}, 1.0, dt, dev);
  const Tensor cw = conv_weight.contiguous();
  const Conv2dParams p{};

  Tensor mean = new_output({channels}, dt, dev), invstd = new_output({channels}, dt, dev);
  Tensor scale = new_output({channels}, dt, dev);
  Tensor out = new_output({n, cw.size(0), h, w}, dt, dev);
  {
    Tensor z = new_output(zs, dt, dev);  // freed before the op returns
    TTQ_BACKEND(dev, batch_norm_relu_forward_train)
    (parts, bw, bb, rm, rv, momentum, eps, z, mean, invstd, scale);
    TTQ_BACKEND(dev, conv2d_forward)(z, cw, Tensor(), p, out);
  }

  std::vector<const Tensor*> inputs;
  inputs.reserve(features.size() + 3);
  for (const Tensor& f : features) inputs.push_back(&f);
  inputs.push_back(&bn_weight);
  inputs.push_back(&bn_bias);
  inputs.push_back(&conv_weight);
  bool need_bn = false;  // any gradient below the conv's input: every part, bn_weight, bn_bias
  for (size_t i = 0; i + 1 < inputs.size(); ++i)
    need_bn = need_bn || autograd::any_requires_grad({inputs[i]});
  const bool need_cw = autograd::any_requires_grad({&conv_weight});
  if (!need_bn && !need_cw) return out;

  // Saved: the feature maps (views of tensors the dense block keeps anyway), the
  // parameters and three [C] vectors; z and the concatenation are recomputed.
  auto backward = [parts = std::move(parts), bw = bw.detach(), bb = bb.detach(), cw = cw.detach(), mean,
                   invstd, scale, zs, p, need_bn, need_cw, has_w = bn_weight.defined(),
                   has_b = bn_bias.defined()](const std::vector<Tensor>& grads) {
    const Tensor g = grads[0].contiguous();
    const Device dev = g.device();
    const DType dt = g.dtype();
    std::vector<Tensor> result(parts.size() + 3);
    Tensor z = new_output(zs, dt, dev);
    TTQ_BACKEND(dev, batch_norm_relu_recompute)(parts, mean, scale, bb, z);
    if (need_cw) {
      Tensor gw = new_output(cw.shape(), dt, dev);
      Tensor no_bias;
      TTQ_BACKEND(dev, conv2d_backward_filter)(g, z, p, gw, no_bias);
      result.back() = gw;
    }
    if (need_bn) {
      Tensor gz = new_output(zs, dt, dev);
      TTQ_BACKEND(dev, conv2d_backward_data)(g, cw, p, gz);
      std::vector<Tensor> gparts;
      gparts.reserve(parts.size());
      for (const Tensor& f : parts) gparts.push_back(new_output(f.shape(), dt, dev));
      Tensor gbw = new_output({zs[1]}, dt, dev), gbb = new_output({zs[1]}, dt, dev);
      TTQ_BACKEND(dev, batch_norm_relu_backward)(gz, z, parts, bw, mean, invstd, gparts, gbw, gbb);
      for (size_t i = 0; i < parts.size(); ++i) result[i] = std::move(gparts[i]);
      if (has_w) result[parts.size()] = gbw;
      if (has_b) result[parts.size() + 1] = gbb;
    }
    return result;
  };
  autograd::record("dense_bottleneck", inputs, {&out}, std::move(backward));
  return out;
}

}  // namespace ttq::ops
