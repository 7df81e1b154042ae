// DenseNet-BC graph builders: the seed's small DenseNet and its DenseNet-121
// variant (see models/architectures.h). Weights: tests/fixtures/seed (the small
// DenseNet). Tests: tests/test_models.cpp, tests/test_seed_parity.cpp.
#include "engine/error.h"
#include "models/architectures.h"
#include "models/model.h"

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

Graph densenet_graph(const DenseNetSpec& s, const ModelConfig& config) {
  // config.dropout (>= 0) replaces every dropout the architecture has.
  const double layer_drop = s.layer_dropout > 0 && config.dropout >= 0 ? config.dropout : s.layer_dropout;
  const double cls_drop = config.dropout >= 0 ? config.dropout : s.classifier_dropout;
  Graph g(s.arch, config.in_channels);
  // The dense layers' modules: the seed's "norm.1" (torchvision's "norm1" accepted
  // on import) or torchvision's own "norm1".
  auto layer_part = [&](const char* seg, const char* idx) {
    return std::string(seg) + (s.torchvision_names ? "" : ".") + idx;
  };
  if (!s.torchvision_names) {
    for (const char* seg : {"norm", "relu", "conv"}) {
      for (const char* idx : {"1", "2"})
        g.add_alias({"denselayer", std::string(seg) + idx, std::string(seg) + "." + idx});
    }
  }
  int x = g.conv(0, "features.conv0", s.init_features, s.stem_kernel, s.stem_stride, s.stem_kernel / 2);
  x = g.batch_norm(x, "features.norm0");
  x = g.relu(x, "features.relu0");
  if (s.pool0) x = g.max_pool(x, 3, 2, 1);  // features.pool0
  int64_t c = s.init_features;
  for (size_t b = 0; b < s.blocks.size(); ++b) {
    const std::string block = "features.denseblock" + std::to_string(b + 1);
    std::vector<int> features = {x};
    for (int j = 0; j < s.blocks[b]; ++j) {
      const std::string layer = block + ".denselayer" + std::to_string(j + 1);
      int h = g.concat(features, layer + ".cat");
      h = g.relu(g.batch_norm(h, layer + "." + layer_part("norm", "1")),
                 layer + "." + layer_part("relu", "1"));
      h = g.conv(h, layer + "." + layer_part("conv", "1"), s.bn_size * s.growth, 1);
      h = g.relu(g.batch_norm(h, layer + "." + layer_part("norm", "2")),
                 layer + "." + layer_part("relu", "2"));
      h = g.conv(h, layer + "." + layer_part("conv", "2"), s.growth, 3, 1, 1);
      if (layer_drop > 0) h = g.dropout(h, layer_drop, layer + ".dropout");
      features.push_back(h);
    }
    x = g.concat(features, block);
    c += s.blocks[b] * s.growth;
    if (b + 1 < s.blocks.size()) {
      const std::string t = "features.transition" + std::to_string(b + 1);
      x = g.relu(g.batch_norm(x, t + ".norm"), t + ".relu");
      x = g.conv(x, t + ".conv", c / 2, 1);
      x = g.avg_pool(x, 2, 2);  // .pool
      c /= 2;
    }
  }
  x = g.batch_norm(x, "features." + s.final_norm);
  x = g.global_avg_pool(g.relu(x, "relu"));
  if (cls_drop > 0) x = g.dropout(x, cls_drop, "dropout");
  g.set_output(g.linear(x, "classifier", config.num_classes));
  return g;
}

}  // namespace ttq::models
