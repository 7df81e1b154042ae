// The model graph (models/graph.h): shape and channel inference, the TTQ rule on
// the built-in architectures, and a fourth architecture defined here and nowhere
// else — a small ResNet with residual adds, a strided shortcut and a grouped
// conv — that trains, TTQ-quantizes, packs and runs packed to its float model's
// logits with no architecture-specific code anywhere in the engine.
#include <cmath>
#include <set>

#include "engine/autograd.h"
#include "engine/ops/ops.h"
#include "engine/optim/optimizer.h"
#include "models/architectures.h"
#include "models/model.h"
#include "models/packed.h"
#include "models/ttq.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using models::Graph;
using models::NodeKind;

TEST(Graph, ChannelsShapesAndMinimumSize) {
  Graph g("toy", 3);
  int x = g.conv(0, "c1", 8, 3, 2, 1);
  x = g.relu(g.batch_norm(x, "bn1"));
  const int a = g.conv(x, "c2", 8, 3, 1, 1, false, /*groups=*/2);
  const int cat = g.concat({x, a});
  EXPECT_EQ(g.node(cat).channels, 16);
  int y = g.max_pool(cat, 3, 2, 0, /*ceil_mode=*/true);
  y = g.global_avg_pool(y);
  g.set_output(g.linear(y, "fc", 5));
  const auto s = g.infer_shapes({2, 3, 17, 9});
  EXPECT_EQ(s[1], (Shape{2, 8, 9, 5}));
  EXPECT_EQ(s[static_cast<size_t>(cat)], (Shape{2, 16, 9, 5}));
  EXPECT_EQ(s[static_cast<size_t>(cat) + 1], (Shape{2, 16, 4, 2}));  // ceil_mode as PyTorch
  EXPECT_EQ(s.back(), (Shape{2, 5}));
  // The pool needs 3x3 after the stride-2 conv: 5x5 inputs, and 4x4 fails.
  EXPECT_EQ(g.min_input_size(), 5);
  EXPECT_TRUE(g.accepts(5, 5));
  EXPECT_FALSE(g.accepts(4, 9));
  EXPECT_INPUT_ERROR_MENTIONS(g.infer_shapes({1, 3, 4, 4}), "too small");
  EXPECT_INPUT_ERROR_MENTIONS(g.infer_shapes({1, 2, 8, 8}), "not [N, 3, H, W]");
  // Parameters: c1 8*3*9, bn1 2*8, c2 8*4*9 (groups 2), fc 5*16 + 5.
  EXPECT_EQ(g.num_parameters(), 8 * 27 + 16 + 8 * 36 + 85);
  // Builders are code: a channel count that cannot split is an Error, not input.
  EXPECT_THROW(g.conv(x, "bad", 7, 3, 1, 1, false, 2), Error);
  EXPECT_THROW(g.add(x, cat), Error);
}

TEST(Graph, TtqRuleOnTheBuiltInArchitectures) {
  struct Case {
    std::string arch, first, classifier;
    size_t quantized;
  };
  for (const Case& c : {Case{"small_densenet", "features.conv0", "classifier", 62},
                        Case{"squeezenet", "features.0", "classifier.1", 24},
                        Case{"densenet121", "features.conv0", "classifier", 119}}) {
    const Graph g = models::build_graph(c.arch, models::ModelConfig{});
    ASSERT_EQ(g.first_layers().size(), 1u) << c.arch;
    EXPECT_EQ(g.node(g.first_layers()[0]).name, c.first);
    ASSERT_EQ(g.classifiers().size(), 1u) << c.arch;
    EXPECT_EQ(g.node(g.classifiers()[0]).name, c.classifier);
    EXPECT_EQ(g.quantizable_convs().size(), c.quantized) << c.arch;
    for (int i : g.quantizable_convs()) EXPECT_EQ(g.node(i).kind, NodeKind::Conv2d);
  }
}

TEST(Graph, ImportNamesFollowTheBuildersAliases) {
  const Graph g = models::build_graph("small_densenet", models::ModelConfig{});
  EXPECT_EQ(g.canonical_name("features.denseblock1.denselayer2.norm1.weight"),
            "features.denseblock1.denselayer2.norm.1.weight");
  EXPECT_EQ(g.canonical_name("features.denseblock1.denselayer2.conv2.weight"),
            "features.denseblock1.denselayer2.conv.2.weight");
  EXPECT_EQ(g.canonical_name("features.norm1.weight"), "features.norm1.weight");
  const Graph s = models::build_graph("squeezenet", models::ModelConfig{});
  EXPECT_EQ(s.canonical_name("features.4.squeeze.weight"), "features.4.squeeze.weight");
}

// ---- a fourth architecture, defined only here

// stem conv 3x3 -> BN -> ReLU; a basic block (conv, BN, ReLU, grouped conv, BN,
// + identity, ReLU); a downsampling block whose shortcut is a strided 1x1 conv +
// BN; global average pool; Linear.
Graph tiny_resnet(const models::ModelConfig& c) {
  Graph g("tiny_resnet", c.in_channels);
  int x = g.conv(0, "stem.conv", 8, 3, 1, 1);
  x = g.relu(g.batch_norm(x, "stem.bn"));
  {
    int h = g.relu(g.batch_norm(g.conv(x, "block1.conv1", 8, 3, 1, 1), "block1.bn1"));
    h = g.batch_norm(g.conv(h, "block1.conv2", 8, 3, 1, 1, false, /*groups=*/2), "block1.bn2");
    x = g.relu(g.add(h, x));
  }
  {
    int h = g.relu(g.batch_norm(g.conv(x, "block2.conv1", 16, 3, 2, 1), "block2.bn1"));
    h = g.batch_norm(g.conv(h, "block2.conv2", 16, 3, 1, 1), "block2.bn2");
    const int sc = g.batch_norm(g.conv(x, "block2.shortcut", 16, 1, 2, 0), "block2.shortcut_bn");
    x = g.relu(g.add(h, sc));
  }
  g.set_output(g.linear(g.global_avg_pool(x), "fc", c.num_classes));
  return g;
}

// Eight 12x12 RGB classes: class k is a bright square at a class-specific place.
struct Toy {
  Tensor x, y;
};
Toy toy_data(int64_t n, uint64_t seed) {
  Generator g(seed);
  std::vector<float> px(static_cast<size_t>(n) * 3 * 12 * 12);
  std::vector<int64_t> lab(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int k = static_cast<int>(g.below(4));
    lab[static_cast<size_t>(i)] = k;
    for (int ch = 0; ch < 3; ++ch)
      for (int r = 0; r < 12; ++r)
        for (int col = 0; col < 12; ++col) {
          float v = static_cast<float>(g.below(100)) / 400.0f;
          if (r / 6 == k / 2 && col / 6 == k % 2) v += 1.0f;
          px[((static_cast<size_t>(i) * 3 + ch) * 12 + r) * 12 + col] = v;
        }
  }
  return {Tensor::from_vector<float>(px, {n, 3, 12, 12}), Tensor::from_vector<int64_t>(lab, {n})};
}

double accuracy(models::Model& m, const Toy& d) {
  autograd::NoGradGuard ng;
  m.eval();
  const double a =
      static_cast<double>(ops::topk_correct(m.forward(d.x), d.y, 1)) / static_cast<double>(d.y.size(0));
  m.train();
  return a;
}

void train_steps(models::Model& m, optim::Optimizer& opt, const Toy& d, int steps) {
  m.train();
  for (int s = 0; s < steps; ++s) {
    Tensor loss = ops::cross_entropy(m.forward(d.x), d.y);
    ASSERT_TRUE(std::isfinite(loss.item()));
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
}

TEST(Graph, AFourthArchitectureTrainsQuantizesPacksAndMatchesItsFloatModel) {
  static const bool registered = [] {
    models::register_architecture("tiny_resnet", tiny_resnet);
    return true;
  }();
  ASSERT_TRUE(registered);
  models::ModelConfig cfg;
  cfg.num_classes = 4;
  cfg.input_size = 12;
  nn::manual_seed(3);
  models::ModelPtr m = models::create("tiny_resnet", cfg);
  EXPECT_EQ(m->num_parameters(), m->graph().num_parameters());
  EXPECT_EQ(m->first_conv_name(), "stem.conv");
  EXPECT_EQ(m->classifier_name(), "fc");
  // Five quantizable convs: both blocks' convs and the shortcut.
  std::set<std::string> q;
  for (auto& [name, conv] : m->quantizable_convs()) q.insert(name);
  EXPECT_EQ(q, (std::set<std::string>{"block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2",
                                      "block2.shortcut"}));

  // Full precision learns the toy task.
  const Toy train = toy_data(64, 1), test = toy_data(64, 2);
  {
    optim::SGDOptions so;
    so.lr = 0.05;
    so.momentum = 0.9;
    optim::SGD sgd(so);
    sgd.add_param_group(m->parameters());
    train_steps(*m, sgd, train, 60);
  }
  EXPECT_GT(accuracy(*m, test), 0.9);

  // TTQ: the rule quantizes exactly those five; training keeps the accuracy.
  models::TtqOptions to;
  to.t = 0.1;
  models::TtqModel ttq = models::quantize_model(*m, to);
  ASSERT_EQ(ttq.layers.size(), 5u);
  {
    auto opt = models::make_ttq_optimizer(*m, ttq, 1e-2);
    train_steps(*m, *opt, train, 20);
  }
  EXPECT_GT(accuracy(*m, test), 0.9);

  // Pack the checkpoint view and run it on the packed kernels.
  const io::NamedTensors view = models::ttq_checkpoint_view(*m, ttq);
  models::PackedContent packed = models::pack_tensors(view, {}, "tiny_resnet", "tiny_resnet");
  EXPECT_EQ(packed.report.layers.size(), 5u);
  auto pm =
      models::PackedModel::from_tensors(packed.tensors, packed.metadata, "", Device::cpu(), "tiny_resnet");
  EXPECT_EQ(pm->quantized_layers(), 5);
  m->eval();
  autograd::NoGradGuard ng;
  for (int64_t size : {12, 15}) {
    const Tensor x = test::rand({3, 3, size, size}, 40 + size);
    const Tensor want = m->forward(x), got = pm->forward(x);
    EXPECT_LT(test::max_rel_error(got, want), 1e-5) << "size " << size;
  }
  EXPECT_EQ(pm->config().num_classes, 4);
  EXPECT_THROW(pm->check_input({1, 4, 12, 12}, "x"), InputError);
}

}  // namespace
}  // namespace ttq
