// torchvision's ResNet-18, ResNet-34, DenseNet-121 and SqueezeNet 1.1 as graph builders
// (see models/architectures.h), with torchvision's module names, order and
// shapes, so that a torchvision state dict loads with no mapping. Tests: names,
// counts, the TTQ rule and packing in tests/test_torchvision.cpp; logits against
// torchvision's own modules (weights and logits exported by
// tests/torchvision/export_torchvision.py) in tests/test_torchvision_parity.cpp.
#include "models/architectures.h"
#include "models/model.h"

namespace ttq::models {

namespace {

// torchvision.models.resnet.BasicBlock: conv1 (3x3, stride) - bn1 - relu - conv2
// (3x3) - bn2, plus the identity or, when the stride or the width changes,
// downsample.0 (1x1, stride) - downsample.1 (BN); then ReLU.
int basic_block(Graph& g, int x, const std::string& name, int64_t planes, int stride) {
  int h =
      g.relu(g.batch_norm(g.conv(x, name + ".conv1", planes, 3, stride, 1), name + ".bn1"), name + ".relu");
  h = g.batch_norm(g.conv(h, name + ".conv2", planes, 3, 1, 1), name + ".bn2");
  int shortcut = x;
  if (stride != 1 || g.node(x).channels != planes)
    shortcut = g.batch_norm(g.conv(x, name + ".downsample.0", planes, 1, stride, 0), name + ".downsample.1");
  return g.relu(g.add(h, shortcut, name + ".add"), name + ".relu_out");
}

// torchvision.models.squeezenet.Fire: squeeze (1x1) - ReLU, then expand1x1 (1x1)
// - ReLU and expand3x3 (3x3 pad 1) - ReLU, concatenated. Every conv has a bias.
int tv_fire(Graph& g, int x, const std::string& name, int64_t squeeze, int64_t e1, int64_t e3) {
  const int s = g.relu(g.conv(x, name + ".squeeze", squeeze, 1, 1, 0, true), name + ".squeeze_activation");
  const int a = g.relu(g.conv(s, name + ".expand1x1", e1, 1, 1, 0, true), name + ".expand1x1_activation");
  const int b = g.relu(g.conv(s, name + ".expand3x3", e3, 3, 1, 1, true), name + ".expand3x3_activation");
  return g.concat({a, b}, name);
}

}  // namespace

Graph resnet_graph(const std::string& arch, const std::vector<int>& blocks, const ModelConfig& config) {
  Graph g(arch, config.in_channels);
  int x = g.conv(0, "conv1", 64, 7, 2, 3);
  x = g.relu(g.batch_norm(x, "bn1"), "relu");
  x = g.max_pool(x, 3, 2, 1);  // maxpool
  int64_t planes = 64;
  for (size_t l = 0; l < blocks.size(); ++l, planes *= 2) {
    for (int b = 0; b < blocks[l]; ++b) {
      const int stride = l > 0 && b == 0 ? 2 : 1;
      x = basic_block(g, x, "layer" + std::to_string(l + 1) + "." + std::to_string(b), planes, stride);
    }
  }
  x = g.global_avg_pool(x);  // avgpool (adaptive, 1x1) and flatten
  g.set_output(g.linear(x, "fc", config.num_classes));
  return g;
}

DenseNetSpec tv_densenet121_spec() {
  DenseNetSpec s = densenet121_spec();
  s.arch = "tv_densenet121";
  s.stem_kernel = 7;
  s.stem_stride = 2;
  s.pool0 = true;
  s.classifier_dropout = 0;
  s.torchvision_names = true;
  return s;
}

Graph squeezenet1_1_graph(const ModelConfig& config) {
  const double drop = config.dropout < 0 ? 0.5 : config.dropout;
  Graph g("squeezenet1_1", config.in_channels);
  int x = g.conv(0, "features.0", 64, 3, 2, 0, /*bias=*/true);
  x = g.relu(x, "features.1");
  x = g.max_pool(x, 3, 2, 0, true);  // features.2
  x = tv_fire(g, x, "features.3", 16, 64, 64);
  x = tv_fire(g, x, "features.4", 16, 64, 64);
  x = g.max_pool(x, 3, 2, 0, true);  // features.5
  x = tv_fire(g, x, "features.6", 32, 128, 128);
  x = tv_fire(g, x, "features.7", 32, 128, 128);
  x = g.max_pool(x, 3, 2, 0, true);  // features.8
  x = tv_fire(g, x, "features.9", 48, 192, 192);
  x = tv_fire(g, x, "features.10", 48, 192, 192);
  x = tv_fire(g, x, "features.11", 64, 256, 256);
  x = tv_fire(g, x, "features.12", 64, 256, 256);
  if (drop > 0) x = g.dropout(x, drop, "classifier.0");
  x = g.conv(x, "classifier.1", config.num_classes, 1, 1, 0, /*bias=*/true);
  x = g.relu(x, "classifier.2");
  g.set_output(g.global_avg_pool(x));  // classifier.3 and flatten
  return g;
}

std::vector<std::pair<std::string, GraphBuilder>> torchvision_architectures() {
  return {{"resnet18",
           [](const ModelConfig& c) {
             return resnet_graph("resnet18", {2, 2, 2, 2}, c);
           }},
          {"resnet34",
           [](const ModelConfig& c) {
             return resnet_graph("resnet34", {3, 4, 6, 3}, c);
           }},
          {"tv_densenet121", [](const ModelConfig& c) { return densenet_graph(tv_densenet121_spec(), c); }},
          {"squeezenet1_1", squeezenet1_1_graph}};
}

}  // namespace ttq::models
