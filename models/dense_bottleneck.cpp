// The memory-efficient dense bottleneck (see models/dense_bottleneck.h).
#include "models/dense_bottleneck.h"

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/cpu/batchnorm_relu.h"
#include "engine/ops/ops.h"

namespace ttq::models {

namespace {

// Channel concatenation into a fresh tensor, no autograd.
Tensor concat_raw(const std::vector<Tensor>& xs, int64_t channels) {
  const Tensor& x0 = xs[0];
  Tensor out = Tensor::empty({x0.size(0), channels, x0.size(2), x0.size(3)}, x0.dtype(), x0.device());
  int64_t off = 0;
  for (const Tensor& x : xs) {
    Tensor slot = out.narrow(1, off, x.size(1));
    TTQ_BACKEND(x0.device(), copy)(x, slot);
    off += x.size(1);
  }
  return out;
}

// The CPU form of efficient_bottleneck (below): BN+ReLU read the feature maps in
// place through the fused kernels of engine/cpu/batchnorm_relu.h, so neither the
// forward nor the backward copies a concatenation; the backward recomputes the
// ReLU output from the saved mean and scale (no statistics pass) and writes each
// feature's gradient directly. Same arithmetic as the generic path, bit for bit.
Tensor efficient_bottleneck_cpu(const std::vector<Tensor>& features, nn::BatchNorm2d& norm, nn::Conv2d& conv,
                                const Tensor& weight, const Tensor& bwc, const Tensor& bbc) {
  const Device dev = features[0].device();
  const DType dt = features[0].dtype();
  const int64_t channels = norm.channels();
  const Tensor wc = weight.contiguous();
  const Conv2dParams p{};
  const Shape zs{features[0].size(0), channels, features[0].size(2), features[0].size(3)};
  std::vector<Tensor> parts;
  for (const Tensor& f : features) {
    const bool sample_dense = f.stride(3) == 1 && f.stride(2) == f.size(3) && f.stride(1) == f.size(2) * f.size(3);
    parts.push_back(sample_dense ? f.detach() : f.contiguous().detach());
  }

  Tensor mean = Tensor::empty({channels}, dt, dev), invstd = Tensor::empty({channels}, dt, dev);
  Tensor scale = Tensor::empty({channels}, dt, dev);
  Tensor out = Tensor::empty({zs[0], conv.out_channels(), zs[2], zs[3]}, dt, dev);
  {
    Tensor z = Tensor::empty(zs, dt, dev);
    cpu::batch_norm_relu_forward_train(parts, bwc, bbc, norm.running_mean(), norm.running_var(), norm.momentum(),
                                       norm.eps(), z, mean, invstd, scale);
    cpu::conv2d_forward(z, wc, Tensor(), p, out);
  }

  std::vector<const Tensor*> inputs;
  for (const Tensor& f : features) inputs.push_back(&f);
  inputs.push_back(&norm.weight());
  inputs.push_back(&norm.bias());
  inputs.push_back(&weight);
  bool needs_grad = false;
  for (const Tensor* t : inputs) needs_grad = needs_grad || autograd::any_requires_grad({t});
  if (!needs_grad) return out;

  auto backward = [parts, w = bwc.detach(), b = bbc.detach(), cw = wc.detach(), mean, invstd, scale, zs,
                   p](const std::vector<Tensor>& grads) {
    const Device dev = parts[0].device();
    const DType dt = parts[0].dtype();
    const int64_t channels = zs[1];
    const Tensor g = grads[0].contiguous();
    Tensor z = Tensor::empty(zs, dt, dev);
    cpu::batch_norm_relu_recompute(parts, mean, scale, b, z);
    Tensor gw = Tensor::empty(cw.shape(), dt, dev);
    Tensor no_bias;
    cpu::conv2d_backward_filter(g, z, p, gw, no_bias);
    Tensor gz = Tensor::empty(zs, dt, dev);
    cpu::conv2d_backward_data(g, cw, p, gz);
    std::vector<Tensor> result;
    for (const Tensor& f : parts) result.push_back(Tensor::empty(f.shape(), dt, dev));
    Tensor gbw = Tensor::empty({channels}, dt, dev), gbb = Tensor::empty({channels}, dt, dev);
    cpu::batch_norm_relu_backward(gz, z, parts, w, mean, invstd, result, gbw, gbb);
    result.push_back(gbw);
    result.push_back(gbb);
    result.push_back(gw);
    return result;
  };
  autograd::record("dense_bottleneck", inputs, {&out}, std::move(backward));
  return out;
}

// h = conv1(relu(norm1(concat(features)))) in training mode, where only the
// feature maps (which the block keeps anyway), the BN batch statistics and the
// parameters are saved: backward recomputes the concatenation, the BN output and
// the ReLU, so a dense layer holds O(growth) channels instead of O(its input).
// Recomputing with the same training-mode BN kernel (on scratch running stats,
// so the real ones are updated once) reproduces the forward bits exactly, and
// the backward uses the same backend kernels as ops::batch_norm2d / ops::relu /
// ops::conv2d: both paths give the same gradients.
}  // namespace

Tensor dense_bottleneck(const std::vector<Tensor>& features, nn::BatchNorm2d& norm, nn::Conv2d& conv) {
  const Device dev = features[0].device();
  const DType dt = features[0].dtype();
  const int64_t channels = norm.channels();
  int64_t total = 0;
  for (const Tensor& f : features) {
    TTQ_CHECK(f.dim() == 4 && f.size(0) == features[0].size(0) && f.size(2) == features[0].size(2) &&
              f.size(3) == features[0].size(3) && f.device() == dev && f.dtype() == dt)
        << "dense layer: feature maps must agree in N, H, W, device and dtype";
    total += f.size(1);
  }
  TTQ_CHECK(total == channels) << "dense layer: " << total << " input channels, norm.1 expects " << channels;
  TTQ_CHECK(features[0].size(0) * features[0].size(2) * features[0].size(3) > 1)
      << "dense layer: training BN needs more than one value per channel, got "
      << shape_str(features[0].shape());
  TTQ_CHECK(conv.kernel_size() == 1 && conv.stride() == 1 && conv.padding() == 0 && !conv.has_bias())
      << "dense layer: conv.1 must be a 1x1 conv without bias";

  // The effective weight is quantized when a quantizer is set; gradients flow
  // back through it to the latent weight.
  Tensor weight = conv.effective_weight();
  Tensor& bn_w = norm.weight();
  Tensor& bn_b = norm.bias();
  const Tensor wc = weight.contiguous(), bwc = bn_w.contiguous(), bbc = bn_b.contiguous();
  const double eps = norm.eps(), momentum = norm.momentum();
  const Conv2dParams p{};

  if (dev.is_cpu()) return efficient_bottleneck_cpu(features, norm, conv, weight, bwc, bbc);

  Tensor mean = Tensor::empty({channels}, dt, dev);
  Tensor invstd = Tensor::empty({channels}, dt, dev);
  Tensor out;
  {
    Tensor cat = concat_raw(features, channels);
    Tensor y = Tensor::empty(cat.shape(), dt, dev);
    TTQ_BACKEND(dev, batch_norm_forward_train)
    (cat, bwc, bbc, norm.running_mean(), norm.running_var(), momentum, eps, y, mean, invstd);
    cat = Tensor();
    Tensor z = Tensor::empty(y.shape(), dt, dev);
    TTQ_BACKEND(dev, relu_forward)(y, z);
    y = Tensor();
    const Shape& xs = z.shape();
    out = Tensor::empty({xs[0], conv.out_channels(), xs[2], xs[3]}, dt, dev);
    TTQ_BACKEND(dev, conv2d_forward)(z, wc, Tensor(), p, out);
  }

  std::vector<const Tensor*> inputs;
  for (const Tensor& f : features) inputs.push_back(&f);
  inputs.push_back(&bn_w);
  inputs.push_back(&bn_b);
  inputs.push_back(&weight);
  bool needs_grad = false;
  for (const Tensor* t : inputs) needs_grad = needs_grad || autograd::any_requires_grad({t});
  if (!needs_grad) return out;

  std::vector<Tensor> saved;
  for (const Tensor& f : features) saved.push_back(f.detach());
  auto backward = [saved, w = bwc.detach(), b = bbc.detach(), cw = wc.detach(), mean, invstd, eps, momentum,
                   channels, p](const std::vector<Tensor>& grads) {
    const Device dev = saved[0].device();
    const DType dt = saved[0].dtype();
    Tensor g = grads[0].contiguous();
    Tensor cat = concat_raw(saved, channels);
    Tensor z = Tensor::empty(cat.shape(), dt, dev);
    {
      Tensor y = Tensor::empty(cat.shape(), dt, dev);
      Tensor scratch_mean = Tensor::zeros({channels}, dt, dev),
             scratch_var = Tensor::ones({channels}, dt, dev);
      Tensor m2 = Tensor::empty({channels}, dt, dev), s2 = Tensor::empty({channels}, dt, dev);
      TTQ_BACKEND(dev, batch_norm_forward_train)
      (cat, w, b, scratch_mean, scratch_var, momentum, eps, y, m2, s2);
      TTQ_BACKEND(dev, relu_forward)(y, z);
    }
    Tensor gw = Tensor::empty(cw.shape(), dt, dev);
    Tensor no_bias;
    TTQ_BACKEND(dev, conv2d_backward_filter)(g, z, p, gw, no_bias);
    Tensor gz = Tensor::empty(cat.shape(), dt, dev);
    TTQ_BACKEND(dev, conv2d_backward_data)(g, cw, p, gz);
    Tensor gy = Tensor::empty(cat.shape(), dt, dev);
    TTQ_BACKEND(dev, relu_backward)(gz, z, gy);
    gz = Tensor();
    z = Tensor();
    Tensor gx = Tensor::empty(cat.shape(), dt, dev);
    Tensor gbw = Tensor::empty({channels}, dt, dev), gbb = Tensor::empty({channels}, dt, dev);
    TTQ_BACKEND(dev, batch_norm_backward)(gy, cat, w, mean, invstd, gx, gbw, gbb);
    std::vector<Tensor> result;
    int64_t off = 0;
    for (const Tensor& f : saved) {
      result.push_back(gx.narrow(1, off, f.size(1)).contiguous());
      off += f.size(1);
    }
    result.push_back(gbw);
    result.push_back(gbb);
    result.push_back(gw);
    return result;
  };
  autograd::record("dense_bottleneck", inputs, {&out}, std::move(backward));
  return out;
}


}  // namespace ttq::models
