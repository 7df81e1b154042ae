// The seed's SqueezeNet variant as a graph builder (see models/architectures.h).
// Weights: tests/fixtures/seed. Tests: tests/test_models.cpp, tests/test_seed_parity.cpp.
#include "models/architectures.h"
#include "models/model.h"

namespace ttq::models {

namespace {

// Fire(in; squeeze, e1 + e3[, residual]), pre-activation: each conv reads
// relu(bn(.)) of its input; out = concat(expand1x1, expand3x3) (+ x when residual).
int fire(Graph& g, int x, const std::string& name, int64_t squeeze, int64_t e1, int64_t e3, bool residual) {
  int s = g.relu(g.batch_norm(x, name + ".squeeze_bn"), name + ".squeeze_relu");
  s = g.conv(s, name + ".squeeze", squeeze, 1);
  int a = g.relu(g.batch_norm(s, name + ".expand1x1_bn"), name + ".expand1x1_relu");
  a = g.conv(a, name + ".expand1x1", e1, 1);
  int b = g.relu(g.batch_norm(s, name + ".expand3x3_bn"), name + ".expand3x3_relu");
  b = g.conv(b, name + ".expand3x3", e3, 3, 1, 1);
  const int out = g.concat({a, b}, name);
  return residual ? g.add(out, x, name + ".residual") : out;
}

}  // namespace

Graph squeezenet_graph(const ModelConfig& config) {
  const double drop = config.dropout < 0 ? 0.6 : config.dropout;
  Graph g("squeezenet", config.in_channels);
  int x = g.conv(0, "features.0", 64, 3, 1, 1);
  x = g.relu(g.batch_norm(x, "features.1"), "features.2");
  x = g.max_pool(x, 3, 2, 0, true);  // features.3
  x = fire(g, x, "features.4", 16, 64, 64, false);
  x = fire(g, x, "features.5", 16, 64, 64, true);
  x = g.max_pool(x, 3, 2, 0, true);  // features.6
  x = fire(g, x, "features.7", 32, 128, 128, false);
  x = fire(g, x, "features.8", 32, 128, 128, true);
  x = g.max_pool(x, 3, 2, 0, true);  // features.9
  x = fire(g, x, "features.10", 48, 192, 192, false);
  x = fire(g, x, "features.11", 48, 192, 192, true);
  x = fire(g, x, "features.12", 64, 256, 256, false);
  x = fire(g, x, "features.13", 64, 256, 256, true);
  if (drop > 0) x = g.dropout(x, drop, "classifier.0");
  x = g.conv(x, "classifier.1", config.num_classes, 1, 1, 0, /*bias=*/true);
  x = g.relu(x, "classifier.2");
  g.set_output(g.global_avg_pool(x));  // classifier.3
  return g;
}

std::vector<std::pair<std::string, GraphBuilder>> builtin_architectures() {
  std::vector<std::pair<std::string, GraphBuilder>> out = {
      {"small_densenet", [](const ModelConfig& c) { return densenet_graph(small_densenet_spec(), c); }},
      {"squeezenet", squeezenet_graph},
      {"densenet121", [](const ModelConfig& c) { return densenet_graph(densenet121_spec(), c); }}};
  for (auto& a : torchvision_architectures()) out.push_back(std::move(a));
  return out;
}

}  // namespace ttq::models
