// nn::Module and the standard layers: dotted names and their order, counts, state
// dicts (round trip, refusals that change nothing), train / eval behaviour of
// BatchNorm and Dropout, initialisers, the Conv2d weight-quantizer hook, and layer
// outputs against naive implementations written here.
// Code under test: engine/nn/.
#include <cmath>
#include <map>
#include <memory>

#include "engine/nn/layers.h"
#include "engine/nn/module.h"
#include "engine/ops/ops.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using nn::BatchNorm2d;
using nn::Conv2d;
using nn::Linear;
using nn::Module;
using nn::ModulePtr;
using nn::Sequential;

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Tensor*>>& v) {
  std::vector<std::string> out;
  for (auto& [n, t] : v) out.push_back(n);
  return out;
}

// A dense layer spelled as the seed's DenseNet: children whose names contain dots.
std::shared_ptr<Sequential> seed_style_layer(int64_t cin) {
  auto l = std::make_shared<Sequential>();
  l->push_back("norm.1", std::make_shared<BatchNorm2d>(cin));
  l->push_back("relu.1", std::make_shared<nn::ReLU>());
  l->push_back("conv.1", std::make_shared<Conv2d>(cin, 8, 1));
  l->push_back("norm.2", std::make_shared<BatchNorm2d>(8));
  l->push_back("conv.2", std::make_shared<Conv2d>(8, 4, 3, 1, 1));
  return l;
}

// features: conv0, norm0, denseblock1.denselayer1; classifier (Linear with bias).
std::shared_ptr<Sequential> small_tree() {
  auto block = std::make_shared<Sequential>();
  block->push_back("denselayer1", seed_style_layer(6));
  auto features = std::make_shared<Sequential>();
  features->push_back("conv0", std::make_shared<Conv2d>(3, 6, 3, 1, 1));
  features->push_back("norm0", std::make_shared<BatchNorm2d>(6));
  features->push_back("denseblock1", block);
  auto model = std::make_shared<Sequential>();
  model->push_back("features", features);
  model->push_back("classifier", std::make_shared<Linear>(4, 5));
  return model;
}

TEST(Module, DottedNamesInRegistrationOrder) {
  auto m = small_tree();
  const std::vector<std::string> params = {
      "features.conv0.weight",
      "features.norm0.weight",
      "features.norm0.bias",
      "features.denseblock1.denselayer1.norm.1.weight",
      "features.denseblock1.denselayer1.norm.1.bias",
      "features.denseblock1.denselayer1.conv.1.weight",
      "features.denseblock1.denselayer1.norm.2.weight",
      "features.denseblock1.denselayer1.norm.2.bias",
      "features.denseblock1.denselayer1.conv.2.weight",
      "classifier.weight",
      "classifier.bias",
  };
  EXPECT_EQ(names_of(m->named_parameters()), params);
  EXPECT_EQ(names_of(m->named_buffers()),
            (std::vector<std::string>{"features.norm0.running_mean", "features.norm0.running_var",
                                      "features.denseblock1.denselayer1.norm.1.running_mean",
                                      "features.denseblock1.denselayer1.norm.1.running_var",
                                      "features.denseblock1.denselayer1.norm.2.running_mean",
                                      "features.denseblock1.denselayer1.norm.2.running_var"}));
  // state_dict: per module its parameters, then its buffers (PyTorch's order).
  std::vector<std::string> sd;
  for (auto& [n, t] : m->state_dict()) sd.push_back(n);
  ASSERT_EQ(sd.size(), 17u);
  EXPECT_EQ(sd[0], "features.conv0.weight");
  EXPECT_EQ(sd[1], "features.norm0.weight");
  EXPECT_EQ(sd[3], "features.norm0.running_mean");
  EXPECT_EQ(sd[4], "features.norm0.running_var");
  EXPECT_EQ(sd[5], "features.denseblock1.denselayer1.norm.1.weight");
  EXPECT_EQ(sd[16], "classifier.bias");

  std::vector<std::string> mods;
  for (auto& [n, p] : m->named_modules()) mods.push_back(n);
  EXPECT_EQ(mods.front(), "");
  EXPECT_EQ(mods[1], "features");
  EXPECT_EQ(mods[5], "features.denseblock1.denselayer1");
  EXPECT_EQ(mods[6], "features.denseblock1.denselayer1.norm.1");
  EXPECT_EQ(mods.back(), "classifier");
  EXPECT_EQ(mods.size(), 12u);

  // Counts by hand: conv0 6*3*9; norm0 2*6; norm.1 2*6; conv.1 8*6; norm.2 2*8; conv.2 4*8*9; Linear 4*5+5.
  const int64_t expect = 162 + 12 + 12 + 48 + 16 + 288 + 25;
  EXPECT_EQ(m->num_parameters(), expect);
  EXPECT_EQ(m->parameters().size(), params.size());
  for (auto& [n, t] : m->named_parameters()) EXPECT_TRUE(t->requires_grad()) << n;
  for (auto& [n, t] : m->named_buffers()) EXPECT_FALSE(t->requires_grad()) << n;
}

TEST(Module, RegistrationRulesAndLookup) {
  auto conv = std::make_shared<Conv2d>(2, 3, 3);
  EXPECT_FALSE(conv->has_bias());
  EXPECT_THROW(conv->register_parameter("weight", Tensor::zeros({1})), Error);
  EXPECT_THROW(conv->register_buffer("", Tensor::zeros({1})), Error);
  // A quantizer adds its scales to an existing layer.
  Tensor& wp = conv->register_parameter("wp", Tensor::ones({}));
  EXPECT_TRUE(wp.requires_grad());
  EXPECT_EQ(names_of(conv->named_parameters()), (std::vector<std::string>{"weight", "wp"}));
  EXPECT_EQ(&conv->parameter("wp"), &wp);
  EXPECT_THROW(conv->parameter("wn"), Error);
  EXPECT_EQ(conv->num_parameters(), 2 * 3 * 9 + 1);
  // Freezing.
  conv->set_requires_grad(false);
  EXPECT_EQ(conv->num_trainable_parameters(), 0);
  EXPECT_FALSE(conv->weight().requires_grad());

  // Sequential: positional names, typed access, replacement in place.
  Sequential s({std::make_shared<Conv2d>(1, 2, 3), std::make_shared<nn::ReLU>()});
  EXPECT_TRUE(s.has_child("0"));
  EXPECT_TRUE(s.has_child("1"));
  EXPECT_EQ(s.at<Conv2d>(0)->out_channels(), 2);
  EXPECT_THROW(s.at<Linear>(0), Error);
  EXPECT_THROW(s.at(2), Error);
  s.replace_child("1", std::make_shared<nn::Flatten>());
  EXPECT_EQ(s.at(1)->name(), "Flatten");
  EXPECT_THROW(s.push_back("0", std::make_shared<nn::ReLU>()), Error);
  const std::string r = s.repr();
  EXPECT_NE(r.find("(0): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1), bias=False)"), std::string::npos)
      << r;
  EXPECT_NE(r.find("(1): Flatten()"), std::string::npos) << r;
}

std::map<std::string, std::vector<double>> values_of(Module& m) {
  std::map<std::string, std::vector<double>> out;
  for (auto& [n, t] : m.state_dict()) out[n] = t.to_vector<double>();
  return out;
}

TEST(Module, StateDictRoundTripCopiesIntoExistingTensors) {
  nn::manual_seed(1);
  auto a = small_tree();
  nn::manual_seed(2);
  auto b = small_tree();
  // Make the buffers differ too (positive: a running variance cannot be negative).
  Generator g(7);
  for (auto& [n, t] : a->named_buffers()) t->copy_(Tensor::uniform(t->shape(), g, 0.5, 1.5));
  ASSERT_NE(values_of(*a), values_of(*b));

  std::vector<void*> storages_before;
  for (auto& [n, t] : b->state_dict()) storages_before.push_back(t.storage().get());
  std::map<std::string, Tensor> sd;
  for (auto& [n, t] : a->state_dict()) sd[n] = t.clone();
  const nn::LoadResult r = b->load_state_dict(sd);
  EXPECT_TRUE(r.missing.empty());
  EXPECT_TRUE(r.unexpected.empty());
  EXPECT_EQ(values_of(*a), values_of(*b));
  // Same storage as before: copied in place, so handles held elsewhere (optimizers) see it.
  size_t i = 0;
  for (auto& [n, t] : b->state_dict()) EXPECT_EQ(t.storage().get(), storages_before[i++]) << n;
  for (auto& [n, t] : b->named_parameters()) EXPECT_TRUE(t->requires_grad()) << n;

  // A float64 source is converted; a PyTorch-style num_batches_tracked is ignored.
  sd["features.conv0.weight"] = sd["features.conv0.weight"].to(DType::F64);
  sd["features.norm0.num_batches_tracked"] = Tensor::zeros({}, DType::I64);
  EXPECT_NO_THROW(b->load_state_dict(sd));
}

TEST(Module, LoadStateDictRefusesAndChangesNothing) {
  auto m = small_tree();
  std::map<std::string, Tensor> sd;
  for (auto& [n, t] : m->state_dict()) sd[n] = Tensor::full(t.shape(), 3.0);
  sd.erase("classifier.bias");
  sd.erase("features.norm0.running_var");
  sd["features.conv9.weight"] = Tensor::zeros({1});
  sd["features.conv0.weight"] = Tensor::zeros({6, 3, 1, 1});
  const auto before = values_of(*m);
  try {
    m->load_state_dict(sd, true, "weights.safetensors");
    FAIL() << "accepted";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos);
    EXPECT_EQ(msg.rfind("weights.safetensors: ", 0), 0u) << msg;
    for (const char* w :
         {"missing", "classifier.bias", "features.norm0.running_var", "unexpected", "features.conv9.weight",
          "shape mismatch", "features.conv0.weight", "[6, 3, 3, 3]", "[6, 3, 1, 1]"})
      EXPECT_NE(msg.find(w), std::string::npos) << "'" << w << "' not in: " << msg;
  }
  EXPECT_EQ(values_of(*m), before);

  // Non-strict: missing and unexpected are reported back, but a wrong shape still refuses.
  EXPECT_THROW(m->load_state_dict(sd, false), InputError);
  EXPECT_EQ(values_of(*m), before);
  sd["features.conv0.weight"] = Tensor::full({6, 3, 3, 3}, 3.0);
  const nn::LoadResult r = m->load_state_dict(sd, false);
  EXPECT_EQ(r.missing, (std::vector<std::string>{"features.norm0.running_var", "classifier.bias"}));
  EXPECT_EQ(r.unexpected, (std::vector<std::string>{"features.conv9.weight"}));
  auto after = values_of(*m);
  EXPECT_EQ(after.at("classifier.weight"), std::vector<double>(20, 3.0));
  EXPECT_EQ(after.at("classifier.bias"), before.at("classifier.bias"));

  // A long list stays one line.
  std::map<std::string, Tensor> empty;
  try {
    m->load_state_dict(empty);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("more)"), std::string::npos) << e.what();
  }
}

TEST(Module, ToZeroGradAndTrainFlags) {
  auto m = small_tree();
  m->to(Device::cpu());  // no-op on the same device, keeps requires_grad
  for (auto& [n, t] : m->named_parameters()) EXPECT_TRUE(t->requires_grad()) << n;
  for (auto& [n, t] : m->named_parameters()) t->set_grad(Tensor::ones(t->shape()));
  m->zero_grad();
  for (auto& [n, t] : m->named_parameters()) EXPECT_FALSE(t->grad().defined()) << n;
  EXPECT_TRUE(m->is_training());
  m->eval();
  for (auto& [n, p] : m->named_modules()) EXPECT_FALSE(p->is_training()) << n;
  m->train();
  for (auto& [n, p] : m->named_modules()) EXPECT_TRUE(p->is_training()) << n;
}

// ---- initialisers ---------------------------------------------------------------

// |x| <= bound always; with enough samples also the spread of U(-bound, bound).
void expect_uniform(const Tensor& t, double bound, const char* what) {
  auto v = t.to_vector<double>();
  double mx = 0, mean = 0, var = 0;
  for (double x : v) {
    mx = std::max(mx, std::fabs(x));
    mean += x / v.size();
  }
  for (double x : v) var += (x - mean) * (x - mean) / v.size();
  EXPECT_LE(mx, bound) << what;
  if (v.size() < 1000) {
    EXPECT_GT(mx, 0.5 * bound) << what;
    return;
  }
  EXPECT_GT(mx, 0.99 * bound) << what;
  EXPECT_NEAR(var, bound * bound / 3, 0.1 * bound * bound / 3) << what;
  EXPECT_NEAR(mean, 0, 0.05 * bound) << what;
}

TEST(Init, PyTorchDefaultsAndKaimingA0) {
  Generator g(3);
  Conv2d conv(16, 32, 3, 1, 1, true, g);  // fan_in 144
  expect_uniform(conv.weight(), 1.0 / 12.0, "conv weight: 1/sqrt(fan_in)");
  expect_uniform(conv.bias(), 1.0 / 12.0, "conv bias");
  Linear lin(100, 50, true, g);
  expect_uniform(lin.weight(), 0.1, "linear weight");
  expect_uniform(lin.bias(), 0.1, "linear bias");
  Tensor w = Tensor::empty({64, 16, 3, 3});
  nn::init::kaiming_uniform(w, g, 0.0);
  expect_uniform(w, std::sqrt(6.0 / 144.0), "kaiming a=0");
  EXPECT_EQ(nn::init::fan_in_out({64, 16, 3, 3}), (std::pair<int64_t, int64_t>{144, 576}));

  BatchNorm2d bn(5);
  EXPECT_EQ(bn.weight().to_vector<float>(), std::vector<float>(5, 1.f));
  EXPECT_EQ(bn.bias().to_vector<float>(), std::vector<float>(5, 0.f));
  EXPECT_EQ(bn.running_mean().to_vector<float>(), std::vector<float>(5, 0.f));
  EXPECT_EQ(bn.running_var().to_vector<float>(), std::vector<float>(5, 1.f));

  // The global generator makes construction reproducible; its state advances.
  nn::manual_seed(42);
  Conv2d c1(4, 4, 3);
  const uint64_t off = nn::global_generator().offset();
  EXPECT_EQ(off, 4u * 4u * 9u);
  nn::manual_seed(42);
  Conv2d c2(4, 4, 3);
  EXPECT_EQ(c1.weight().to_vector<float>(), c2.weight().to_vector<float>());
}

// ---- layers against naive implementations -------------------------------------------

std::vector<double> naive_conv(const std::vector<double>& x, const std::vector<double>& w,
                               const std::vector<double>& b, int n, int ci, int h, int wd, int co, int k,
                               int s, int p, int& ho, int& wo) {
  ho = (h + 2 * p - k) / s + 1;
  wo = (wd + 2 * p - k) / s + 1;
  std::vector<double> y(size_t(n) * co * ho * wo, 0);
  for (int in = 0; in < n; ++in)
    for (int o = 0; o < co; ++o)
      for (int i = 0; i < ho; ++i)
        for (int j = 0; j < wo; ++j) {
          double acc = b.empty() ? 0 : b[o];
          for (int c = 0; c < ci; ++c)
            for (int u = 0; u < k; ++u)
              for (int v = 0; v < k; ++v) {
                const int yy = i * s - p + u, xx = j * s - p + v;
                if (yy < 0 || yy >= h || xx < 0 || xx >= wd) continue;
                acc +=
                    x[((size_t(in) * ci + c) * h + yy) * wd + xx] * w[((size_t(o) * ci + c) * k + u) * k + v];
              }
          y[((size_t(in) * co + o) * ho + i) * wo + j] = acc;
        }
  return y;
}

TEST(Layers, ConvAndLinearMatchNaive) {
  Generator g(5);
  Conv2d conv(3, 5, 3, 2, 1, true, g);
  Tensor x = test::rand({2, 3, 7, 9}, 8);
  Tensor y = conv(x);
  int ho = 0, wo = 0;
  auto ref = naive_conv(x.to_vector<double>(), conv.weight().to_vector<double>(),
                        conv.bias().to_vector<double>(), 2, 3, 7, 9, 5, 3, 2, 1, ho, wo);
  ASSERT_EQ(y.shape(), (Shape{2, 5, ho, wo}));
  EXPECT_LT(test::max_rel_error(y, Tensor::from_vector<double>(ref, y.shape())), 1e-5);

  Linear lin(7, 3, true, g);
  Tensor a = test::rand({4, 7}, 9);
  Tensor z = lin(a);
  auto av = a.to_vector<double>(), wv = lin.weight().to_vector<double>(), bv = lin.bias().to_vector<double>();
  std::vector<double> zr(12);
  for (int i = 0; i < 4; ++i)
    for (int o = 0; o < 3; ++o) {
      double acc = bv[o];
      for (int k = 0; k < 7; ++k) acc += av[i * 7 + k] * wv[o * 7 + k];
      zr[i * 3 + o] = acc;
    }
  EXPECT_LT(test::max_rel_error(z, Tensor::from_vector<double>(zr, {4, 3})), 1e-5);
}

// Grouped and dilated convs: PyTorch's weight shape [out, in/groups, k, k], parameter
// count out * (in/groups * k*k) + out (bias) and output size floor((H + 2p - d(k-1) - 1)/s)
// + 1, its init bound 1/sqrt(in/groups * k*k), its repr, and each group's outputs equal a
// plain conv of the group's channels.
TEST(Layers, GroupedAndDilatedConvShapesCountsAndInit) {
  struct Case {
    int64_t in, out;
    int k, stride, pad, dilation, groups;
    bool bias;
    int64_t params;  // sum(p.numel() for p in nn.Conv2d(...).parameters())
  };
  const std::vector<Case> cases = {
      {32, 32, 3, 1, 1, 1, 32, false, 288},   // MobileNet depthwise 3x3
      {64, 128, 3, 2, 1, 1, 4, true, 18560},  // 128*16*9 + 128
      {16, 48, 3, 1, 2, 2, 1, false, 6912},   // dilated, 48*16*9
      {12, 24, 5, 2, 4, 2, 6, true, 1224},    // 24*2*25 + 24
      {6, 6, 1, 1, 0, 1, 3, false, 12},       // grouped 1x1 (a ShuffleNet-style pointwise)
  };
  Generator g(11);
  for (const Case& c : cases) {
    Conv2d conv(c.in, c.out, c.k, c.stride, c.pad, c.bias, g, c.dilation, c.groups);
    const std::string what = conv.extra_repr();
    EXPECT_EQ(conv.weight().shape(), (Shape{c.out, c.in / c.groups, c.k, c.k})) << what;
    EXPECT_EQ(conv.num_parameters(), c.params) << what;
    EXPECT_EQ(conv.groups(), c.groups);
    EXPECT_EQ(conv.dilation(), c.dilation);
    const double bound = 1.0 / std::sqrt(double(c.in / c.groups * c.k * c.k));
    for (float v : conv.weight().to_vector<float>()) ASSERT_LE(std::fabs(v), bound) << what;
    if (c.bias) {
      for (float v : conv.bias().to_vector<float>()) ASSERT_LE(std::fabs(v), bound) << what;
    }
    const int64_t h = 13, w = 10;
    const Tensor x = test::rand({2, c.in, h, w}, 12);
    const Tensor y = conv(x);
    const int64_t span = int64_t{c.dilation} * (c.k - 1) + 1;
    EXPECT_EQ(y.shape(),
              (Shape{2, c.out, (h + 2 * c.pad - span) / c.stride + 1, (w + 2 * c.pad - span) / c.stride + 1}))
        << what;
    const int64_t cg = c.in / c.groups, og = c.out / c.groups;
    for (int64_t gi = 0; gi < c.groups; ++gi) {
      const Tensor yg =
          ops::conv2d(x.narrow(1, gi * cg, cg), conv.weight().narrow(0, gi * og, og),
                      c.bias ? conv.bias().narrow(0, gi * og, og) : Tensor(), c.stride, c.pad, c.dilation, 1);
      EXPECT_LT(test::max_rel_error(y.narrow(1, gi * og, og).contiguous(), yg), 1e-6)
          << what << " group " << gi;
    }
  }
  EXPECT_EQ(Conv2d(8, 8, 3, 1, 2, false, g, 2, 8).extra_repr(),
            "8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(2, 2), dilation=(2, 2), groups=8, bias=False");
  EXPECT_THROW(Conv2d(6, 4, 3, 1, 0, false, g, 1, 4), Error);  // 4 groups do not divide 6 channels
  EXPECT_THROW(Conv2d(4, 6, 3, 1, 0, false, g, 1, 4), Error);
  EXPECT_THROW(Conv2d(4, 4, 3, 1, 0, false, g, 0, 1), Error);
}

TEST(Layers, PoolsFlattenAndShapes) {
  // 1x1x4x4 = 0..15
  std::vector<float> v(16);
  for (int i = 0; i < 16; ++i) v[i] = float(i);
  Tensor x = Tensor::from_vector<float>(v, {1, 1, 4, 4});
  EXPECT_EQ(nn::MaxPool2d(2)(x).to_vector<float>(), (std::vector<float>{5, 7, 13, 15}));
  EXPECT_EQ(nn::AvgPool2d(2)(x).to_vector<float>(), (std::vector<float>{2.5f, 4.5f, 10.5f, 12.5f}));
  // 3/2 ceil mode: windows start at 0 and 2: out 2x2, the second one clipped.
  EXPECT_EQ(nn::MaxPool2d(3, 2, 0, true)(x).to_vector<float>(), (std::vector<float>{10, 11, 14, 15}));
  EXPECT_EQ(nn::GlobalAvgPool()(x).shape(), (Shape{1, 1}));
  EXPECT_NEAR(nn::GlobalAvgPool()(x).item(), 7.5, 1e-6);
  EXPECT_EQ(nn::Flatten()(Tensor::zeros({2, 3, 4, 5})).shape(), (Shape{2, 60}));
  EXPECT_EQ(nn::ReLU()(Tensor::from_vector<float>({-1, 2}, {2})).to_vector<float>(),
            (std::vector<float>{0, 2}));
}

// ---- train / eval behaviour ------------------------------------------------------------

TEST(Layers, BatchNormTrainUsesBatchStatsEvalUsesRunning) {
  BatchNorm2d bn(3, 1e-5, 0.1);
  bn.weight().copy_(Tensor::from_vector<float>({1, 2, 3}, {3}));
  bn.bias().copy_(Tensor::from_vector<float>({0, 1, -1}, {3}));
  Tensor x = test::rand({4, 3, 5, 5}, 21);
  auto xv = x.to_vector<double>();
  // Per-channel batch mean / biased and unbiased variance, by hand.
  std::vector<double> mean(3, 0), var(3, 0);
  const int per = 4 * 25;
  for (int n = 0; n < 4; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 25; ++i) mean[c] += xv[(n * 3 + c) * 25 + i] / per;
  for (int n = 0; n < 4; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 25; ++i) var[c] += std::pow(xv[(n * 3 + c) * 25 + i] - mean[c], 2) / per;

  bn.train();
  Tensor y = bn(x);
  auto yv = y.to_vector<double>();
  const double w[3] = {1, 2, 3}, b[3] = {0, 1, -1};
  double worst = 0;
  for (int n = 0; n < 4; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 25; ++i) {
        const size_t k = (n * 3 + c) * 25 + i;
        const double ref = (xv[k] - mean[c]) / std::sqrt(var[c] + 1e-5) * w[c] + b[c];
        worst = std::max(worst, std::fabs(yv[k] - ref));
      }
  EXPECT_LT(worst, 1e-4);
  auto rm = bn.running_mean().to_vector<double>(), rv = bn.running_var().to_vector<double>();
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(rm[c], 0.1 * mean[c], 1e-6);
    EXPECT_NEAR(rv[c], 0.9 + 0.1 * var[c] * per / (per - 1), 1e-6);
  }

  bn.eval();
  Tensor ye = bn(x);
  auto yev = ye.to_vector<double>();
  worst = 0;
  for (int n = 0; n < 4; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 25; ++i) {
        const size_t k = (n * 3 + c) * 25 + i;
        const double ref = (xv[k] - rm[c]) / std::sqrt(rv[c] + 1e-5) * w[c] + b[c];
        worst = std::max(worst, std::fabs(yev[k] - ref));
      }
  EXPECT_LT(worst, 1e-4);
  // Eval leaves the running statistics alone.
  EXPECT_EQ(bn.running_mean().to_vector<double>(), rm);
  EXPECT_EQ(bn.running_var().to_vector<double>(), rv);
}

TEST(Layers, DropoutTrainMasksEvalIsIdentity) {
  Generator g(77);
  nn::Dropout drop(0.25, g);
  Tensor x = Tensor::ones({4000});
  Tensor y = drop(x);
  EXPECT_EQ(g.offset(), 4000u);  // one counter per element
  int zeros = 0;
  for (float v : y.to_vector<float>()) {
    if (v == 0)
      ++zeros;
    else
      EXPECT_NEAR(v, 1 / 0.75, 1e-6);
  }
  EXPECT_NEAR(zeros / 4000.0, 0.25, 0.03);
  drop.eval();
  EXPECT_EQ(drop(x).to_vector<float>(), x.to_vector<float>());
  EXPECT_EQ(g.offset(), 4000u);
  // Same generator state, same mask.
  drop.train();
  g.set_state(77, 0);
  EXPECT_EQ(drop(x).to_vector<float>(), y.to_vector<float>());
}

// ---- the quantizer hook ---------------------------------------------------------------

struct Doubler : nn::WeightQuantizer {
  int calls = 0;
  Tensor quantize(const Tensor& latent) override {
    ++calls;
    return ops::scale(latent, 2.0);
  }
};

TEST(Layers, ConvQuantizerReplacesWeightAndPassesGradient) {
  Generator g(9);
  Conv2d conv(2, 3, 3, 1, 1, false, g);
  Tensor x = test::rand({1, 2, 5, 5}, 10);
  // Reference: the same conv with weight doubled.
  Tensor w2 = ops::scale(conv.weight().detach().clone(), 2.0);
  Tensor ref = ops::conv2d(x, w2, Tensor(), 1, 1);

  ops::sum(conv(x)).backward();
  const Tensor g_plain = conv.weight().grad().clone();
  conv.zero_grad();

  auto q = std::make_shared<Doubler>();
  conv.quantizer = q;
  Tensor y = conv(x);
  EXPECT_EQ(q->calls, 1);
  EXPECT_LT(test::max_rel_error(y, ref), 1e-6);
  ops::sum(y).backward();
  // d/dw of sum(conv(x, 2w)) = 2 * d/dw of sum(conv(x, w)).
  EXPECT_LT(test::max_rel_error(conv.weight().grad(), ops::scale(g_plain, 2.0)), 1e-6);
  EXPECT_NE(conv.extra_repr().find("quantized"), std::string::npos);
}

// ---- placement --------------------------------------------------------------------------

class ModuleDevice : public testing::TestWithParam<Device> {};

TEST_P(ModuleDevice, ToMovesInPlaceAndMatchesCpu) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  auto make = [] {
    Generator g(31);
    auto m = std::make_shared<Sequential>();
    m->push_back(std::make_shared<Conv2d>(3, 4, 3, 1, 1, false, g))
        .push_back(std::make_shared<BatchNorm2d>(4))
        .push_back(std::make_shared<nn::ReLU>())
        .push_back(std::make_shared<nn::GlobalAvgPool>())
        .push_back(std::make_shared<Linear>(4, 2, true, g));
    return m;
  };
  auto cpu_model = make();
  auto dev_model = make();
  auto before = dev_model->named_parameters();
  before[0].second->set_grad(Tensor::ones(before[0].second->shape()));
  dev_model->to(dev);
  auto after = dev_model->named_parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].second, before[i].second) << "slots are stable";
    EXPECT_EQ(after[i].second->device(), dev) << after[i].first;
    EXPECT_TRUE(after[i].second->requires_grad()) << after[i].first;
  }
  EXPECT_EQ(after[0].second->grad().device(), dev);
  for (auto& [n, t] : dev_model->named_buffers()) EXPECT_EQ(t->device(), dev) << n;
  dev_model->zero_grad();

  Tensor x = test::rand({2, 3, 6, 5}, 32);
  Tensor y_cpu = (*cpu_model)(x);
  Tensor y_dev = (*dev_model)(x.to(dev));
  EXPECT_LT(test::max_rel_error(y_dev.to(Device::cpu()), y_cpu), 1e-5);
  // Running statistics were updated the same way on both devices.
  auto sc = cpu_model->state_dict(), sd = dev_model->state_dict();
  for (size_t i = 0; i < sc.size(); ++i)
    EXPECT_LT(test::max_rel_error(sd[i].second.to(Device::cpu()), sc[i].second), 1e-5) << sc[i].first;
}

INSTANTIATE_TEST_SUITE_P(All, ModuleDevice, testing::ValuesIn(test::all_devices()), test::device_name);

}  // namespace
}  // namespace ttq
