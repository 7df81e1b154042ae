// The built-in architectures, each a builder of a models::Graph (models/graph.h):
// the seed's small DenseNet and DenseNet-121 variant (models/densenet.cpp) and its
// SqueezeNet variant (models/squeezenet.cpp); torchvision's ResNet-18, ResNet-34,
// DenseNet-121 and SqueezeNet 1.1 under torchvision's names (models/torchvision.cpp).
// Parameter counts at 3x56x56 with 200 classes: 440264, 7151176 and 827784
// (tests/test_models.cpp); at 1000 classes the torchvision presets have
// torchvision's 11689512, 21797672, 7978856 and 1235496 (tests/test_torchvision.cpp). The
// registry (models/graph.cpp) starts with these; tests may register more.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "models/graph.h"

namespace ttq::models {

// DenseNet-BC: conv0 (3x3/1 or torchvision's 7x7/2) -> norm0 -> relu0 -> [pool0] -> dense blocks with
// transitions -> final norm -> ReLU -> global average pool -> [dropout] -> Linear.
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
  int stem_kernel = 3, stem_stride = 1;  // conv0 (padding stem_kernel / 2)
  // Dense layers' modules named norm1 / relu1 / conv1 / ... (torchvision) instead
  // of the seed's norm.1 / relu.1 / conv.1 / ...
  bool torchvision_names = false;
};
// conv0 3->48, max pool; blocks (8,12,10), growth 12, bn_size 4, dropout 0.25 after
// each dense layer and before the classifier; norm4.
DenseNetSpec small_densenet_spec();
// torchvision's DenseNet-121 (growth 32, blocks 6,12,24,16, 64 initial features,
// bn_size 4) with conv0 3x3 stride 1, no pool0, norm5, dropout 0.25 before the classifier.
DenseNetSpec densenet121_spec();

// The dense layer of block b, layer j reads concat(block input, new features of
// layers 1..j-1): norm.1 - relu.1 - conv.1 (1x1 -> bn_size*growth) - norm.2 -
// relu.2 - conv.2 (3x3 p1 -> growth) - [dropout]. The concatenation is a Concat
// node even for the first layer (one input), so every dense layer has the same
// shape: Concat -> BatchNorm2d -> ReLU -> 1x1 Conv2d, which the trainable model
// runs as the memory-efficient dense bottleneck. Names are the seed's
// (features.denseblockB.denselayerJ.norm.1, ...); torchvision's norm1 / conv1 /
// norm2 / conv2 spelling is accepted on import (Graph::canonical_name).
Graph densenet_graph(const DenseNetSpec& spec, const ModelConfig& config);

// The seed's SqueezeNet: conv 3x3 -> BN -> ReLU -> max pool 3/2 ceil, eight
// pre-activation Fire modules (features.4, 5, 7, 8, 10, 11, 12, 13; every second
// one residual) with max pools at features.6 and 9, then dropout -> classifier.1
// (1x1 conv with bias) -> ReLU -> global average pool.
Graph squeezenet_graph(const ModelConfig& config);

// torchvision.models.resnet with BasicBlocks (resnet18: blocks 2,2,2,2; resnet34:
// 3,4,6,3): conv1
// 7x7/2 - bn1 - relu - maxpool 3/2 pad 1 - layer1..4 (64, 128, 256, 512 planes;
// the first block of layers 2-4 strides 2 with a downsample.0 1x1 conv +
// downsample.1 BN shortcut) - global average pool - fc.
Graph resnet_graph(const std::string& arch, const std::vector<int>& blocks, const ModelConfig& config);
// torchvision's DenseNet-121: conv0 7x7/2 pad 3, pool0 max 3/2 pad 1, dense layers
// named norm1 / conv1 / norm2 / conv2, norm5, no dropout.
DenseNetSpec tv_densenet121_spec();
// torchvision's squeezenet1_1: features.0 conv 3x3/2 (bias) - ReLU - max pool 3/2
// ceil; Fires (squeeze, expand1x1, expand3x3, each with bias and a ReLU after it)
// at features.3, 4, 6, 7, 9-12, max pools (ceil) at features.5 and 8; then
// classifier.0 dropout 0.5 - classifier.1 conv 1x1 (bias) - ReLU - global average pool.
Graph squeezenet1_1_graph(const ModelConfig& config);
// resnet18, resnet34, tv_densenet121, squeezenet1_1.
std::vector<std::pair<std::string, GraphBuilder>> torchvision_architectures();

// The seed's three, then torchvision's.
std::vector<std::pair<std::string, GraphBuilder>> builtin_architectures();

}  // namespace ttq::models
