// DenseNet-BC as in docs/architecture.md ("Models"): the seed's small DenseNet
// and its DenseNet-121 variant, with the seed's state-dict names
// (features.denseblockI.denselayerJ.norm.1 ...). The dense layer has a
// memory-efficient training path, ops::dense_bottleneck, that recomputes
// concat -> BN -> ReLU in backward (Pleiss et al. 2017, by recomputation). Tests:
// tests/test_models.cpp (both paths agree, parameter counts), tests/test_seed_parity.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/model.h"

namespace ttq::models {

struct DenseNetSpec {
  std::string arch;
  int64_t init_features = 64;
  int64_t growth = 32;
  int64_t bn_size = 4;
  std::vector<int> blocks;
  bool pool0 = false;             // max-pool 3/2 pad 1 after conv0 (small DenseNet)
  double layer_dropout = 0;       // after each dense layer
  double classifier_dropout = 0;  // before the classifier
  std::string final_norm = "norm5";
};

// conv0 3x3/1 3->48, norm0, ReLU, max-pool 3/2 p1; blocks (8,12,10), growth 12,
// bn_size 4, dropout 0.25 after each dense layer and before the classifier; norm4.
DenseNetSpec small_densenet_spec();
// torchvision's DenseNet-121 (growth 32, blocks 6,12,24,16, 64 initial features,
// bn_size 4) with conv0 3x3 stride 1, no pool0, norm5, dropout 0.25 before the classifier.
DenseNetSpec densenet121_spec();

// One dense layer: norm.1 - relu.1 - conv.1 (1x1, c -> bn_size*growth) - norm.2 -
// relu.2 - conv.2 (3x3 p1 -> growth) - dropout, applied to the concatenation of
// all previous feature maps of the block; returns the `growth` new channels.
class DenseLayer : public nn::Module {
 public:
  DenseLayer(int64_t in_channels, int64_t growth, int64_t bn_size, double dropout, bool memory_efficient,
             Generator& gen);
  // requires: features non-empty, [N, c_i, H, W] each, sum c_i = in_channels.
  Tensor forward_features(const std::vector<Tensor>& features);
  std::string name() const override { return "DenseLayer"; }

 private:
  bool m_efficient;
  std::shared_ptr<nn::BatchNorm2d> m_norm1, m_norm2;
  std::shared_ptr<nn::ReLU> m_relu1, m_relu2;
  std::shared_ptr<nn::Conv2d> m_conv1, m_conv2;
  std::shared_ptr<nn::Dropout> m_dropout;  // null when p == 0
};

class DenseBlock : public nn::Module {
 public:
  DenseBlock(int num_layers, int64_t in_channels, int64_t growth, int64_t bn_size, double dropout,
             bool memory_efficient, Generator& gen);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "DenseBlock"; }

 private:
  std::vector<std::shared_ptr<DenseLayer>> m_layers;
};

// norm - relu - conv (1x1, c -> c/2) - pool (avg 2/2).
class Transition : public nn::Module {
 public:
  Transition(int64_t in_channels, int64_t out_channels, Generator& gen);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Transition"; }

 private:
  std::shared_ptr<nn::BatchNorm2d> m_norm;
  std::shared_ptr<nn::ReLU> m_relu;
  std::shared_ptr<nn::Conv2d> m_conv;
  std::shared_ptr<nn::AvgPool2d> m_pool;
};

// features (conv0 ... final norm) - ReLU - global average pool - dropout - classifier (Linear).
class DenseNet : public Model {
 public:
  DenseNet(const DenseNetSpec& spec, const ModelConfig& config, Generator& gen);
  Tensor forward(const Tensor& x) override;
  std::string first_conv_name() const override { return "features.conv0"; }
  std::string classifier_name() const override { return "classifier"; }
  int64_t min_input_size() const override;
  const DenseNetSpec& spec() const { return m_spec; }

 private:
  DenseNetSpec m_spec;
  // Layers of `features` in order, applied one after another.
  std::vector<nn::ModulePtr> m_feature_layers;
  std::shared_ptr<nn::ReLU> m_relu;
  std::shared_ptr<nn::GlobalAvgPool> m_pool;
  std::shared_ptr<nn::Dropout> m_dropout;
  std::shared_ptr<nn::Linear> m_classifier;
};

}  // namespace ttq::models
