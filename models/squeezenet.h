// The seed's SqueezeNet variant (docs/architecture.md, tests/fixtures/seed/README.md):
// pre-activation Fire modules with BN, residual connections on every second Fire,
// and a 1x1-conv classifier followed by ReLU and global average pooling.
// State-dict names: features.0 / features.1 / features.N.squeeze_bn ... / classifier.1.
// Tests: tests/test_models.cpp, tests/test_seed_parity.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/model.h"

namespace ttq::models {

// Fire(in; s, e1+e3[, residual]) on x: s = squeeze(relu(squeeze_bn(x))),
// a = expand1x1(relu(expand1x1_bn(s))), b = expand3x3(relu(expand3x3_bn(s))),
// out = concat(a, b) (+ x when residual). Convs without bias.
class Fire : public nn::Module {
 public:
  Fire(int64_t in_channels, int64_t squeeze, int64_t expand1x1, int64_t expand3x3, bool residual,
       Generator& gen);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Fire"; }
  std::string extra_repr() const override { return m_residual ? "residual=True" : ""; }

 private:
  bool m_residual;
  std::shared_ptr<nn::BatchNorm2d> m_squeeze_bn, m_expand1x1_bn, m_expand3x3_bn;
  std::shared_ptr<nn::Conv2d> m_squeeze, m_expand1x1, m_expand3x3;
  std::shared_ptr<nn::ReLU> m_squeeze_relu, m_expand1x1_relu, m_expand3x3_relu;
};

class SqueezeNet : public Model {
 public:
  SqueezeNet(const ModelConfig& config, Generator& gen);
  Tensor forward(const Tensor& x) override;
  std::string first_conv_name() const override { return "features.0"; }
  std::string classifier_name() const override { return "classifier.1"; }
  int64_t min_input_size() const override;

 private:
  std::vector<nn::ModulePtr> m_feature_layers;
  std::vector<nn::ModulePtr> m_classifier_layers;
};

}  // namespace ttq::models
