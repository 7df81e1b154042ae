// The ternary layer and TTQ for a model (kernels/ternary_weight.h, models/ttq.h):
// dL/dWp and dL/dWn against central finite differences in float64 of a small
// conv net's cross-entropy, the latent gradient against its formula, the
// model switch (which layers, frozen first conv, scale init), the scale clamp,
// "at most three values +Wp, 0, -Wn" after every step, the checkpoint view and
// its inverse (including the seed's TTQ files and their zero fractions), and a
// TTQ training run on a small CNN that keeps its full-precision accuracy.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <set>

#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/nn/layers.h"
#include "engine/ops/ops.h"
#include "engine/optim/optimizer.h"
#include "kernels/scale_grad.h"
#include "kernels/ternarize.h"
#include "kernels/ternary_weight.h"
#include "models/model.h"
#include "models/ttq.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using kernels::WnGradMode;

// ---- gradients of a real loss ---------------------------------------------------------

// The net: conv(3->4, 3x3, pad 1) -> ReLU -> ternary conv(4->5, 3x3) -> global
// average pool -> linear(5->3) -> cross-entropy. No kink depends on Wp or Wn (the
// ReLU comes before the ternary conv), so finite differences in the scales are smooth.
struct TinyNet {
  Tensor x, w1, latent, fc, labels;
  explicit TinyNet(uint64_t seed) {
    x = test::rand({2, 3, 7, 7}, seed);
    w1 = test::rand({4, 3, 3, 3}, seed + 1);
    latent = test::rand({5, 4, 3, 3}, seed + 2);
    fc = test::rand({3, 5}, seed + 3);
    labels = Tensor::from_vector<int64_t>({2, 0}, {2});
  }
  Tensor loss(const Tensor& wq) const {
    const DType dt = wq.dtype();
    Tensor h = ops::relu(ops::conv2d(x.to(dt), w1.to(dt), Tensor(), 1, 1));
    h = ops::global_avg_pool2d(ops::conv2d(h, wq, Tensor(), 1, 0));
    return ops::cross_entropy(ops::linear(h, fc.to(dt), Tensor()), labels);
  }
};

TEST(TernaryWeight, ScaleGradientsMatchFiniteDifferencesOfConvNetLoss) {
  for (WnGradMode mode : {WnGradMode::Exact, WnGradMode::Seed}) {
    SCOPED_TRACE(kernels::wn_grad_mode_name(mode));
    const TinyNet net(500);
    const double t = 0.3;
    Tensor wp = Tensor::full({1}, 0.9), wn = Tensor::full({1}, 1.2);
    wp.set_requires_grad(true);
    wn.set_requires_grad(true);
    Tensor latent = net.latent.clone();
    latent.set_requires_grad(true);
    net.loss(kernels::ternary_weight(latent, wp, wn, t, mode)).backward();

    // Float64 loss as a function of (Wp, Wn) with the sets fixed by the latent weight.
    kernels::TernarizeOutputs o;
    o.codes = true;
    auto r = kernels::ternarize(net.latent, t, Tensor::ones({1}), Tensor::ones({1}), o);
    std::vector<double> pos, neg;
    for (uint8_t c : r.codes.to_vector<uint8_t>()) {
      pos.push_back(c == 1);
      neg.push_back(c == 2);
    }
    ASSERT_GT(std::accumulate(pos.begin(), pos.end(), 0.0), 0);
    ASSERT_GT(std::accumulate(neg.begin(), neg.end(), 0.0), 0);
    const Tensor pmask = Tensor::from_vector(pos, net.latent.shape());
    const Tensor nmask = Tensor::from_vector(neg, net.latent.shape());
    auto f = [&](const std::vector<Tensor>& in) {
      Tensor wq = ops::sub(ops::scale(pmask, in[0].item()), ops::scale(nmask, in[1].item()));
      return net.loss(wq).item();
    };
    const std::vector<Tensor> at = {Tensor::full({1}, 0.9, DType::F64), Tensor::full({1}, 1.2, DType::F64)};
    const double num_p = test::numeric_grad(f, at, 0).item();
    const double num_n = test::numeric_grad(f, at, 1).item();
    EXPECT_NEAR(wp.grad().item(), num_p, 1e-4 * std::max(1e-2, std::fabs(num_p)));
    // Exact mode is the true derivative; seed mode has the opposite sign.
    const double expect_n = mode == WnGradMode::Exact ? num_n : -num_n;
    EXPECT_NEAR(wn.grad().item(), expect_n, 1e-4 * std::max(1e-2, std::fabs(num_n)));
    EXPECT_GT(std::fabs(num_p), 1e-4);
    EXPECT_GT(std::fabs(num_n), 1e-4);

    // The latent gradient is the straight-through rule applied to G = dL/dWq.
    Tensor wq_leaf = kernels::ternarize(net.latent, t, wp.detach(), wn.detach()).wq;
    wq_leaf.set_requires_grad(true);
    net.loss(wq_leaf).backward();
    std::vector<float> g = wq_leaf.grad().to_vector<float>(), w = net.latent.to_vector<float>();
    std::vector<float> expect(g.size());
    double sp, sn;
    kernels::scale_grad_ref(g.data(), w.data(), static_cast<int64_t>(g.size()),
                            static_cast<float>(r.delta.item()), 0.9f, 1.2f, mode, expect.data(), &sp, &sn);
    EXPECT_EQ(latent.grad().to_vector<float>(), expect);
  }
}

TEST(TernaryWeight, NoGraphWhenNothingRequiresGrad) {
  Tensor w = test::rand({4, 4}, 1), s = Tensor::ones({1});
  Tensor wq = kernels::ternary_weight(w, s, s, 0.05);
  EXPECT_FALSE(wq.requires_grad());
  Tensor wp = Tensor::ones({1});
  wp.set_requires_grad(true);
  {
    autograd::NoGradGuard guard;
    EXPECT_FALSE(kernels::ternary_weight(w, wp, s, 0.05).requires_grad());
  }
  EXPECT_TRUE(kernels::ternary_weight(w, wp, s, 0.05).requires_grad());
}

// ---- the model switch -------------------------------------------------------------------

constexpr int kSide = 10;
constexpr int kClasses = 4;

// conv(first) BN ReLU pool | conv BN ReLU | conv BN ReLU pool | flatten linear.
std::shared_ptr<nn::Sequential> small_cnn(Generator& gen) {
  auto m = std::make_shared<nn::Sequential>();
  m->push_back(std::make_shared<nn::Conv2d>(1, 8, 3, 1, 1, false, gen))  // "0"
      .push_back(std::make_shared<nn::BatchNorm2d>(8))
      .push_back(std::make_shared<nn::ReLU>())
      .push_back(std::make_shared<nn::MaxPool2d>(2))                        // 10 -> 5
      .push_back(std::make_shared<nn::Conv2d>(8, 16, 3, 1, 1, false, gen))  // "4"
      .push_back(std::make_shared<nn::BatchNorm2d>(16))
      .push_back(std::make_shared<nn::ReLU>())
      .push_back(std::make_shared<nn::Conv2d>(16, 16, 3, 1, 1, false, gen))  // "7"
      .push_back(std::make_shared<nn::BatchNorm2d>(16))
      .push_back(std::make_shared<nn::ReLU>())
      .push_back(std::make_shared<nn::MaxPool2d>(2))  // 5 -> 2
      .push_back(std::make_shared<nn::Flatten>())
      .push_back(std::make_shared<nn::Linear>(16 * 4, kClasses, true, gen));  // "12"
  return m;
}

models::TtqOptions cnn_options() {
  models::TtqOptions o;
  o.first_conv = "0";
  o.classifier = "12";
  return o;
}

const Tensor& view_value(const io::NamedTensors& view, const std::string& name) {
  for (const auto& [n, t] : view)
    if (n == name) return t;
  TTQ_THROW() << "no " << name;
}

std::set<float> distinct(const Tensor& t) {
  std::vector<float> v = t.to_vector<float>();
  return std::set<float>(v.begin(), v.end());
}

// Every quantized layer's forward weight holds only values of {+Wp, 0, -Wn}.
void expect_ternary(const models::TtqModel& ttq) {
  autograd::NoGradGuard guard;
  for (const models::TtqLayer& l : ttq.layers) {
    const float wp = static_cast<float>(l.quantizer->wp().item()),
                wn = static_cast<float>(l.quantizer->wn().item());
    EXPECT_GT(wp, 0.0f) << l.name;
    EXPECT_GT(wn, 0.0f) << l.name;
    std::set<float> values = distinct(l.conv->effective_weight());
    EXPECT_LE(values.size(), 3u) << l.name;
    for (float v : values) EXPECT_TRUE(v == wp || v == 0.0f || v == -wn) << l.name << " holds " << v;
  }
}

TEST(TtqModel, QuantizesTheRightLayersAndFreezesTheFirstConv) {
  Generator gen(1);
  auto net = small_cnn(gen);
  const Tensor w4 = net->at<nn::Conv2d>(4)->weight().clone();
  models::TtqModel ttq = models::quantize_model(*net, cnn_options());
  ASSERT_EQ(ttq.layers.size(), 2u);
  EXPECT_EQ(ttq.layers[0].name, "4");
  EXPECT_EQ(ttq.layers[1].name, "7");
  EXPECT_EQ(ttq.options.scale_init, models::ScaleInit::Ones);
  EXPECT_FALSE(net->at<nn::Conv2d>(0)->weight().requires_grad());
  EXPECT_EQ(net->at<nn::Conv2d>(0)->quantizer, nullptr);
  EXPECT_TRUE(net->at<nn::Conv2d>(4)->weight().requires_grad());
  // The latent weight is the old weight; the scales are parameters under the layer's name.
  EXPECT_EQ(net->at<nn::Conv2d>(4)->weight().to_vector<float>(), w4.to_vector<float>());
  std::set<std::string> names;
  for (auto& [name, t] : net->named_parameters()) names.insert(name);
  for (const char* n : {"4.wp", "4.wn", "7.wp", "7.wn"}) EXPECT_TRUE(names.count(n)) << n;
  EXPECT_EQ(ttq.layers[0].quantizer->wp().item(), 1.0);
  EXPECT_EQ(models::ttq_layers(*net).size(), 2u);
  // Twice is a programming error.
  EXPECT_THROW(models::quantize_model(*net, cnn_options()), Error);
  // Parameter groups: latent, scales, classifier weight, the rest; the frozen conv in none.
  models::TtqParamGroups g = models::ttq_param_groups(*net, ttq);
  EXPECT_EQ(g.latent.size(), 2u);
  EXPECT_EQ(g.scales.size(), 4u);
  EXPECT_EQ(g.classifier_weight.size(), 1u);
  EXPECT_EQ(g.rest.size(), 3u * 2 + 1);  // three BNs' weight and bias, the classifier bias
  EXPECT_EQ(g.latent[0].storage(), net->at<nn::Conv2d>(4)->weight().storage());
}

TEST(TtqModel, MeanScaleInit) {
  Generator gen(2);
  auto net = small_cnn(gen);
  const std::vector<float> w = net->at<nn::Conv2d>(7)->weight().to_vector<float>();
  models::TtqOptions o = cnn_options();
  o.scale_init = models::ScaleInit::Mean;
  o.t = 0.2;
  models::TtqModel ttq = models::quantize_model(*net, o);
  EXPECT_EQ(ttq.options.scale_init, models::ScaleInit::Mean);
  float m = 0;
  for (float v : w) m = std::max(m, std::fabs(v));
  const float delta = 0.2f * m;
  double sp = 0, sn = 0;
  int np = 0, nn = 0;
  for (float v : w) {
    if (v > delta) sp += v, np++;
    if (v < -delta) sn -= v, nn++;
  }
  EXPECT_FLOAT_EQ(static_cast<float>(ttq.layers[1].quantizer->wp().item()), static_cast<float>(sp / np));
  EXPECT_FLOAT_EQ(static_cast<float>(ttq.layers[1].quantizer->wn().item()), static_cast<float>(sn / nn));
}

TEST(TtqModel, ThreeModelsQuantizeEveryConvButFirstAndClassifier) {
  const std::pair<const char*, size_t> expected[] = {
      {"small_densenet", 62}, {"squeezenet", 24}, {"densenet121", 119}};
  for (const auto& [arch, layers] : expected) {
    models::ModelConfig cfg;
    cfg.num_classes = 10;
    Generator gen(3);
    models::ModelPtr m = models::create(arch, cfg, gen);
    models::TtqModel ttq = models::quantize_model(*m, models::TtqOptions{});
    EXPECT_EQ(ttq.layers.size(), layers) << arch;
    EXPECT_EQ(ttq.options.first_conv, m->first_conv_name());
    EXPECT_FALSE(m->first_conv().weight().requires_grad()) << arch;
    for (const models::TtqLayer& l : ttq.layers) EXPECT_NE(l.name.rfind("classifier", 0), 0u) << l.name;
  }
}

TEST(TtqModel, ClampKeepsScalesPositiveThroughSteps) {
  Generator gen(4);
  auto net = small_cnn(gen);
  models::TtqModel ttq = models::quantize_model(*net, cnn_options());
  // A huge learning rate on the scales alone drives them through zero.
  optim::SGD opt(models::ttq_param_groups(*net, ttq).scales, optim::SGDOptions{.lr = 1e4});
  models::add_ttq_hooks(opt, ttq);
  Generator data(5);
  bool clamped = false;
  for (int step = 0; step < 5; ++step) {
    Tensor x = Tensor::randn({8, 1, kSide, kSide}, data);
    Tensor y = Tensor::from_vector<int64_t>({0, 1, 2, 3, 0, 1, 2, 3}, {8});
    opt.zero_grad();
    ops::cross_entropy((*net)(x), y).backward();
    opt.step();
    for (const auto& l : ttq.layers) {
      clamped |= l.quantizer->wp().item() == static_cast<double>(1e-6f);
      clamped |= l.quantizer->wn().item() == static_cast<double>(1e-6f);
    }
    expect_ternary(ttq);
  }
  EXPECT_TRUE(clamped);
  ttq.layers[0].quantizer->wp().fill_(-3.0);
  ttq.layers[0].quantizer->wn().fill_(NAN);
  models::clamp_scales(ttq);
  EXPECT_EQ(ttq.layers[0].quantizer->wp().item(), static_cast<double>(1e-6f));
  EXPECT_EQ(ttq.layers[0].quantizer->wn().item(), static_cast<double>(1e-6f));
}

// ---- the generated task and training ------------------------------------------------------

struct Dataset {
  Tensor x, y;
};

// Four classes of noisy 10x10 images: a horizontal bar, a vertical bar, a
// diagonal, or a plus sign, each at a random place.
Dataset make_task(int64_t n, uint64_t seed) {
  Generator g(seed);
  std::vector<float> img(static_cast<size_t>(n * kSide * kSide), 0.0f);
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = static_cast<int64_t>(g.below(kClasses));
    labels[static_cast<size_t>(i)] = c;
    float* p = &img[static_cast<size_t>(i * kSide * kSide)];
    const int r = 2 + static_cast<int>(g.below(6)), s = 2 + static_cast<int>(g.below(6));
    for (int k = -2; k <= 2; ++k) {
      if (c == 0) p[r * kSide + s + k] = 1;
      if (c == 1) p[(r + k) * kSide + s] = 1;
      if (c == 2) p[(r + k) * kSide + s + k] = 1;
      if (c == 3 && (k == -1 || k == 1)) p[r * kSide + s + k] = p[(r + k) * kSide + s] = 1;
      if (c == 3 && k == 0) p[r * kSide + s] = 1;
    }
    for (int k = 0; k < kSide * kSide; ++k) p[k] += static_cast<float>(0.3 * g.normal());
  }
  return {Tensor::from_vector(img, {n, 1, kSide, kSide}), Tensor::from_vector(labels, {n})};
}

void train_epochs(nn::Module& net, optim::Optimizer& opt, const Dataset& d, int epochs, int64_t batch,
                  const models::TtqModel* ttq) {
  net.train();
  const int64_t n = d.y.size(0);
  for (int e = 0; e < epochs; ++e) {
    for (int64_t s = 0; s + batch <= n; s += batch) {
      opt.zero_grad();
      ops::cross_entropy(net(d.x.narrow(0, s, batch)), d.y.narrow(0, s, batch)).backward();
      opt.step();
      if (ttq != nullptr) expect_ternary(*ttq);
    }
  }
}

double accuracy(nn::Module& net, const Dataset& d) {
  autograd::NoGradGuard guard;
  net.eval();
  return static_cast<double>(ops::topk_correct(net(d.x), d.y, 1)) / d.y.size(0);
}

TEST(TtqTraining, SmallCnnKeepsAccuracy) {
  const Dataset train = make_task(512, 10), test = make_task(400, 11);
  Generator gen(12);
  auto net = small_cnn(gen);
  {
    optim::Adam opt(net->parameters(), optim::AdamOptions{.lr = 1e-2});
    train_epochs(*net, opt, train, 5, 32, nullptr);
  }
  const double fp = accuracy(*net, test);
  ASSERT_GE(fp, 0.9) << "the full-precision net did not learn the task";

  models::TtqModel ttq = models::quantize_model(*net, cnn_options());
  const double right_after = accuracy(*net, test);
  auto opt = models::make_ttq_optimizer(*net, ttq, 1e-3);
  EXPECT_EQ(opt->num_groups(), 4u);
  const Tensor first_before = net->at<nn::Conv2d>(0)->weight().clone();
  train_epochs(*net, *opt, train, 4, 32, &ttq);
  const double tq = accuracy(*net, test);
  const models::TtqStats stats = models::ttq_stats(ttq);
  std::printf(
      "small CNN: fp top-1 %.3f, ternary before TTQ %.3f, after %.3f; zero fraction %.3f, mean Wp %.3f, "
      "mean Wn %.3f\n",
      fp, right_after, tq, stats.zero_fraction, stats.mean_wp, stats.mean_wn);
  RecordProperty("zero_fraction", std::to_string(stats.zero_fraction));
  EXPECT_GE(tq, fp - 0.04);
  EXPECT_GT(stats.zero_fraction, 0.05);
  EXPECT_LT(stats.zero_fraction, 0.95);
  EXPECT_EQ(stats.quantized_weights, 8 * 16 * 9 + 16 * 16 * 9);
  // The frozen first conv did not move.
  EXPECT_EQ(net->at<nn::Conv2d>(0)->weight().to_vector<float>(), first_before.to_vector<float>());
}

// docs/ttq.md, "The sign of dL/dWn": behind BatchNorm the loss does not depend
// on the layer's scale, so Wp sum_P G = Wn sum_N G. With the seed's sign and
// Wp = Wn the two scale gradients then coincide and Adam keeps the scales tied
// (as in the seed's files); with the exact sign they move apart.
TEST(TtqTraining, SeedSignKeepsScalesTiedBehindBatchNorm) {
  const Dataset d = make_task(256, 40);
  double gap[2] = {0, 0};
  for (int exact = 0; exact < 2; ++exact) {
    Generator gen(41);
    auto net = small_cnn(gen);
    models::TtqOptions o = cnn_options();
    o.wn_grad = exact ? WnGradMode::Exact : WnGradMode::Seed;
    models::TtqModel ttq = models::quantize_model(*net, o);
    auto opt = models::make_ttq_optimizer(*net, ttq, 1e-2);
    train_epochs(*net, *opt, d, 1, 32, &ttq);
    for (const auto& l : ttq.layers)
      gap[exact] = std::max(gap[exact], std::fabs(l.quantizer->wp().item() - l.quantizer->wn().item()));
  }
  std::printf("max wp - wn: seed %.3g, exact %.3g\n", gap[0], gap[1]);
  EXPECT_LT(gap[0], 1e-4) << "seed sign";
  EXPECT_GT(gap[1], 1e-2) << "exact sign";
}

// ---- checkpoints ----------------------------------------------------------------------

TEST(TtqCheckpoint, ViewRoundTripsThroughAFile) {
  const Dataset d = make_task(64, 20);
  Generator gen(21);
  auto net = small_cnn(gen);
  models::TtqOptions o = cnn_options();
  o.scale_init = models::ScaleInit::Mean;
  o.wn_grad = WnGradMode::Seed;
  models::TtqModel ttq = models::quantize_model(*net, o);
  auto opt = models::make_ttq_optimizer(*net, ttq, 1e-2);
  train_epochs(*net, *opt, d, 1, 16, &ttq);

  io::NamedTensors view = models::ttq_checkpoint_view(*net, ttq);
  std::map<std::string, Tensor> by_name(view.begin(), view.end());
  for (const auto& l : ttq.layers) {
    const Tensor& w = by_name.at(l.name + ".weight");
    const float wp = static_cast<float>(l.quantizer->wp().item()),
                wn = static_cast<float>(l.quantizer->wn().item());
    for (float v : distinct(w)) EXPECT_TRUE(v == wp || v == 0.0f || v == -wn);
    EXPECT_EQ(by_name.at(l.name + ".latent_weight").to_vector<float>(), l.conv->weight().to_vector<float>());
  }
  const std::string path = std::string(TTQ_BINARY_DIR) + "/ttq_view_roundtrip.safetensors";
  io::write_safetensors(path, view, models::ttq_metadata(ttq.options));
  io::SafeTensors file = io::read_safetensors(path);
  std::remove(path.c_str());

  Generator gen2(22);
  auto other = small_cnn(gen2);
  models::TtqOptions o2 = models::ttq_options_from_metadata(file.metadata(), cnn_options(), path);
  EXPECT_EQ(o2.scale_init, models::ScaleInit::Mean);
  EXPECT_EQ(o2.wn_grad, WnGradMode::Seed);
  EXPECT_EQ(o2.t, 0.05);
  models::TtqModel ttq2 = models::quantize_model(*other, o2);
  models::load_ttq_checkpoint(*other, ttq2, file.tensors(), path);
  auto a = net->state_dict(), b = other->state_dict();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(a[i].second.to_vector<float>(), b[i].second.to_vector<float>()) << a[i].first;
  }
  EXPECT_EQ(accuracy(*net, d), accuracy(*other, d));
}

TEST(TtqCheckpoint, RejectsIncompleteOrNonTernaryState) {
  Generator gen(30);
  auto net = small_cnn(gen);
  models::TtqModel ttq = models::quantize_model(*net, cnn_options());
  io::NamedTensors view = models::ttq_checkpoint_view(*net, ttq);
  io::NamedTensors no_wp, fp_weights;
  for (auto& [name, t] : view) {
    if (name != "4.wp") no_wp.emplace_back(name, t);
    if (name.find(".latent_weight") == std::string::npos && name.find(".wp") == std::string::npos &&
        name.find(".wn") == std::string::npos)
      fp_weights.emplace_back(name, name == "7.weight" ? test::rand(t.shape(), 31) : t);
  }
  try {
    models::load_ttq_checkpoint(*net, ttq, no_wp, "ckpt.safetensors");
    FAIL() << "accepted a latent weight without its scale";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("ckpt.safetensors: '4.latent_weight' without '4.wp'"),
              std::string::npos)
        << e.what();
  }
  try {
    models::load_ttq_checkpoint(*net, ttq, fp_weights, "fp.safetensors");
    FAIL() << "accepted a full-precision weight as ternary";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'7.weight'"), std::string::npos) << e.what();
  }
  // A ternary weight holding a NaN: its sign would silently be 0, so it is refused.
  io::NamedTensors nan_weights;
  for (auto& [name, t] : fp_weights) {
    Tensor v = name == "7.weight" ? view_value(view, "7.weight").to(Device::cpu()).clone() : t;
    if (name == "7.weight") v.data<float>()[0] = NAN;
    nan_weights.emplace_back(name, v);
  }
  try {
    models::load_ttq_checkpoint(*net, ttq, nan_weights, "nan.safetensors");
    FAIL() << "accepted a NaN weight";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("nan.safetensors: '7.weight' holds NaN at element 0"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(models::ttq_options_from_metadata({{"ttq.t", "abc"}}, {}, "x"), InputError);
  EXPECT_THROW(models::ttq_options_from_metadata({{"ttq.scale_init", "zeros"}}, {}, "x"), InputError);
}

// The seed's TTQ files hold only the ternary values; loaded into a quantized
// model they ternarize back to the same bits, and the zero counts match
// tests/fixtures/seed/README.md.
TEST(TtqCheckpoint, SeedTernaryFilesLoadAndReproduceTheirStatistics) {
  struct Case {
    const char* arch;
    const char* file;
    double t;
    size_t layers;
    int64_t quantized, zeros;
  };
  const Case cases[] = {{"small_densenet", "small_densenet_ttq.safetensors", 0.05, 62, 381024, 145691},
                        {"squeezenet", "squeezenet_ttq.safetensors", 0.15, 24, 717824, 459891}};
  for (const Case& c : cases) {
    const std::string path = test::seed_dir() + "/" + c.file;
    io::SafeTensors file = io::read_safetensors(path);
    models::ModelPtr m = models::create(c.arch);
    models::TtqOptions o;
    o.t = c.t;
    models::TtqModel ttq = models::quantize_model(*m, o);
    ASSERT_EQ(ttq.layers.size(), c.layers);
    models::load_ttq_checkpoint(*m, ttq, file.tensors(), path);
    const models::TtqStats s = models::ttq_stats(ttq);
    EXPECT_EQ(s.quantized_weights, c.quantized) << c.arch;
    EXPECT_EQ(s.zeros, c.zeros) << c.arch;
    std::printf("%s: %zu ternary layers, zero fraction %.4f, mean Wp %.4f, mean Wn %.4f\n", c.arch,
                s.layers.size(), s.zero_fraction, s.mean_wp, s.mean_wn);
    autograd::NoGradGuard guard;
    for (const models::TtqLayer& l : ttq.layers) {
      EXPECT_EQ(l.conv->effective_weight().to_vector<float>(), file.at(l.name + ".weight").to_vector<float>())
          << l.name;
    }
    // The view gives back the file's weights under their own names.
    io::NamedTensors view = models::ttq_checkpoint_view(*m, ttq);
    std::map<std::string, Tensor> by_name(view.begin(), view.end());
    for (const auto& [name, t] : file.tensors())
      EXPECT_EQ(by_name.at(name).to_vector<float>(), t.to_vector<float>()) << name;
  }
}

TEST(TtqCheckpoint, FullPrecisionSeedFileIsNotTernary) {
  const std::string path = test::seed_dir() + "/squeezenet_fp.safetensors";
  io::SafeTensors file = io::read_safetensors(path);
  models::ModelPtr m = models::create("squeezenet");
  models::TtqModel ttq = models::quantize_model(*m, models::TtqOptions{});
  EXPECT_THROW(models::load_ttq_checkpoint(*m, ttq, file.tensors(), path), InputError);
}

// ---- CUDA ----------------------------------------------------------------------------

TEST(TtqLayerCuda, GradientsMatchCpu) {
  const Device cuda = Device::cuda(0);
  TTQ_SKIP_IF_NO_DEVICE(cuda);
  const TinyNet net(600);
  Tensor out[2][3];
  for (int d = 0; d < 2; ++d) {
    const Device dev = d == 0 ? Device::cpu() : cuda;
    Tensor wp = Tensor::full({1}, 0.9, DType::F32, dev), wn = Tensor::full({1}, 1.2, DType::F32, dev);
    Tensor latent = net.latent.to(dev);
    for (Tensor* t : {&wp, &wn, &latent}) t->set_requires_grad(true);
    Tensor g = test::rand({5, 4, 3, 3}, 601, DType::F32, dev);
    Tensor wq = kernels::ternary_weight(latent, wp, wn, 0.3);
    ops::sum(ops::mul(wq, g)).backward();
    out[d][0] = latent.grad().to(Device::cpu());
    out[d][1] = wp.grad().to(Device::cpu());
    out[d][2] = wn.grad().to(Device::cpu());
  }
  EXPECT_EQ(out[1][0].to_vector<float>(), out[0][0].to_vector<float>());
  EXPECT_NEAR(out[1][1].item(), out[0][1].item(), 1e-6 * std::fabs(out[0][1].item()) + 1e-6);
  EXPECT_NEAR(out[1][2].item(), out[0][2].item(), 1e-6 * std::fabs(out[0][2].item()) + 1e-6);
}

}  // namespace
}  // namespace ttq
