// Standard layers, initialisers and the global generator. Contract: engine/nn/layers.h.
// Tests: tests/test_nn.cpp, tests/test_train_small_cnn.cpp.
#include "engine/nn/layers.h"

#include <cmath>
#include <sstream>

#include "engine/ops/ops.h"

namespace ttq::nn {

Generator& global_generator() {
  static Generator gen(0x5eed);
  return gen;
}

void manual_seed(uint64_t seed) { global_generator().set_state(seed, 0); }

namespace init {

std::pair<int64_t, int64_t> fan_in_out(const Shape& shape) {
  TTQ_CHECK(shape.size() >= 2) << "fan_in_out: needs at least 2 dimensions, got " << shape_str(shape);
  int64_t receptive = 1;
  for (size_t d = 2; d < shape.size(); ++d) receptive *= shape[d];
  return {shape[1] * receptive, shape[0] * receptive};
}

void uniform(Tensor& t, Generator& gen, double lo, double hi) {
  TTQ_CHECK(t.defined()) << "init::uniform: undefined tensor";
  t.copy_(Tensor::uniform(t.shape(), gen, lo, hi, t.dtype()));
}

void constant(Tensor& t, double value) {
  TTQ_CHECK(t.defined()) << "init::constant: undefined tensor";
  t.fill_(value);
}

void kaiming_uniform(Tensor& t, Generator& gen, double a) {
  const int64_t fan_in = fan_in_out(t.shape()).first;
  TTQ_CHECK(fan_in > 0) << "kaiming_uniform: zero fan-in for " << shape_str(t.shape());
  const double gain = std::sqrt(2.0 / (1.0 + a * a));
  const double bound = std::sqrt(3.0) * gain / std::sqrt(static_cast<double>(fan_in));
  uniform(t, gen, -bound, bound);
}

}  // namespace init

namespace {

const char* py_bool(bool b) { return b ? "True" : "False"; }

// PyTorch's default init for Conv2d / Linear (reset_parameters).
void default_init(Tensor& weight, Tensor* bias, Generator& gen) {
  init::kaiming_uniform(weight, gen, std::sqrt(5.0));
  if (bias != nullptr) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(init::fan_in_out(weight.shape()).first));
    init::uniform(*bias, gen, -bound, bound);
  }
}

}  // namespace

// ---- Conv2d -------------------------------------------------------------------

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int kernel_size, int stride, int padding, bool bias,
               Generator& gen, int dilation, int groups)
    : m_in(in_channels),
      m_out(out_channels),
      m_kernel(kernel_size),
      m_stride(stride),
      m_padding(padding),
      m_dilation(dilation),
      m_groups(groups) {
  TTQ_CHECK(in_channels > 0 && out_channels > 0 && kernel_size > 0 && stride > 0 && padding >= 0 &&
            dilation > 0 && groups > 0 && in_channels % groups == 0 && out_channels % groups == 0)
      << "Conv2d(" << in_channels << ", " << out_channels << ", kernel " << kernel_size << ", stride "
      << stride << ", padding " << padding << ", dilation " << dilation << ", groups " << groups
      << "): invalid configuration";
  m_weight = &register_parameter(
      "weight", Tensor::empty({out_channels, in_channels / groups, kernel_size, kernel_size}));
  if (bias) m_bias = &register_parameter("bias", Tensor::empty({out_channels}));
  reset_parameters(gen);
}

void Conv2d::reset_parameters(Generator& gen) { default_init(*m_weight, m_bias, gen); }

Tensor Conv2d::effective_weight() { return quantizer ? quantizer->quantize(*m_weight) : *m_weight; }

Tensor Conv2d::forward(const Tensor& x) {
  return ops::conv2d(x, effective_weight(), bias(), m_stride, m_padding, m_dilation, m_groups);
}

std::string Conv2d::extra_repr() const {
  std::ostringstream os;
  os << m_in << ", " << m_out << ", kernel_size=(" << m_kernel << ", " << m_kernel << "), stride=("
     << m_stride << ", " << m_stride << ")";
  if (m_padding != 0) os << ", padding=(" << m_padding << ", " << m_padding << ")";
  if (m_dilation != 1) os << ", dilation=(" << m_dilation << ", " << m_dilation << ")";
  if (m_groups != 1) os << ", groups=" << m_groups;
  if (!m_bias) os << ", bias=False";
  if (quantizer) os << ", quantized";
  return os.str();
}

// ---- BatchNorm2d --------------------------------------------------------------

BatchNorm2d::BatchNorm2d(int64_t channels, double eps, double momentum)
    : m_channels(channels), m_eps(eps), m_momentum(momentum) {
  TTQ_CHECK(channels > 0 && eps > 0 && momentum >= 0 && momentum <= 1)
      << "BatchNorm2d(" << channels << ", eps=" << eps << ", momentum=" << momentum
      << "): invalid configuration";
  m_weight = &register_parameter("weight", Tensor::ones({channels}));
  m_bias = &register_parameter("bias", Tensor::zeros({channels}));
  m_running_mean = &register_buffer("running_mean", Tensor::zeros({channels}));
  m_running_var = &register_buffer("running_var", Tensor::ones({channels}));
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  return ops::batch_norm2d(x, *m_weight, *m_bias, *m_running_mean, *m_running_var, is_training(), m_momentum,
                           m_eps);
}

std::string BatchNorm2d::extra_repr() const {
  std::ostringstream os;
  os << m_channels << ", eps=" << m_eps << ", momentum=" << m_momentum;
  return os.str();
}

// ---- Linear -------------------------------------------------------------------

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen)
    : m_in(in_features), m_out(out_features) {
  TTQ_CHECK(in_features > 0 && out_features > 0)
      << "Linear(" << in_features << ", " << out_features << "): invalid configuration";
  m_weight = &register_parameter("weight", Tensor::empty({out_features, in_features}));
  if (bias) m_bias = &register_parameter("bias", Tensor::empty({out_features}));
  reset_parameters(gen);
}

void Linear::reset_parameters(Generator& gen) { default_init(*m_weight, m_bias, gen); }

Tensor Linear::forward(const Tensor& x) { return ops::linear(x, *m_weight, bias()); }

std::string Linear::extra_repr() const {
  std::ostringstream os;
  os << "in_features=" << m_in << ", out_features=" << m_out << ", bias=" << py_bool(m_bias != nullptr);
  return os.str();
}

// ---- stateless layers -----------------------------------------------------------

Tensor ReLU::forward(const Tensor& x) { return ops::relu(x); }

MaxPool2d::MaxPool2d(int kernel_size, int stride, int padding, bool ceil_mode)
    : m_kernel(kernel_size),
      m_stride(stride == 0 ? kernel_size : stride),
      m_padding(padding),
      m_ceil(ceil_mode) {
  TTQ_CHECK(kernel_size > 0 && m_stride > 0 && padding >= 0 && 2 * padding <= kernel_size)
      << "MaxPool2d(" << kernel_size << ", " << stride << ", " << padding << "): invalid configuration";
}

Tensor MaxPool2d::forward(const Tensor& x) {
  return ops::max_pool2d(x, m_kernel, m_stride, m_padding, m_ceil);
}

std::string MaxPool2d::extra_repr() const {
  std::ostringstream os;
  os << "kernel_size=" << m_kernel << ", stride=" << m_stride << ", padding=" << m_padding
     << ", ceil_mode=" << py_bool(m_ceil);
  return os.str();
}

AvgPool2d::AvgPool2d(int kernel_size, int stride, int padding, bool ceil_mode, bool count_include_pad)
    : m_kernel(kernel_size),
      m_stride(stride == 0 ? kernel_size : stride),
      m_padding(padding),
      m_ceil(ceil_mode),
      m_count_include_pad(count_include_pad) {
  TTQ_CHECK(kernel_size > 0 && m_stride > 0 && padding >= 0 && 2 * padding <= kernel_size)
      << "AvgPool2d(" << kernel_size << ", " << stride << ", " << padding << "): invalid configuration";
}

Tensor AvgPool2d::forward(const Tensor& x) {
  return ops::avg_pool2d(x, m_kernel, m_stride, m_padding, m_ceil, m_count_include_pad);
}

std::string AvgPool2d::extra_repr() const {
  std::ostringstream os;
  os << "kernel_size=" << m_kernel << ", stride=" << m_stride << ", padding=" << m_padding;
  if (m_ceil) os << ", ceil_mode=True";
  if (!m_count_include_pad) os << ", count_include_pad=False";
  return os.str();
}

Tensor GlobalAvgPool::forward(const Tensor& x) { return ops::global_avg_pool2d(x); }

Tensor Flatten::forward(const Tensor& x) { return ops::flatten(x); }

Dropout::Dropout(double p, Generator& gen) : m_p(p), m_gen(&gen) {
  TTQ_CHECK(p >= 0 && p < 1) << "Dropout(" << p << "): p must be in [0, 1)";
}

Tensor Dropout::forward(const Tensor& x) { return ops::dropout(x, m_p, is_training(), *m_gen); }

std::string Dropout::extra_repr() const {
  std::ostringstream os;
  os << "p=" << m_p;
  return os.str();
}

// ---- Sequential -----------------------------------------------------------------

Sequential::Sequential(std::initializer_list<ModulePtr> modules) {
  for (const auto& m : modules) push_back(m);
}

Sequential::Sequential(std::initializer_list<std::pair<std::string, ModulePtr>> named_modules) {
  for (const auto& [name, m] : named_modules) push_back(name, m);
}

Sequential& Sequential::push_back(ModulePtr module) {
  return push_back(std::to_string(size()), std::move(module));
}

Sequential& Sequential::push_back(const std::string& name, ModulePtr module) {
  add_child(name, std::move(module));
  return *this;
}

ModulePtr Sequential::at(size_t i) const {
  TTQ_CHECK(i < size()) << "Sequential::at(" << i << "): only " << size() << " children";
  return children()[i].second;
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (const auto& [name, m] : children()) y = m->forward(y);
  return y;
}

}  // namespace ttq::nn
