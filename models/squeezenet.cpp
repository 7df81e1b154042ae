// The seed's SqueezeNet variant. Reference: tests/fixtures/seed/README.md
// ("Architectures"). Tests: tests/test_models.cpp, tests/test_seed_parity.cpp.
#include "models/squeezenet.h"

#include "engine/ops/ops.h"
#include "models/trace.h"

namespace ttq::models {

Fire::Fire(int64_t in_channels, int64_t squeeze, int64_t expand1x1, int64_t expand3x3, bool residual,
           Generator& gen)
    : m_residual(residual) {
  TTQ_CHECK(!residual || in_channels == expand1x1 + expand3x3)
      << "residual Fire needs in_channels == expand1x1 + expand3x3";
  m_squeeze_bn = register_module("squeeze_bn", std::make_shared<nn::BatchNorm2d>(in_channels));
  m_squeeze_relu = register_module("squeeze_relu", std::make_shared<nn::ReLU>());
  m_squeeze =
      register_module("squeeze", std::make_shared<nn::Conv2d>(in_channels, squeeze, 1, 1, 0, false, gen));
  m_expand1x1_bn = register_module("expand1x1_bn", std::make_shared<nn::BatchNorm2d>(squeeze));
  m_expand1x1_relu = register_module("expand1x1_relu", std::make_shared<nn::ReLU>());
  m_expand1x1 =
      register_module("expand1x1", std::make_shared<nn::Conv2d>(squeeze, expand1x1, 1, 1, 0, false, gen));
  m_expand3x3_bn = register_module("expand3x3_bn", std::make_shared<nn::BatchNorm2d>(squeeze));
  m_expand3x3_relu = register_module("expand3x3_relu", std::make_shared<nn::ReLU>());
  m_expand3x3 =
      register_module("expand3x3", std::make_shared<nn::Conv2d>(squeeze, expand3x3, 3, 1, 1, false, gen));
}

Tensor Fire::forward(const Tensor& x) {
  Tensor s = call(*m_squeeze, call(*m_squeeze_relu, call(*m_squeeze_bn, x)));
  Tensor a = call(*m_expand1x1, call(*m_expand1x1_relu, call(*m_expand1x1_bn, s)));
  Tensor b = call(*m_expand3x3, call(*m_expand3x3_relu, call(*m_expand3x3_bn, s)));
  Tensor out = ops::concat({a, b}, 1);
  return m_residual ? ops::add(out, x) : out;
}

SqueezeNet::SqueezeNet(const ModelConfig& config, Generator& gen) : Model("squeezenet", config) {
  const double drop = config.dropout < 0 ? 0.6 : config.dropout;
  auto features = register_module("features", std::make_shared<nn::Sequential>());
  auto add = [&](nn::ModulePtr m) {
    features->push_back(m);  // named by position: "0", "1", ...
    m_feature_layers.push_back(std::move(m));
  };
  add(std::make_shared<nn::Conv2d>(config.in_channels, 64, 3, 1, 1, false, gen));  // 0
  add(std::make_shared<nn::BatchNorm2d>(64));                                      // 1
  add(std::make_shared<nn::ReLU>());                                               // 2
  add(std::make_shared<nn::MaxPool2d>(3, 2, 0, true));                             // 3
  add(std::make_shared<Fire>(64, 16, 64, 64, false, gen));                         // 4
  add(std::make_shared<Fire>(128, 16, 64, 64, true, gen));                         // 5
  add(std::make_shared<nn::MaxPool2d>(3, 2, 0, true));                             // 6
  add(std::make_shared<Fire>(128, 32, 128, 128, false, gen));                      // 7
  add(std::make_shared<Fire>(256, 32, 128, 128, true, gen));                       // 8
  add(std::make_shared<nn::MaxPool2d>(3, 2, 0, true));                             // 9
  add(std::make_shared<Fire>(256, 48, 192, 192, false, gen));                      // 10
  add(std::make_shared<Fire>(384, 48, 192, 192, true, gen));                       // 11
  add(std::make_shared<Fire>(384, 64, 256, 256, false, gen));                      // 12
  add(std::make_shared<Fire>(512, 64, 256, 256, true, gen));                       // 13

  auto classifier = register_module("classifier", std::make_shared<nn::Sequential>());
  auto add_cls = [&](nn::ModulePtr m) {
    classifier->push_back(m);
    m_classifier_layers.push_back(std::move(m));
  };
  add_cls(std::make_shared<nn::Dropout>(drop));                                        // 0
  add_cls(std::make_shared<nn::Conv2d>(512, config.num_classes, 1, 1, 0, true, gen));  // 1
  add_cls(std::make_shared<nn::ReLU>());                                               // 2
  add_cls(std::make_shared<nn::GlobalAvgPool>());                                      // 3
}

Tensor SqueezeNet::forward(const Tensor& x) {
  TTQ_CHECK(x.dim() == 4 && x.size(1) == config().in_channels)
      << arch() << ": expected input [N, " << config().in_channels << ", H, W], got " << shape_str(x.shape());
  Tensor h = x;
  for (auto& layer : m_feature_layers) h = call(*layer, h);
  for (auto& layer : m_classifier_layers) h = call(*layer, h);
  return h;
}

int64_t SqueezeNet::min_input_size() const {
  for (int64_t size = 1;; ++size) {
    int64_t s = size;
    for (int i = 0; i < 3 && s >= 1; ++i) s = detail::pooled_size(s, 3, 2, 0, true);
    if (s >= 1) return size;
  }
}

}  // namespace ttq::models
