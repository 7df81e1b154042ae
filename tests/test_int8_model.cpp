// Whole-model int8 inference (docs/int8.md, "The whole model"): calibration
// (clipping ranges and scales from hand-built histograms, the observed tensors
// against the float model's conv inputs, images from the training split only),
// the packed file with activation scales (round trip, an older file without them
// loading as float, every defect one InputError), the int8 plan against a float
// simulation of the same quantization (the float model with each quantized
// conv's input quantized and dequantized), every int8 micro-kernel giving the same
// bits, --precision selection and its errors in the library and the built tools.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "app/calibrate.h"
#include "app/infer.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/ops/ops.h"
#include "kernels/int8_conv.h"
#include "models/packed.h"
#include "tests/test_util.h"
#include "train/evaluate.h"

namespace ttq {
namespace {

namespace fs = std::filesystem;
using kernels::Int8Quant;
using models::CalibMethod;
using models::Precision;

const std::string kSeed = test::seed_dir();

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("ttq_int8") {}
};

// ---- calibration arithmetic ------------------------------------------------------------

models::ActHistogram histogram_of(const std::vector<double>& values) {
  models::ActHistogram h;
  h.lo = *std::min_element(values.begin(), values.end());
  h.hi = *std::max_element(values.begin(), values.end());
  h.counts.assign(models::ActHistogram::kBins, 0.0);
  const double w = (h.hi - h.lo) / models::ActHistogram::kBins;
  for (double v : values) {
    const int b = std::clamp(static_cast<int>((v - h.lo) / w), 0, models::ActHistogram::kBins - 1);
    h.counts[static_cast<size_t>(b)] += 1;
  }
  h.values = static_cast<int64_t>(values.size());
  return h;
}

TEST(Int8Calibration, ScalesAndZeroPointsOfHandCheckedRanges) {
  // [0, 2.55]: 255 steps of 0.01 from q = -128.
  Int8Quant q = models::quant_of_range(0, 2.55);
  EXPECT_FLOAT_EQ(q.scale, 0.01f);
  EXPECT_EQ(q.zero_point, -128);
  // [-1, 3]: scale 4/255; -128 - (-1) / (4/255) = -128 + 63.75 -> -64.
  q = models::quant_of_range(-1, 3);
  EXPECT_FLOAT_EQ(q.scale, 4.0f / 255.0f);
  EXPECT_EQ(q.zero_point, -64);
  // Symmetric [-1.275, 1.275]: zero point round(-128 + 127.5) = round(-0.5) = 0 (half to even).
  q = models::quant_of_range(-1.275, 1.275);
  EXPECT_EQ(q.zero_point, 0);
  // All zero: any scale represents it; 1 and zero point 0.
  q = models::quant_of_range(0, 0);
  EXPECT_EQ(q.scale, 1.0f);
  EXPECT_EQ(q.zero_point, 0);
  // Real 0 is exact in every case above: scale * (round(0 / scale) + zp - zp) = 0.
}

TEST(Int8Calibration, MaxPercentileAndMseRangesOfAKnownDistribution) {
  // 100000 values uniform on [0, 1) and 5 outliers at 100: max keeps the outliers,
  // the 99.99th percentile (10 values above it) lands within the bulk.
  std::vector<double> v;
  for (int i = 0; i < 100000; ++i) v.push_back((i + 0.5) / 100000.0);
  for (int i = 0; i < 5; ++i) v.push_back(100.0);
  const models::ActHistogram h = histogram_of(v);
  auto [lo, hi] = models::choose_range(h, CalibMethod::Max);
  EXPECT_EQ(lo, 0.0);
  EXPECT_DOUBLE_EQ(hi, 100.0);
  std::tie(lo, hi) = models::choose_range(h, CalibMethod::Percentile);
  EXPECT_EQ(lo, 0.0);  // no negative values: the range starts at 0
  // The 0.9999 quantile of 100005 values is the 99995th value, 0.99995 ... within one bin (100/2048).
  EXPECT_NEAR(hi, 1.0, 100.0 / 2048);
  // MSE (nearly) keeps them: clipping at 1 costs 5 * 99^2 = 49005, the rounding error
  // of the full range only 100000 * (100/255)^2 / 12 = 1282.
  std::tie(lo, hi) = models::choose_range(h, CalibMethod::Mse);
  EXPECT_EQ(lo, 0.0);
  EXPECT_GT(hi, 90.0);
  // An exponential bulk (quantiles of Exp(1), max 12.2): MSE clips part of its tail, but
  // less than the 99.9% quantile (6.9); the 99.99% quantile is 9.21 (the tail's bins are
  // sparse, so the interpolation is good to a few bins).
  std::vector<double> e;
  for (int i = 0; i < 100000; ++i) e.push_back(-std::log(1.0 - (i + 0.5) / 100000.0));
  const models::ActHistogram he = histogram_of(e);
  const double mse_hi = models::choose_range(he, CalibMethod::Mse).second;
  EXPECT_GT(mse_hi, 6.9);
  EXPECT_LT(mse_hi, 12.0);
  EXPECT_NEAR(models::choose_range(he, CalibMethod::Percentile).second, -std::log(1e-4), 0.1);
  // A symmetric tensor keeps its sign: [-2, 2] with max.
  const models::ActHistogram s = histogram_of({-2.0, -1.0, 0.5, 2.0});
  std::tie(lo, hi) = models::choose_range(s, CalibMethod::Max);
  EXPECT_EQ(lo, -2.0);
  EXPECT_EQ(hi, 2.0);
  // A strictly positive tensor still holds 0.
  std::tie(lo, hi) = models::choose_range(histogram_of({1.0, 2.0, 3.0}), CalibMethod::Max);
  EXPECT_EQ(lo, 0.0);
  EXPECT_EQ(hi, 3.0);
}

// A model of `arch` with random ternary weights and non-trivial BN statistics.
io::NamedTensors random_ternary_weights(models::Model& model, uint64_t seed) {
  std::set<std::string> quant;
  for (auto& [name, conv] : model.quantizable_convs()) quant.insert(name + ".weight");
  io::NamedTensors sd;
  Generator g(seed);
  for (auto& [name, t] : model.state_dict()) {
    Tensor v = t.clone();
    if (quant.count(name)) {
      const float a = 1.2f / std::sqrt(float(v.numel() / v.size(0))), b = 0.8f * a;
      float* p = v.data<float>();
      for (int64_t i = 0; i < v.numel(); ++i) p[i] = p[i] > 0.3f * a ? a : (p[i] < -0.3f * a ? -b : 0.0f);
    }
    if (name.find("running_var") != std::string::npos) v.copy_(Tensor::uniform(v.shape(), g, 0.5, 2.0));
    if (name.find("running_mean") != std::string::npos) v.copy_(Tensor::uniform(v.shape(), g, -0.3, 0.3));
    if (name.find("norm") != std::string::npos && name.find(".bias") != std::string::npos)
      v.copy_(Tensor::uniform(v.shape(), g, -0.2, 0.2));
    sd.emplace_back(name, v);
  }
  models::load_weights(model, sd, "random");
  model.eval();
  return sd;
}

// The float model run node by node with each quantized conv's input replaced by its
// fake quantization dequantize(quantize(x)) under `quant` (by layer name); a 1x1 conv
// that only a 2x2 / 2 average pool reads pools first (as the packed runner does, exact
// in real arithmetic) and quantizes the pooled input. `observe` (when given) receives
// each quantized conv's input before quantization; an empty `quant` runs the float model.
Tensor fake_quant_forward(models::Model& model, const Tensor& x,
                          const std::map<std::string, Int8Quant>& quant,
                          const std::function<void(const std::string&, const Tensor&)>& observe = nullptr) {
  std::set<std::string> quantized;
  for (auto& [name, conv] : model.quantizable_convs()) quantized.insert(name);
  using models::NodeKind;
  autograd::NoGradGuard ng;
  const models::Graph& g = model.graph();
  const auto readers = g.consumers();
  std::vector<Tensor> v(static_cast<size_t>(g.size()));
  std::vector<char> done(static_cast<size_t>(g.size()), 0);
  v[0] = x;
  for (int i = 1; i < g.size(); ++i) {
    if (done[static_cast<size_t>(i)]) continue;
    const models::Node& n = g.node(i);
    std::vector<Tensor> in;
    for (int j : n.inputs) in.push_back(v[static_cast<size_t>(j)]);
    if (n.kind == NodeKind::Concat) {
      v[static_cast<size_t>(i)] = in.size() == 1 ? in[0] : ops::concat(in, 1);
    } else if (n.kind == NodeKind::Add) {
      v[static_cast<size_t>(i)] = ops::add(in[0], in[1]);
    } else if (n.kind == NodeKind::Conv2d && quantized.count(n.name)) {
      const auto& r = readers[static_cast<size_t>(i)];
      const bool pool_first = n.conv.kernel == 1 && n.conv.stride == 1 && n.conv.padding == 0 &&
                              n.conv.groups == 1 && r.size() == 1 &&
                              g.node(r[0]).kind == NodeKind::AvgPool2d && g.node(r[0]).pool.kernel == 2 &&
                              g.node(r[0]).pool.stride == 2 && g.node(r[0]).pool.padding == 0;
      Tensor xin = pool_first ? model.module(r[0])->forward(in[0]) : in[0];
      if (observe) observe(n.name, xin);
      Tensor fq = xin;
      if (!quant.empty()) {
        const Int8Quant q = quant.at(n.name);
        fq = kernels::dequantize_int8(kernels::quantize_int8(xin.contiguous(), q), q);
      }
      const Tensor y = model.module(i)->forward(fq);
      v[static_cast<size_t>(i)] = y;
      if (pool_first) v[static_cast<size_t>(r[0])] = y, done[static_cast<size_t>(r[0])] = 1;
    } else {
      v[static_cast<size_t>(i)] = model.module(i)->forward(in[0]);
    }
  }
  return v[static_cast<size_t>(g.output())];
}

struct Net {
  models::ModelPtr model;
  models::PackedContent packed;
  Tensor calib, input;  // calibration images, evaluation inputs
};

Net random_net(const std::string& arch, int64_t channels, int64_t size, uint64_t seed) {
  models::ModelConfig cfg;
  cfg.in_channels = channels;
  cfg.num_classes = 10;
  cfg.input_size = size;
  Generator g(seed);
  Net n;
  n.model = models::create(arch, cfg, g);
  const io::NamedTensors sd = random_ternary_weights(*n.model, seed + 1);
  n.packed = models::pack_tensors(sd, {}, arch, "random");
  n.calib = test::rand({24, channels, size, size}, seed + 2);
  n.input = test::rand({3, channels, size, size}, seed + 3);
  return n;
}

Net seed_net(const std::string& file, const std::string& arch) {
  static std::map<std::string, io::SafeTensors> cache;
  auto it = cache.find(file);
  if (it == cache.end())
    it = cache.emplace(file, io::read_safetensors(kSeed + "/" + file + ".safetensors")).first;
  Net n;
  n.model = models::create(arch);
  models::load_weights(*n.model, it->second.tensors(), file);
  n.model->eval();
  n.packed = models::pack_tensors(it->second.tensors(), it->second.metadata(), arch, file);
  // The seed has no training images; its 4 reference inputs calibrate and are evaluated.
  n.input = io::read_safetensors(kSeed + "/reference_io.safetensors").at("input");
  n.calib = n.input;
  return n;
}

std::unique_ptr<models::PackedModel> load(const models::PackedContent& c, models::PackedRunOptions o = {}) {
  return models::PackedModel::from_tensors(c.tensors, c.metadata, "", Device::cpu(), "net", o);
}

std::map<std::string, Int8Quant> quant_map(const models::Calibration& c) {
  std::map<std::string, Int8Quant> m;
  for (const auto& l : c.layers) m[l.name] = l.quant;
  return m;
}

// The tensors calibration observes are the quantized convs' inputs in the float model:
// with Max, each layer's observed min / max are those of the float model's conv input.
TEST(Int8Calibration, ObservesEveryQuantizedConvsInputAsTheFloatModelComputesIt) {
  for (const std::string arch : {"small_densenet", "squeezenet"}) {
    Net n = random_net(arch, 1, 28, 31);
    auto m = load(n.packed, {.precision = Precision::Float});
    const models::Calibration c = models::calibrate_activations(*m, n.calib, CalibMethod::Max, 10);
    ASSERT_EQ(static_cast<int>(c.layers.size()), m->quantized_layers()) << arch;
    EXPECT_EQ(c.images, 24);
    std::map<std::string, std::pair<double, double>> seen;
    for (int64_t s = 0; s < 24; s += 10) {
      const Tensor b = n.calib.narrow(0, s, std::min<int64_t>(10, 24 - s)).contiguous();
      fake_quant_forward(*n.model, b, {}, [&](const std::string& layer, const Tensor& x) {
        const std::vector<float> v = x.contiguous().to_vector<float>();
        auto [lo, hi] = std::minmax_element(v.begin(), v.end());
        auto it = seen.find(layer);
        if (it == seen.end()) {
          seen[layer] = {*lo, *hi};
        } else {
          it->second = {std::min(it->second.first, double(*lo)), std::max(it->second.second, double(*hi))};
        }
      });
    }
    for (const auto& l : c.layers) {
      ASSERT_TRUE(seen.count(l.name)) << l.name;
      const auto [lo, hi] = seen.at(l.name);
      EXPECT_NEAR(l.min, lo, 1e-5 * std::max(1.0, std::fabs(lo))) << arch << " " << l.name;
      EXPECT_NEAR(l.max, hi, 1e-5 * std::max(1.0, std::fabs(hi))) << arch << " " << l.name;
      EXPECT_EQ(l.clip_lo, std::min(l.min, 0.0));
      EXPECT_EQ(l.clip_hi, std::max(l.max, 0.0));
      const Int8Quant q = models::quant_of_range(l.clip_lo, l.clip_hi);
      EXPECT_EQ(l.quant.scale, q.scale);
      EXPECT_EQ(l.quant.zero_point, q.zero_point);
    }
  }
}

TEST(Int8Calibration, ImagesComeFromTheTrainingSplitOnly) {
  TempDir dir;
  const std::string data = "mnist:" + test::make_tiny_idx(dir.file("idx"), 40, 12);
  models::ModelConfig cfg;
  cfg.in_channels = 1;
  cfg.num_classes = 10;
  app::CalibrationOptions o;
  o.data = data;
  o.images = 1000;  // more than the split holds: all of it
  o.workers = 1;
  const io::Metadata meta{{"split", "{\"val_size\": 8, \"seed\": 3}"}};
  const Tensor x = app::calibration_images(o, meta, cfg, "weights");
  EXPECT_EQ(x.size(0), 32);  // 40 training images, 8 held out for validation
  // Every calibration image is one of the training split's, none of validation or test.
  data::SplitOptions so;
  so.val_size = 8;
  so.seed = 3;
  const data::DataSpec spec = data::parse_data_spec(data);
  const data::Preprocess pre = data::preprocess_for(spec);
  data::Splits sp = data::open_data(spec, pre.image_size, so);
  auto key = [](const Tensor& img) {
    const std::vector<float> v = img.contiguous().to_vector<float>();
    return std::vector<float>(v.begin(), v.end());
  };
  auto images_of = [&](std::shared_ptr<const data::Dataset> d) {
    std::set<std::vector<float>> s;
    data::Loader loader(d, pre, train::loader_options(16, 1, 0, false));
    loader.start_epoch(0, 0);
    while (auto b = loader.next())
      for (int64_t i = 0; i < b->size(); ++i) s.insert(key(b->images.narrow(0, i, 1).reshape({1, 28, 28})));
    return s;
  };
  const auto train = images_of(sp.train), val = images_of(sp.val), test = images_of(sp.test);
  for (int64_t i = 0; i < x.size(0); ++i) {
    const auto k = key(x.narrow(0, i, 1).reshape({1, 28, 28}));
    EXPECT_TRUE(train.count(k)) << "image " << i;
    EXPECT_FALSE(val.count(k)) << "image " << i;
    EXPECT_FALSE(test.count(k)) << "image " << i;
  }
  o.images = 5;
  EXPECT_EQ(app::calibration_images(o, meta, cfg, "weights").size(0), 5);
  cfg.in_channels = 3;
  EXPECT_INPUT_ERROR_MENTIONS(app::calibration_images(o, meta, cfg, "weights"), "input channels");
  o.data = "mnist:" + dir.file("absent");
  EXPECT_INPUT_ERROR_MENTIONS(app::calibration_images(o, meta, cfg, "weights"), "absent");
}

// ---- the packed file ----------------------------------------------------------------------

TEST(Int8PackedFile, ScalesRoundTripAndAnOlderFileLoadsAsFloat) {
  TempDir dir;
  Net n = random_net("small_densenet", 1, 28, 41);
  auto fm = load(n.packed, {.precision = Precision::Float});
  const models::Calibration c = models::calibrate_activations(*fm, n.calib, CalibMethod::Percentile);
  models::PackedContent with = n.packed;
  models::add_activation_quant(with, c, "mnist:somewhere", "train");
  io::write_safetensors(dir.file("int8.safetensors"), with.tensors, with.metadata);
  io::write_safetensors(dir.file("float.safetensors"), n.packed.tensors, n.packed.metadata);

  const io::SafeTensors back = io::read_safetensors(dir.file("int8.safetensors"));
  EXPECT_EQ(back.meta("act_bits"), "8");
  EXPECT_NE(back.meta("calibration").find("\"method\":\"percentile\""), std::string::npos);
  EXPECT_NE(back.meta("calibration").find("\"split\":\"train\""), std::string::npos);
  for (const auto& l : c.layers) {
    EXPECT_EQ(back.at(l.name + ".act_scale").dtype(), DType::F32);
    EXPECT_EQ(back.at(l.name + ".act_scale").to_vector<float>()[0], l.quant.scale);
    EXPECT_EQ(back.at(l.name + ".act_zero_point").dtype(), DType::I32);
    EXPECT_EQ(back.at(l.name + ".act_zero_point").to_vector<int32_t>()[0], l.quant.zero_point);
  }
  auto m8 = models::PackedModel::load(dir.file("int8.safetensors"), "", Device::cpu());
  EXPECT_TRUE(m8->has_int8_scales());
  EXPECT_EQ(m8->precision(), Precision::Int8);  // auto on the CPU
  // The loaded file runs the same bits as the content it was written from.
  auto mem = load(with);
  EXPECT_EQ(test::max_abs_diff(m8->forward(n.input), mem->forward(n.input)), 0.0);
  // And its float path is the float packed model's.
  auto m8f = models::PackedModel::load(dir.file("int8.safetensors"), "", Device::cpu(),
                                       {.precision = Precision::Float});
  EXPECT_EQ(m8f->precision(), Precision::Float);
  EXPECT_EQ(test::max_abs_diff(m8f->forward(n.input), fm->forward(n.input)), 0.0);

  // A file without scales (every packed file before int8 activations) loads and runs float.
  auto old = models::PackedModel::load(dir.file("float.safetensors"), "", Device::cpu());
  EXPECT_FALSE(old->has_int8_scales());
  EXPECT_EQ(old->precision(), Precision::Float);
  EXPECT_EQ(test::max_abs_diff(old->forward(n.input), fm->forward(n.input)), 0.0);
  EXPECT_INPUT_ERROR_MENTIONS(models::PackedModel::load(dir.file("float.safetensors"), "", Device::cpu(),
                                                        {.precision = Precision::Int8}),
                              "float.safetensors: precision int8 needs activation scales");
}

TEST(Int8PackedFile, EveryDefectIsOneInputErrorNamingTheFile) {
  Net n = random_net("squeezenet", 1, 28, 43);
  auto fm = load(n.packed, {.precision = Precision::Float});
  const models::Calibration c = models::calibrate_activations(*fm, n.calib, CalibMethod::Max);
  models::PackedContent good = n.packed;
  models::add_activation_quant(good, c, "d", "train");
  const std::string layer = c.layers[3].name;
  auto error_of = [&](io::NamedTensors t, io::Metadata m) {
    return test::input_error_message(
        [&] { models::PackedModel::from_tensors(t, m, "", Device::cpu(), "bad.safetensors"); });
  };
  auto with = [&](const std::string& name, const Tensor& v) {
    io::NamedTensors t = good.tensors;
    for (auto& [k, x] : t)
      if (k == name) x = v;
    return t;
  };
  struct Case {
    io::NamedTensors t;
    io::Metadata m;
    std::string needle;
  };
  io::Metadata bits4 = good.metadata;
  bits4["act_bits"] = "4";
  io::Metadata no_bits = good.metadata;
  no_bits.erase("act_bits");
  io::NamedTensors missing = good.tensors;
  std::erase_if(missing, [&](const auto& p) { return p.first == layer + ".act_zero_point"; });
  const std::vector<Case> cases = {
      {good.tensors, bits4, "act_bits is '4'"},
      {good.tensors, no_bits, "unexpected tensor"},
      {missing, good.metadata, "missing tensor"},
      {with(layer + ".act_scale", Tensor::scalar(0.0)), good.metadata, "activation scale 0"},
      {with(layer + ".act_scale", Tensor::scalar(NAN)), good.metadata, "activation scale nan"},
      {with(layer + ".act_zero_point", Tensor::scalar(200, DType::I32)), good.metadata, "zero point 200"},
      {with(layer + ".act_zero_point", Tensor::scalar(3.0)), good.metadata, "expected I32"},
  };
  for (const Case& k : cases) {
    const std::string msg = error_of(k.t, k.m);
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(k.needle), std::string::npos) << k.needle << ": " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// ---- the int8 plan -------------------------------------------------------------------------

// Pearson correlation of two equally shaped tensors' elements.
double correlation(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.contiguous().to_vector<float>(), y = b.contiguous().to_vector<float>();
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += x[i], my += y[i];
  mx /= double(x.size()), my /= double(y.size());
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i)
    sxy += (x[i] - mx) * (y[i] - my), sxx += (x[i] - mx) * (x[i] - mx), syy += (y[i] - my) * (y[i] - my);
  return sxy / std::sqrt(sxx * syy);
}
int64_t top1_agreement(const Tensor& a, const Tensor& b) {
  const int64_t n = a.size(0), k = a.size(1);
  const std::vector<float> x = a.contiguous().to_vector<float>(), y = b.contiguous().to_vector<float>();
  int64_t same = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto row = [&](const std::vector<float>& v) {
      return std::max_element(v.begin() + i * k, v.begin() + (i + 1) * k) - (v.begin() + i * k);
    };
    same += row(x) == row(y);
  }
  return same;
}

// The int8 plan against the float simulation of its quantization. Both quantize the same
// tensors with the same scales; they differ only where float rounding (the exact integer
// sums against the float conv's summation order, the folded BatchNorm's fma against the
// engine's BatchNorm) moves a value across a rounding boundary of the quantizer, which
// changes that element by one step. Measured per quantized input, the int8 bytes' sum
// differs from the simulation's by 0 to 10 over 10^5 to 10^6 elements: a handful of
// flips. But each flip shifts the next layer's inputs by a step times a weight and so
// causes flips there: over 30 to 120 layers the cascade grows to about 0.1-1% of the
// logits' range, comparable to the quantization error itself on the random 28x28
// networks. Hence the bounds: within 2% of the logits' range everywhere, and closer to
// the simulation than to the float model on the seed's trained networks, whose
// quantization error (0.4-2.6%) stands above the cascade.
TEST(Int8Inference, MatchesTheFakeQuantizedFloatModel) {
  struct Case {
    std::string name;
    std::function<Net()> make;
  };
  const std::vector<Case> cases = {
      {"small_densenet (random, 28x28)", [] { return random_net("small_densenet", 1, 28, 51); }},
      {"squeezenet (random, 28x28)", [] { return random_net("squeezenet", 1, 28, 52); }},
      {"densenet121 (random, 3x32x32)", [] { return random_net("densenet121", 3, 32, 53); }},
      {"small_densenet_ttq (seed)", [] { return seed_net("small_densenet_ttq", "small_densenet"); }},
      {"squeezenet_ttq (seed)", [] { return seed_net("squeezenet_ttq", "squeezenet"); }},
  };
  for (const Case& k : cases) {
    Net n = k.make();
    auto fm = load(n.packed, {.precision = Precision::Float});
    const models::Calibration c = models::calibrate_activations(*fm, n.calib, CalibMethod::Percentile);
    models::PackedContent with = n.packed;
    models::add_activation_quant(with, c, "d", "train");
    auto m = load(with);
    ASSERT_EQ(m->precision(), Precision::Int8);
    const Tensor got = m->forward(n.input);
    const Tensor fq = fake_quant_forward(*n.model, n.input, quant_map(c));
    const Tensor fl = fm->forward(n.input);
    const double to_fq = test::max_rel_error(got, fq), to_float = test::max_rel_error(got, fl);
    std::printf("%-32s int8 vs fake-quant %.3g, vs float %.3g; corr with float %.6f, top-1 agree %lld/%lld\n",
                k.name.c_str(), to_fq, to_float, correlation(got, fl),
                static_cast<long long>(top1_agreement(got, fl)), static_cast<long long>(got.size(0)));
    EXPECT_TRUE(test::all_finite(got)) << k.name;
    EXPECT_LT(to_fq, 2e-2) << k.name;
    if (k.name.find("(seed)") != std::string::npos) {
      EXPECT_LT(to_fq, to_float) << k.name;
    }
  }
}

TEST(Int8Inference, EveryMicroKernelGivesTheSameBitsAndBatchOfNEqualsNBatchesOfOne) {
  Net n = random_net("small_densenet", 1, 28, 61);
  auto fm = load(n.packed, {.precision = Precision::Float});
  models::PackedContent with = n.packed;
  models::add_activation_quant(with, models::calibrate_activations(*fm, n.calib, CalibMethod::Mse), "d",
                               "train");
  const Tensor ref =
      load(with, {.precision = Precision::Int8, .int8_isa = kernels::Int8Isa::Scalar})->forward(n.input);
  for (kernels::Int8Isa isa :
       {kernels::Int8Isa::Avx2, kernels::Int8Isa::AvxVnni, kernels::Int8Isa::Avx512Vnni}) {
    if (!kernels::int8_isa_supported(isa)) continue;
    auto m = load(with, {.precision = Precision::Int8, .int8_isa = isa});
    EXPECT_EQ(test::max_abs_diff(m->forward(n.input), ref), 0.0) << kernels::int8_isa_name(isa);
    EXPECT_EQ(test::max_abs_diff(m->forward(n.input), ref), 0.0) << kernels::int8_isa_name(isa) << " again";
  }
  auto m = load(with);
  for (int64_t i = 0; i < n.input.size(0); ++i)
    EXPECT_EQ(test::max_abs_diff(m->forward(n.input.narrow(0, i, 1).contiguous()),
                                 ref.narrow(0, i, 1).contiguous()),
              0.0)
        << "image " << i;
}

// Int8 between layers: DenseNet's conv.1 writes int8 for conv.2 (its BN-ReLU is conv.1's
// epilogue), so only the convs that read the block's concatenation quantize: one
// quantize step per dense layer and transition. SqueezeNet's Fires are pre-activation
// (each expand applies its own BN-ReLU to the squeeze's output, which no integer dot
// product can absorb), so each of its convs quantizes its input.
TEST(Int8Inference, ActivationsStayInt8WhereOnlyConvsReadThem) {
  struct Case {
    std::string arch;
    int64_t float_steps, quantize_steps, add_steps;
  };
  // Float plans: see test_packed_model's TheGraphCompilerFusesTheKnownModelsCompletely.
  // SqueezeNet's residual Adds are steps of their own in the int8 plan (the int8 conv
  // has no residual epilogue).
  for (const Case& c : {Case{"small_densenet", 1 + 1 + 60 + 2 + 1 + 1, 30 + 2, 0},
                        Case{"squeezenet", 1 + 1 + 24 + 2 + 1 + 1, 24, 4}}) {
    Net n = random_net(c.arch, 1, 28, 71);
    auto fm = load(n.packed, {.precision = Precision::Float});
    models::PackedContent with = n.packed;
    models::add_activation_quant(with, models::calibrate_activations(*fm, n.calib, CalibMethod::Max), "d",
                                 "train");
    models::ModelConfig cfg;
    auto m = load(with);
    EXPECT_EQ(fm->plan_steps(1, 56, 56), c.float_steps) << c.arch;
    EXPECT_EQ(m->plan_steps(1, 56, 56), c.float_steps + c.quantize_steps + c.add_steps) << c.arch;
  }
}

// ---- --precision -----------------------------------------------------------------------------

TEST(Int8Precision, SelectionAndErrorsInTheLibraryAndTheTools) {
  EXPECT_EQ(models::parse_precision("int8", "--precision"), Precision::Int8);
  EXPECT_EQ(models::parse_precision("float", "--precision"), Precision::Float);
  EXPECT_EQ(models::parse_precision("auto", "--precision"), Precision::Auto);
  EXPECT_INPUT_ERROR_MENTIONS(models::parse_precision("fp16", "--precision"), "--precision: expected auto");
  EXPECT_INPUT_ERROR_MENTIONS(models::parse_calib_method("minmax", "--calib-method"), "--calib-method");

  TempDir dir;
  Net n = seed_net("squeezenet_ttq", "squeezenet");
  auto fm = load(n.packed, {.precision = Precision::Float});
  models::PackedContent with = n.packed;
  models::add_activation_quant(with, models::calibrate_activations(*fm, n.calib, CalibMethod::Max), "d",
                               "train");
  const std::string f8 = dir.file("int8.safetensors"), ff = dir.file("float.safetensors");
  io::write_safetensors(f8, with.tensors, with.metadata);
  io::write_safetensors(ff, n.packed.tensors, n.packed.metadata);
  const Tensor want8 = load(with)->forward(n.input), wantf = fm->forward(n.input);
  ASSERT_GT(test::max_abs_diff(want8, wantf), 0.0);
  app::TensorInferOptions o;
  o.device = "cpu";
  o.input_path = kSeed + "/reference_io.safetensors";
  o.input_name = "input";
  o.logits_out = dir.file("logits.safetensors");
  std::ostringstream log;
  auto infer = [&](const std::string& model, const std::string& precision) {
    o.model_path = model;
    o.precision = precision;
    return app::run_tensor_inference(o, log);
  };
  EXPECT_EQ(test::max_abs_diff(infer(f8, ""), want8), 0.0);
  EXPECT_EQ(io::read_safetensors(o.logits_out).meta("precision"), "int8");
  EXPECT_EQ(test::max_abs_diff(infer(f8, "int8"), want8), 0.0);
  EXPECT_EQ(test::max_abs_diff(infer(f8, "float"), wantf), 0.0);
  EXPECT_EQ(io::read_safetensors(o.logits_out).meta("precision"), "float");
  EXPECT_EQ(test::max_abs_diff(infer(ff, "auto"), wantf), 0.0);
  EXPECT_INPUT_ERROR_MENTIONS(infer(ff, "int8"), "needs activation scales");
  EXPECT_INPUT_ERROR_MENTIONS(infer(f8, "half"), "--precision");
  EXPECT_INPUT_ERROR_MENTIONS(infer(kSeed + "/squeezenet_ttq.safetensors", "int8"), "is not a packed model");

  // The built tools: exit 2 and one line for each bad combination.
  const std::string tools = std::string(TTQ_BINARY_DIR) + "/tools/";
  for (const char* t : {"ttq_pack", "ttq_infer"})
    ASSERT_EQ(::access((tools + t).c_str(), X_OK), 0) << t << " is not built";
  const std::string seed_in = kSeed + "/squeezenet_ttq.safetensors";
  const std::string out = dir.file("out.safetensors");
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"ttq_pack --in " + seed_in + " --out " + out + " --act-bits 8", "--act-bits 8 needs --calibrate"},
      {"ttq_pack --in " + seed_in + " --out " + out + " --calibrate fashion-mnist",
       "--calibrate needs --act-bits 8"},
      {"ttq_pack --in " + seed_in + " --out " + out + " --act-bits 4 --calibrate fashion-mnist",
       "--act-bits"},
      {"ttq_pack --in " + seed_in + " --out " + out + " --act-bits 8 --calibrate mnist:" + dir.file("none"),
       "none"},
      {"ttq_pack --in " + seed_in + " --out " + out +
           " --act-bits 8 --calibrate fashion-mnist --calib-method x",
       "--calib-method"},
      {"ttq_pack --in " + seed_in + " --out " + out +
           " --act-bits 8 --calibrate fashion-mnist --calib-images 0",
       "--calib-images"},
      {"ttq_infer --model " + ff + " --precision int8 --device cpu --input-tensors " + o.input_path +
           " --input-name input --logits-out " + dir.file("l.safetensors"),
       "needs activation scales"},
      {"ttq_infer --model " + f8 + " --precision fp8 --device cpu --input-tensors " + o.input_path +
           " --input-name input --logits-out " + dir.file("l.safetensors"),
       "--precision"},
  };
  for (const auto& [args, needle] : bad) {
    const test::ToolRun r = test::run_tool(tools + args, dir.path());
    EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
    EXPECT_EQ(test::count_lines(r.err), 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << "\n" << r.err;
    EXPECT_FALSE(fs::exists(out)) << args;
  }
}

// ttq_pack --act-bits 8 end to end on a tiny MNIST-layout data set: the file holds the
// scales and the calibration record, ttq_infer runs it as int8.
TEST(Int8Precision, TheBuiltPackCalibratesAndTheResultRunsAsInt8) {
  TempDir dir;
  const std::string data = "mnist:" + test::make_tiny_idx(dir.file("idx"), 48, 8);
  Net n = random_net("small_densenet", 1, 28, 81);
  io::NamedTensors sd;
  for (auto& [name, t] : n.model->state_dict()) sd.emplace_back(name, t);
  const std::string in = dir.file("weights.safetensors"), out = dir.file("int8.safetensors");
  io::write_safetensors(in, sd, {{"model", "small_densenet"}});
  const test::ToolRun r =
      test::run_tool(std::string(TTQ_BINARY_DIR) + "/tools/ttq_pack --in " + in + " --out " + out +
                         " --act-bits 8 --calibrate " + data + " --calib-images 20",
                     dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("calibrating int8 activations on 20 training images"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("62 layers calibrated on 20 images (mse)"), std::string::npos) << r.out;
  const io::SafeTensors st = io::read_safetensors(out);
  EXPECT_EQ(st.meta("act_bits"), "8");
  EXPECT_NE(st.meta("calibration").find("\"images\":20"), std::string::npos) << st.meta("calibration");
  auto m = models::PackedModel::load(out, "", Device::cpu());
  EXPECT_EQ(m->precision(), Precision::Int8);
  EXPECT_TRUE(test::all_finite(m->forward(n.input)));
}

}  // namespace
}  // namespace ttq
