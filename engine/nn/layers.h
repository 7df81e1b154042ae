// Standard layers on top of nn::Module, their PyTorch-default initialisers and the
// global generator that initialisers and dropout draw from. The math is in
// engine/ops (ttq::ops); these classes own the parameters and pick train / eval
// behaviour. Implementation: engine/nn/layers.cpp. Tests: tests/test_nn.cpp,
// tests/test_train_small_cnn.cpp.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>

#include "engine/nn/module.h"
#include "engine/rng.h"

namespace ttq::nn {

// The generator layers use when none is given: initialisers at construction and
// Dropout masks in training. A trainer seeds it and saves / restores its state
// (seed(), offset(), set_state()) in checkpoints. Not thread-safe.
Generator& global_generator();
// ensures global_generator() == Generator(seed) (offset 0).
void manual_seed(uint64_t seed);

namespace init {

// PyTorch's _calculate_fan_in_and_fan_out for a weight [out, in, k...]:
// fan_in = in * prod(k), fan_out = out * prod(k). requires dim >= 2.
std::pair<int64_t, int64_t> fan_in_out(const Shape& shape);
// In place, any device: t ~ U[lo, hi) drawn from gen (numel counters).
void uniform(Tensor& t, Generator& gen, double lo, double hi);
void constant(Tensor& t, double value);
// PyTorch's kaiming_uniform_(t, a, mode='fan_in', nonlinearity='leaky_relu'):
// bound = sqrt(6 / ((1 + a^2) * fan_in)), t ~ U[-bound, bound).
// a = 0 gives sqrt(6 / fan_in) (the seed's conv init); a = sqrt(5) gives
// 1 / sqrt(fan_in) (PyTorch's default for Conv2d / Linear weights).
void kaiming_uniform(Tensor& t, Generator& gen, double a = 0);

}  // namespace init

// Hook through which a layer's weight is transformed before use (TTQ: latent
// weight -> ternary weight). quantize() must be differentiable through ttq::ops
// or record its own backward, so that gradients reach the latent weight.
struct WeightQuantizer {
  virtual ~WeightQuantizer() = default;
  virtual Tensor quantize(const Tensor& latent) = 0;
};

// y = conv2d(x, w, bias, stride, padding, dilation, groups) with w = quantizer ?
// quantizer->quantize(weight) : weight. Parameters: weight [out, in/groups, k, k]; bias
// [out] when `bias` (PyTorch's nn.Conv2d: out * (in/groups * k*k + bias) values). Init
// as PyTorch: weight kaiming_uniform(a = sqrt(5)), bias U(-1/sqrt(fan_in),
// 1/sqrt(fan_in)), fan_in = in/groups * k*k.
// requires groups >= 1 dividing in_channels and out_channels, dilation >= 1.
// (dilation and groups come last so that existing calls keep their meaning.)
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int kernel_size, int stride = 1, int padding = 0,
         bool bias = false, Generator& gen = global_generator(), int dilation = 1, int groups = 1);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Conv2d"; }
  std::string extra_repr() const override;

  Tensor& weight() { return *m_weight; }
  // Undefined when the layer has no bias.
  Tensor bias() const { return m_bias ? *m_bias : Tensor(); }
  bool has_bias() const { return m_bias != nullptr; }
  // The weight the forward pass uses (quantized when a quantizer is set).
  Tensor effective_weight();
  // Redraws weight and bias with PyTorch's default init.
  void reset_parameters(Generator& gen);

  int64_t in_channels() const { return m_in; }
  int64_t out_channels() const { return m_out; }
  int kernel_size() const { return m_kernel; }
  int stride() const { return m_stride; }
  int padding() const { return m_padding; }
  int dilation() const { return m_dilation; }
  int groups() const { return m_groups; }

  std::shared_ptr<WeightQuantizer> quantizer;

 private:
  int64_t m_in, m_out;
  int m_kernel, m_stride, m_padding, m_dilation, m_groups;
  Tensor* m_weight = nullptr;
  Tensor* m_bias = nullptr;
};

// BatchNorm over [N, C, H, W] per channel, PyTorch semantics: training normalises
// with batch statistics and updates running_mean / running_var (unbiased variance)
// with `momentum`; eval uses the running statistics. weight = 1, bias = 0,
// running_mean = 0, running_var = 1 at construction. No num_batches_tracked buffer
// (the seed's files have none; load_state_dict ignores one if present).
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t channels, double eps = 1e-5, double momentum = 0.1);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "BatchNorm2d"; }
  std::string extra_repr() const override;

  Tensor& weight() { return *m_weight; }
  Tensor& bias() { return *m_bias; }
  Tensor& running_mean() { return *m_running_mean; }
  Tensor& running_var() { return *m_running_var; }
  int64_t channels() const { return m_channels; }
  double eps() const { return m_eps; }
  double momentum() const { return m_momentum; }

 private:
  int64_t m_channels;
  double m_eps, m_momentum;
  Tensor *m_weight, *m_bias, *m_running_mean, *m_running_var;
};

// y = x w^T + b for x [N, in]; weight [out, in], bias [out]. Init as PyTorch's nn.Linear.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, Generator& gen = global_generator());
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Linear"; }
  std::string extra_repr() const override;

  Tensor& weight() { return *m_weight; }
  Tensor bias() const { return m_bias ? *m_bias : Tensor(); }
  bool has_bias() const { return m_bias != nullptr; }
  void reset_parameters(Generator& gen);
  int64_t in_features() const { return m_in; }
  int64_t out_features() const { return m_out; }

 private:
  int64_t m_in, m_out;
  Tensor* m_weight = nullptr;
  Tensor* m_bias = nullptr;
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "ReLU"; }
};

// stride 0 means stride = kernel_size (PyTorch's default).
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(int kernel_size, int stride = 0, int padding = 0, bool ceil_mode = false);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "MaxPool2d"; }
  std::string extra_repr() const override;

 private:
  int m_kernel, m_stride, m_padding;
  bool m_ceil;
};

// stride 0 means stride = kernel_size. Padding counts in the average (PyTorch's default).
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(int kernel_size, int stride = 0, int padding = 0, bool ceil_mode = false,
                     bool count_include_pad = true);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "AvgPool2d"; }
  std::string extra_repr() const override;

 private:
  int m_kernel, m_stride, m_padding;
  bool m_ceil, m_count_include_pad;
};

// [N, C, H, W] -> [N, C], the mean over H and W.
class GlobalAvgPool : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "GlobalAvgPool"; }
};

// [N, ...] -> [N, prod(...)].
class Flatten : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Flatten"; }
};

// Inverted dropout in training (x * mask / (1 - p), mask drawn from the generator,
// numel counters per call); identity in eval. The generator must outlive the layer.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5, Generator& gen = global_generator());
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Dropout"; }
  std::string extra_repr() const override;
  double p() const { return m_p; }

 private:
  double m_p;
  Generator* m_gen;
};

// Applies its children in order. Children added without a name are called
// "0", "1", ... by their position, as PyTorch's nn.Sequential.
class Sequential : public Module {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<ModulePtr> modules);
  Sequential(std::initializer_list<std::pair<std::string, ModulePtr>> named_modules);
  // Returns *this so calls can chain.
  Sequential& push_back(ModulePtr module);
  Sequential& push_back(const std::string& name, ModulePtr module);
  size_t size() const { return children().size(); }
  ModulePtr at(size_t i) const;
  template <class M>
  std::shared_ptr<M> at(size_t i) const {
    auto p = std::dynamic_pointer_cast<M>(at(i));
    TTQ_CHECK(p != nullptr) << "Sequential::at(" << i << "): child is a " << at(i)->name();
    return p;
  }
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Sequential"; }
};

}  // namespace ttq::nn
