// Tests of models/ (small DenseNet, SqueezeNet, DenseNet-121, registry, weight
// loading, summaries): parameter counts of docs/architecture.md, state-dict names
// and shapes against the seed files, the memory-efficient dense layer against
// the naive graph (outputs, gradients, running statistics), never-half-loading
// imports, input-size limits. Seed-weight parity: tests/test_seed_parity.cpp.
#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/ops/ops.h"
#include "models/architectures.h"
#include "models/model.h"
#include "models/summary.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using models::ModelConfig;

std::map<std::string, Shape> shapes_of(const io::NamedTensors& ts) {
  std::map<std::string, Shape> m;
  for (const auto& [n, t] : ts) m[n] = t.shape();
  return m;
}

std::map<std::string, Shape> state_shapes(models::Model& model) {
  std::map<std::string, Shape> m;
  for (const auto& [n, t] : model.state_dict()) m[n] = t.shape();
  return m;
}

TEST(Models, RegistryNames) {
  EXPECT_EQ(models::names(),
            (std::vector<std::string>{"small_densenet", "squeezenet", "densenet121", "resnet18", "resnet34",
                                      "tv_densenet121", "squeezenet1_1"}));
  try {
    models::create("resnet50");
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("known: small_densenet, squeezenet, densenet121, resnet18, "
                                         "resnet34, tv_densenet121, squeezenet1_1"),
              std::string::npos)
        << e.what();
  }
}

TEST(Models, ParameterCountsMatchTheDesign) {
  // docs/architecture.md, "Models": 3x56x56 input, 200 classes.
  EXPECT_EQ(models::create("small_densenet")->num_parameters(), 440264);
  EXPECT_EQ(models::create("squeezenet")->num_parameters(), 827784);
  EXPECT_EQ(models::create("densenet121")->num_parameters(), 7151176);
  // Fashion-MNIST: 1 input channel, 10 classes. Hand count: the first conv loses
  // 2 input channels of 3x3 taps, the classifier 190 rows.
  ModelConfig fm;
  fm.in_channels = 1;
  fm.input_size = 28;
  fm.num_classes = 10;
  EXPECT_EQ(models::create("small_densenet", fm)->num_parameters(), 440264 - 48 * 2 * 9 - 190 * (228 + 1));
  EXPECT_EQ(models::create("squeezenet", fm)->num_parameters(), 827784 - 64 * 2 * 9 - 190 * (512 + 1));
  EXPECT_EQ(models::create("densenet121", fm)->num_parameters(), 7151176 - 64 * 2 * 9 - 190 * (1024 + 1));
}

TEST(Models, StateDictNamesAndShapesAreTheSeeds) {
  const std::string dir = test::seed_dir();
  for (const char* arch : {"small_densenet", "squeezenet"}) {
    auto model = models::create(arch);
    auto theirs = shapes_of(io::read_safetensors(dir + "/" + arch + "_fp.safetensors").tensors());
    auto ours = state_shapes(*model);
    for (const auto& [n, s] : theirs) {
      auto it = ours.find(n);
      if (it == ours.end()) {
        ADD_FAILURE() << arch << ": seed tensor " << n << " missing from the model";
      } else {
        EXPECT_EQ(it->second, s) << arch << ": " << n;
      }
    }
    for (const auto& [n, s] : ours)
      EXPECT_TRUE(theirs.count(n)) << arch << ": model tensor " << n << " not in the seed";
  }
}

TEST(Models, DenseNet121NamesFollowTheSeedSpelling) {
  auto model = models::create("densenet121");
  auto s = state_shapes(*model);
  EXPECT_EQ(s.at("features.conv0.weight"), (Shape{64, 3, 3, 3}));
  EXPECT_EQ(s.at("features.denseblock1.denselayer1.norm.1.running_var"), (Shape{64}));
  EXPECT_EQ(s.at("features.denseblock1.denselayer6.conv.1.weight"), (Shape{128, 224, 1, 1}));
  EXPECT_EQ(s.at("features.denseblock4.denselayer16.conv.2.weight"), (Shape{32, 128, 3, 3}));
  EXPECT_EQ(s.at("features.transition3.conv.weight"), (Shape{512, 1024, 1, 1}));
  EXPECT_EQ(s.at("features.norm5.weight"), (Shape{1024}));
  EXPECT_EQ(s.at("classifier.weight"), (Shape{200, 1024}));
  EXPECT_EQ(s.count("features.pool0.weight"), 0u);
  // 2 convs per dense layer x (6+12+24+16) + 3 transitions + conv0, plus 120 BNs x 4 + Linear x 2.
  EXPECT_EQ(s.size(), 1u + 58 * 2 + 3 + (1 + 58 * 2 + 3 + 1) * 4 + 2);
}

TEST(Models, FirstConvClassifierAndQuantizableConvs) {
  struct Case {
    const char* arch;
    const char* first;
    const char* classifier;
    size_t quantized;
  };
  // The seed's TTQ files quantize 62 (small DenseNet) and 24 (SqueezeNet) convs.
  for (const Case& c : {Case{"small_densenet", "features.conv0", "classifier", 62},
                        Case{"squeezenet", "features.0", "classifier.1", 24},
                        Case{"densenet121", "features.conv0", "classifier", 58 * 2 + 3}}) {
    auto model = models::create(c.arch);
    EXPECT_EQ(model->first_conv_name(), c.first);
    EXPECT_EQ(model->classifier_name(), c.classifier);
    EXPECT_EQ(&model->first_conv().weight(), model->named_parameters()[0].second) << c.arch;
    auto q = model->quantizable_convs();
    EXPECT_EQ(q.size(), c.quantized) << c.arch;
    for (auto& [name, conv] : q) {
      EXPECT_NE(name, c.first);
      EXPECT_NE(name, c.classifier);
    }
  }
  auto sq = models::create("squeezenet");
  EXPECT_NE(dynamic_cast<nn::Conv2d*>(&sq->classifier()), nullptr);
  EXPECT_TRUE(dynamic_cast<nn::Conv2d*>(&sq->classifier())->has_bias());
}

TEST(Models, InitIsKaimingUniformWithZeroBiases) {
  Generator g(1);
  auto model = models::create("small_densenet", {}, g);
  // features.conv0.weight: fan_in 27, bound sqrt(6 / 27).
  Tensor w = *model->named_parameters()[0].second;
  double bound = std::sqrt(6.0 / 27), mx = 0;
  for (float v : w.to_vector<float>()) mx = std::max(mx, std::fabs(double(v)));
  EXPECT_LE(mx, bound);
  EXPECT_GT(mx, 0.8 * bound);
  for (auto& [n, p] : model->named_parameters()) {
    if (n == "classifier.bias") {
      for (float v : p->to_vector<float>()) EXPECT_EQ(v, 0.f);
    }
  }
  // Same seed, same model.
  Generator g2(1);
  auto again = models::create("small_densenet", {}, g2);
  auto a = model->state_dict(), b = again->state_dict();
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(test::max_abs_diff(a[i].second, b[i].second), 0.0) << a[i].first;
}

// The memory-efficient dense layer must reproduce the naive graph: outputs,
// every parameter gradient, the input gradient and the running statistics.
void expect_paths_agree(const std::string& arch, const ModelConfig& base, const Shape& input, bool quantize) {
  ModelConfig naive_cfg = base, eff_cfg = base;
  naive_cfg.memory_efficient = false;
  eff_cfg.memory_efficient = true;
  Generator g1(21), g2(21);
  auto naive = models::create(arch, naive_cfg, g1);
  auto eff = models::create(arch, eff_cfg, g2);
  if (quantize) {
    // A differentiable stand-in for TTQ's quantizer on every quantizable conv:
    // the effective weight is 1.5 * latent, so the latent gradient is 1.5 * G.
    struct Scale : nn::WeightQuantizer {
      Tensor quantize(const Tensor& latent) override { return ops::scale(latent, 1.5); }
    };
    for (auto* m : {naive.get(), eff.get()})
      for (auto& [name, conv] : m->quantizable_convs()) conv->quantizer = std::make_shared<Scale>();
  }
  Tensor x = test::rand(input, 5);
  Tensor probe = test::rand({input[0], base.num_classes}, 6);
  std::vector<Tensor> outs, xgrads;
  for (auto* m : {naive.get(), eff.get()}) {
    m->train();
    nn::manual_seed(99);  // same dropout masks
    Tensor xi = x.clone().set_requires_grad(true);
    Tensor y = m->forward(xi);
    ops::sum(ops::mul(y, probe)).backward();
    outs.push_back(y.detach());
    xgrads.push_back(xi.grad());
  }
  EXPECT_EQ(test::max_abs_diff(outs[0], outs[1]), 0.0) << arch << ": outputs differ";
  ASSERT_TRUE(xgrads[0].defined() && xgrads[1].defined());
  EXPECT_EQ(test::max_rel_error(xgrads[1], xgrads[0]), 0.0) << arch << ": input gradients differ";
  auto pn = naive->named_parameters(), pe = eff->named_parameters();
  ASSERT_EQ(pn.size(), pe.size());
  int compared = 0;
  for (size_t i = 0; i < pn.size(); ++i) {
    ASSERT_EQ(pn[i].first, pe[i].first);
    Tensor gn = pn[i].second->grad(), ge = pe[i].second->grad();
    ASSERT_TRUE(gn.defined() && ge.defined()) << pn[i].first;
    EXPECT_EQ(test::max_rel_error(ge, gn), 0.0) << arch << ": gradient of " << pn[i].first;
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(pn.size()));
  auto bn = naive->named_buffers(), be = eff->named_buffers();
  for (size_t i = 0; i < bn.size(); ++i)
    EXPECT_EQ(test::max_abs_diff(*be[i].second, *bn[i].second), 0.0) << "running stat " << bn[i].first;
}

TEST(Models, MemoryEfficientDenseLayerMatchesNaiveSmallDenseNet) {
  expect_paths_agree("small_densenet", {}, {2, 3, 16, 16}, false);
}

TEST(Models, MemoryEfficientDenseLayerMatchesNaiveWithQuantizer) {
  ModelConfig c;
  c.num_classes = 7;
  c.in_channels = 1;
  expect_paths_agree("small_densenet", c, {3, 1, 12, 12}, true);
}

TEST(Models, MemoryEfficientDenseLayerMatchesNaiveDenseNet121) {
  ModelConfig c;
  c.num_classes = 5;
  expect_paths_agree("densenet121", c, {2, 3, 8, 8}, false);
}

TEST(Models, EfficientPathUpdatesRunningStatsOnce) {
  // One training forward + backward: running_mean = 0.9 * 0 + 0.1 * batch mean of
  // the block input, whatever backward recomputes.
  Generator g(4);
  auto model = models::create("small_densenet", {}, g);
  model->train();
  nn::BatchNorm2d* norm1 = nullptr;
  for (auto& [n, m] : model->named_modules())
    if (n == "features.denseblock1.denselayer2.norm.1") norm1 = dynamic_cast<nn::BatchNorm2d*>(m);
  ASSERT_NE(norm1, nullptr);
  Tensor x = test::rand({2, 3, 14, 14}, 8).set_requires_grad(true);
  nn::manual_seed(1);
  ops::sum(model->forward(x)).backward();
  Tensor after_one = norm1->running_mean().clone();
  // A second model, forward only, must reach the same running mean.
  Generator g2(4);
  auto ref = models::create("small_densenet", {}, g2);
  ref->train();
  nn::manual_seed(1);
  {
    autograd::NoGradGuard ng;
    ref->forward(x.detach());
  }
  nn::BatchNorm2d* ref_norm = nullptr;
  for (auto& [n, m] : ref->named_modules())
    if (n == "features.denseblock1.denselayer2.norm.1") ref_norm = dynamic_cast<nn::BatchNorm2d*>(m);
  EXPECT_EQ(test::max_abs_diff(after_one, ref_norm->running_mean()), 0.0);
  double mx = 0;
  for (float v : after_one.to_vector<float>()) mx = std::max(mx, std::fabs(double(v)));
  EXPECT_GT(mx, 0.0);
}

TEST(Models, MinimumInputSizes) {
  struct Case {
    const char* arch;
    int64_t min;
  };
  for (const Case& c : {Case{"small_densenet", 7}, Case{"squeezenet", 12}, Case{"densenet121", 8}}) {
    ModelConfig cfg;
    cfg.num_classes = 3;
    auto model = models::create(c.arch, cfg);
    EXPECT_EQ(model->min_input_size(), c.min) << c.arch;
    model->eval();
    autograd::NoGradGuard ng;
    Tensor y = model->forward(test::rand({1, 3, c.min, c.min}, 2));
    EXPECT_EQ(y.shape(), (Shape{1, 3})) << c.arch;
    EXPECT_THROW(model->check_input({1, 3, c.min - 1, c.min}, "x"), InputError);
    EXPECT_THROW(model->check_input({1, 2, c.min, c.min}, "x"), InputError);
    EXPECT_THROW(model->check_input({3, c.min, c.min}, "x"), InputError);
    EXPECT_NO_THROW(model->check_input({2, 3, c.min, c.min + 5}, "x"));
  }
}

TEST(Models, FashionMnistShapes) {
  ModelConfig fm;
  fm.in_channels = 1;
  fm.input_size = 28;
  fm.num_classes = 10;
  for (const auto& arch : models::names()) {
    auto model = models::create(arch, fm);
    if (model->min_input_size() > 28) {  // torchvision's DenseNet-121 needs 29x29: refused, not crashed
      EXPECT_INPUT_ERROR_MENTIONS(model->check_input({2, 1, 28, 28}, arch), "H, W >= 29");
      continue;
    }
    model->eval();
    autograd::NoGradGuard ng;
    Tensor y = model->forward(test::rand({2, 1, 28, 28}, 3));
    EXPECT_EQ(y.shape(), (Shape{2, 10})) << arch;
    EXPECT_TRUE(test::all_finite(y)) << arch;
  }
}

TEST(Models, CanonicalNames) {
  const models::Graph g = models::build_graph("densenet121", models::ModelConfig{});
  EXPECT_EQ(g.canonical_name("features.denseblock2.denselayer7.norm1.weight"),
            "features.denseblock2.denselayer7.norm.1.weight");
  EXPECT_EQ(g.canonical_name("features.denseblock2.denselayer7.conv2.weight"),
            "features.denseblock2.denselayer7.conv.2.weight");
  EXPECT_EQ(g.canonical_name("features.denseblock2.denselayer7.norm.1.weight"),
            "features.denseblock2.denselayer7.norm.1.weight");
  EXPECT_EQ(g.canonical_name("features.conv1.weight"),
            "features.conv1.weight");  // not in a dense layer
  EXPECT_EQ(g.canonical_name("features.norm5.bias"), "features.norm5.bias");
}

// Loading never half-loads: on any defect the model is unchanged.
TEST(Models, LoadRejectsMissingExtraAndMisshapenTensorsWithoutTouchingTheModel) {
  Generator g(8);
  auto model = models::create("squeezenet", {}, g);
  io::NamedTensors before;
  for (auto& [n, t] : model->state_dict()) before.emplace_back(n, t.clone());
  io::NamedTensors good = io::read_safetensors(test::seed_dir() + "/squeezenet_fp.safetensors").tensors();

  auto expect_unchanged = [&] {
    auto now = model->state_dict();
    ASSERT_EQ(now.size(), before.size());
    for (size_t i = 0; i < now.size(); ++i)
      ASSERT_EQ(test::max_abs_diff(now[i].second, before[i].second), 0.0) << "half-loaded " << now[i].first;
  };
  auto expect_error = [&](const io::NamedTensors& ts, const std::string& needle) {
    try {
      models::load_weights(*model, ts, "w.safetensors");
      ADD_FAILURE() << "accepted weights that should fail with " << needle;
    } catch (const InputError& e) {
      std::string msg = e.what();
      EXPECT_EQ(msg.rfind("w.safetensors", 0), 0u) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
    expect_unchanged();
  };
  io::NamedTensors missing(good.begin(), good.end() - 1);  // classifier.1.bias last
  expect_error(missing, "classifier.1.bias");
  io::NamedTensors extra = good;
  extra.emplace_back("features.99.weight", Tensor::zeros({3}));
  expect_error(extra, "features.99.weight");
  io::NamedTensors misshapen = good;
  misshapen.back().second = Tensor::zeros({10});
  expect_error(misshapen, "classifier.1.bias");
  // And the good set loads.
  models::load_weights(*model, good, "w.safetensors");
  EXPECT_EQ(test::max_abs_diff(model->state_dict().back().second, good.back().second), 0.0);
}

// Values are checked with names and shapes, before anything is copied: non-finite
// numbers, a negative running variance, integer or F16 tensors where the model
// keeps F32, F64 beyond the F32 range. F64 within range loads.
TEST(Models, LoadRejectsNonFiniteNegativeVarianceAndWrongDtypesWithoutTouchingTheModel) {
  Generator g(9);
  auto model = models::create("squeezenet", {}, g);
  io::NamedTensors good = io::read_safetensors(test::seed_dir() + "/squeezenet_fp.safetensors").tensors();
  models::load_weights(*model, good, "w.safetensors");
  io::NamedTensors before;
  for (auto& [n, t] : model->state_dict()) before.emplace_back(n, t.clone());
  auto with = [&](const std::string& name, const std::function<Tensor(const Tensor&)>& f) {
    io::NamedTensors t;
    for (const auto& [n, v] : good) t.emplace_back(n, n == name ? f(v) : v);
    return t;
  };
  auto poke = [](float value, int64_t at) {
    return [=](const Tensor& v) {
      Tensor c = v.clone();
      c.data<float>()[at] = value;
      return c;
    };
  };
  auto expect_error = [&](const io::NamedTensors& ts, const std::string& needle) {
    try {
      models::load_weights(*model, ts, "w.safetensors");
      ADD_FAILURE() << "accepted weights that should fail with " << needle;
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("w.safetensors: ", 0), 0u) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << "expected '" << needle << "' in: " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
    auto now = model->state_dict();
    for (size_t i = 0; i < now.size(); ++i)
      ASSERT_EQ(test::max_abs_diff(now[i].second, before[i].second), 0.0) << "half-loaded " << now[i].first;
  };
  expect_error(with("features.4.squeeze.weight", poke(NAN, 5)),
               "features.4.squeeze.weight (holds NaN at element 5)");
  expect_error(with("classifier.1.bias", poke(INFINITY, 0)), "classifier.1.bias (holds +Inf at element 0)");
  expect_error(with("features.1.bias", poke(-INFINITY, 2)), "features.1.bias (holds -Inf at element 2)");
  expect_error(with("features.1.running_mean", poke(NAN, 0)), "features.1.running_mean");
  expect_error(with("features.1.running_var", poke(-0.5f, 3)),
               "features.1.running_var (holds -0.5 at element 3, below zero");
  expect_error(with("features.0.weight", [](const Tensor& v) { return v.to(DType::I64); }),
               "features.0.weight (is I64, expected F32 values)");
  expect_error(with("features.0.weight",
                    [](const Tensor& v) {
                      Tensor d = v.to(DType::F64);
                      d.data<double>()[1] = 1e300;
                      return d;
                    }),
               "features.0.weight (holds 1e+300 at element 1, outside the range");
  // F16 / BF16 are not converted by the engine: refused, not an internal error.
  expect_error(
      with("classifier.1.weight", [](const Tensor& v) { return Tensor::empty(v.shape(), DType::F16); }),
      "classifier.1.weight (is F16, expected F32 values)");
  // A zero variance is allowed (eps keeps the root finite); F64 within range
  // rounds to nearest as PyTorch's copy_ does.
  models::load_weights(*model, with("features.1.running_var", poke(0.0f, 0)), "w.safetensors");
  models::load_weights(*model, with("classifier.1.weight", [](const Tensor& v) { return v.to(DType::F64); }),
                       "w.safetensors");
  EXPECT_EQ(test::max_abs_diff(model->state_dict().back().second, good.back().second), 0.0);
}

TEST(Models, ConfigBoundsAndConfigFromWeights) {
  ModelConfig c;
  EXPECT_NO_THROW(models::check_config(c, "x"));
  for (auto bad : std::vector<std::function<void(ModelConfig&)>>{
           [](ModelConfig& m) { m.num_classes = 0; },
           [](ModelConfig& m) { m.num_classes = models::kMaxClasses + 1; },
           [](ModelConfig& m) { m.in_channels = -1; },
           [](ModelConfig& m) { m.in_channels = int64_t(1) << 40; },
           [](ModelConfig& m) { m.input_size = models::kMaxInputSize + 1; },
           [](ModelConfig& m) { m.dropout = NAN; },
       }) {
    ModelConfig m;
    bad(m);
    EXPECT_THROW(models::check_config(m, "x"), InputError);
    EXPECT_THROW(models::create("small_densenet", m), InputError);
  }
  // A classifier shape that claims 2^40 classes with no bytes behind it.
  io::NamedTensors ts = io::read_safetensors(test::seed_dir() + "/small_densenet_fp.safetensors").tensors();
  for (auto& [n, t] : ts)
    if (n == "classifier.weight") t = Tensor::empty({int64_t(1) << 40, 0});
  try {
    models::config_from_weights("small_densenet", ts, "f.safetensors");
    ADD_FAILURE() << "accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("f.safetensors: the weights of small_densenet: num_classes"),
              std::string::npos)
        << e.what();
  }
}

TEST(Models, ConfigFromWeights) {
  auto st = io::read_safetensors(test::seed_dir() + "/small_densenet_fp.safetensors");
  ModelConfig c = models::config_from_weights("small_densenet", st.tensors(), "f");
  EXPECT_EQ(c.in_channels, 3);
  EXPECT_EQ(c.num_classes, 200);
  EXPECT_THROW(models::config_from_weights("squeezenet", st.tensors(), "f"), InputError);
}

TEST(Models, SummaryCountsLayersParametersAndFlops) {
  auto model = models::create("small_densenet");
  models::Summary s = models::summarize(*model, {1, 3, 56, 56});
  EXPECT_EQ(s.params, 440264);
  EXPECT_EQ(s.output, (Shape{1, 200}));
  ASSERT_FALSE(s.rows.empty());
  EXPECT_EQ(s.rows.front().name, "features.conv0");
  EXPECT_EQ(s.rows.front().output, (Shape{1, 48, 56, 56}));
  EXPECT_EQ(s.rows.front().params, 48 * 3 * 9);
  EXPECT_EQ(s.rows.front().flops, int64_t{48} * 56 * 56 * 2 * 27);
  EXPECT_EQ(s.rows.back().name, "classifier");
  EXPECT_EQ(s.rows.back().flops, 200 * (2 * 228 + 1));
  int64_t params = 0, convs = 0;
  for (const auto& r : s.rows) {
    params += r.params;
    convs += r.type.rfind("Conv2d", 0) == 0;
  }
  EXPECT_EQ(params, 440264) << "every parameterised layer appears once";
  EXPECT_EQ(convs, 1 + 30 * 2 + 2);  // conv0, two per dense layer, transitions
  const std::string text = s.text();
  EXPECT_NE(text.find("parameters: 440264"), std::string::npos);
  EXPECT_NE(text.find("features.denseblock3.denselayer10.conv.2"), std::string::npos);
  EXPECT_TRUE(model->is_training()) << "summary must restore the mode";
  EXPECT_EQ(models::parse_chw("1x28x28", "--input"), (Shape{1, 28, 28}));
  EXPECT_THROW(models::parse_chw("1x28", "--input"), InputError);
  EXPECT_THROW(models::parse_chw("ax2x2", "--input"), InputError);
  EXPECT_THROW(models::parse_chw("0x2x2", "--input"), InputError);
}

}  // namespace
}  // namespace ttq
