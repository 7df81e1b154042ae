// DenseNet-BC (small and 121 variants); the memory-efficient dense layer runs
// its bottleneck through ops::dense_bottleneck.
// Reference: PyTorch's torchvision DenseNet and the seed's small DenseNet (see
// tests/fixtures/seed/README.md). Tests: tests/test_models.cpp, tests/test_seed_parity.cpp.
#include "models/densenet.h"

#include "engine/ops/ops.h"
#include "models/trace.h"

namespace ttq::models {

DenseNetSpec small_densenet_spec() {
  DenseNetSpec s;
  s.arch = "small_densenet";
  s.init_features = 48;
  s.growth = 12;
  s.bn_size = 4;
  s.blocks = {8, 12, 10};
  s.pool0 = true;
  s.layer_dropout = 0.25;
  s.classifier_dropout = 0.25;
  s.final_norm = "norm4";
  return s;
}

DenseNetSpec densenet121_spec() {
  DenseNetSpec s;
  s.arch = "densenet121";
  s.init_features = 64;
  s.growth = 32;
  s.bn_size = 4;
  s.blocks = {6, 12, 24, 16};
  s.pool0 = false;
  s.layer_dropout = 0;
  s.classifier_dropout = 0.25;
  s.final_norm = "norm5";
  return s;
}

namespace {

double pick(double configured, double fallback) { return configured < 0 ? fallback : configured; }

}  // namespace

DenseLayer::DenseLayer(int64_t in_channels, int64_t growth, int64_t bn_size, double dropout,
                       bool memory_efficient, Generator& gen)
    : m_efficient(memory_efficient) {
  m_norm1 = register_module("norm.1", std::make_shared<nn::BatchNorm2d>(in_channels));
  m_relu1 = register_module("relu.1", std::make_shared<nn::ReLU>());
  m_conv1 = register_module("conv.1",
                            std::make_shared<nn::Conv2d>(in_channels, bn_size * growth, 1, 1, 0, false, gen));
  m_norm2 = register_module("norm.2", std::make_shared<nn::BatchNorm2d>(bn_size * growth));
  m_relu2 = register_module("relu.2", std::make_shared<nn::ReLU>());
  m_conv2 =
      register_module("conv.2", std::make_shared<nn::Conv2d>(bn_size * growth, growth, 3, 1, 1, false, gen));
  if (dropout > 0) m_dropout = register_module("dropout", std::make_shared<nn::Dropout>(dropout));
}

Tensor DenseLayer::forward_features(const std::vector<Tensor>& features) {
  TTQ_CHECK(!features.empty()) << "dense layer without input";
  Tensor h;
  if (m_efficient && is_training()) {
    // Saves only the feature maps (kept by the block anyway) and the BN
    // statistics: a layer holds O(growth) channels instead of O(its input).
    // The effective weight is quantized when a quantizer is set; gradients flow
    // back through it to the latent weight.
    h = ops::dense_bottleneck(features, m_norm1->weight(), m_norm1->bias(), m_norm1->running_mean(),
                              m_norm1->running_var(), m_norm1->momentum(), m_norm1->eps(),
                              m_conv1->effective_weight());
  } else {
    Tensor cat = features.size() == 1 ? features[0] : ops::concat(features, 1);
    h = call(*m_conv1, call(*m_relu1, call(*m_norm1, cat)));
  }
  h = call(*m_conv2, call(*m_relu2, call(*m_norm2, h)));
  if (m_dropout) h = call(*m_dropout, h);
  return h;
}

DenseBlock::DenseBlock(int num_layers, int64_t in_channels, int64_t growth, int64_t bn_size, double dropout,
                       bool memory_efficient, Generator& gen) {
  for (int i = 0; i < num_layers; ++i) {
    m_layers.push_back(register_module("denselayer" + std::to_string(i + 1),
                                       std::make_shared<DenseLayer>(in_channels + i * growth, growth, bn_size,
                                                                    dropout, memory_efficient, gen)));
  }
}

Tensor DenseBlock::forward(const Tensor& x) {
  std::vector<Tensor> features{x};
  features.reserve(m_layers.size() + 1);
  for (auto& layer : m_layers) features.push_back(layer->forward_features(features));
  return ops::concat(features, 1);
}

Transition::Transition(int64_t in_channels, int64_t out_channels, Generator& gen) {
  m_norm = register_module("norm", std::make_shared<nn::BatchNorm2d>(in_channels));
  m_relu = register_module("relu", std::make_shared<nn::ReLU>());
  m_conv =
      register_module("conv", std::make_shared<nn::Conv2d>(in_channels, out_channels, 1, 1, 0, false, gen));
  m_pool = register_module("pool", std::make_shared<nn::AvgPool2d>(2, 2));
}

Tensor Transition::forward(const Tensor& x) {
  return call(*m_pool, call(*m_conv, call(*m_relu, call(*m_norm, x))));
}

DenseNet::DenseNet(const DenseNetSpec& spec, const ModelConfig& config, Generator& gen)
    : Model(spec.arch, config), m_spec(spec) {
  const double layer_drop = m_spec.layer_dropout > 0 ? pick(config.dropout, m_spec.layer_dropout) : 0.0;
  const double cls_drop = pick(config.dropout, m_spec.classifier_dropout);
  auto features = register_module("features", std::make_shared<nn::Sequential>());
  auto add = [&](const std::string& name, nn::ModulePtr m) {
    features->push_back(name, m);
    m_feature_layers.push_back(std::move(m));
  };
  add("conv0", std::make_shared<nn::Conv2d>(config.in_channels, m_spec.init_features, 3, 1, 1, false, gen));
  add("norm0", std::make_shared<nn::BatchNorm2d>(m_spec.init_features));
  add("relu0", std::make_shared<nn::ReLU>());
  if (m_spec.pool0) add("pool0", std::make_shared<nn::MaxPool2d>(3, 2, 1));
  int64_t c = m_spec.init_features;
  for (size_t i = 0; i < m_spec.blocks.size(); ++i) {
    const std::string idx = std::to_string(i + 1);
    add("denseblock" + idx, std::make_shared<DenseBlock>(m_spec.blocks[i], c, m_spec.growth, m_spec.bn_size,
                                                         layer_drop, config.memory_efficient, gen));
    c += m_spec.blocks[i] * m_spec.growth;
    if (i + 1 < m_spec.blocks.size()) {
      add("transition" + idx, std::make_shared<Transition>(c, c / 2, gen));
      c /= 2;
    }
  }
  add(m_spec.final_norm, std::make_shared<nn::BatchNorm2d>(c));
  m_relu = register_module("relu", std::make_shared<nn::ReLU>());
  m_pool = register_module("pool", std::make_shared<nn::GlobalAvgPool>());
  if (cls_drop > 0) m_dropout = register_module("dropout", std::make_shared<nn::Dropout>(cls_drop));
  m_classifier =
      register_module("classifier", std::make_shared<nn::Linear>(c, config.num_classes, true, gen));
}

Tensor DenseNet::forward(const Tensor& x) {
  TTQ_CHECK(x.dim() == 4 && x.size(1) == config().in_channels)
      << arch() << ": expected input [N, " << config().in_channels << ", H, W], got " << shape_str(x.shape());
  Tensor h = x;
  for (auto& layer : m_feature_layers) h = call(*layer, h);
  h = call(*m_pool, call(*m_relu, h));
  if (m_dropout) h = call(*m_dropout, h);
  return call(*m_classifier, h);
}

int64_t DenseNet::min_input_size() const {
  for (int64_t size = 1;; ++size) {
    int64_t s = size;  // conv0 3x3/1 pad 1 keeps the size
    if (m_spec.pool0) s = detail::pooled_size(s, 3, 2, 1, false);
    for (size_t i = 0; i + 1 < m_spec.blocks.size() && s >= 1; ++i)
      s = detail::pooled_size(s, 2, 2, 0, false);
    if (s >= 1) return size;
  }
}

}  // namespace ttq::models
