// Packed 2-bit models (models/packed.h) end to end: the seed's two TTQ files pack
// with the zero fractions of tests/fixtures/seed/README.md and unpack to the same
// weights bit for bit; packed inference reproduces the float TTQ model's logits on
// reference_io's input within 1e-5 relative on the CPU (and PyTorch's within 1e-4),
// with either CPU micro-kernel; batch N equals N batches of 1 and a second run gives
// the same bits; our own TTQ checkpoints pack with their training state dropped and
// their class names kept; every defect of a packed file is one InputError line; the
// fused inference ops match the engine's ops; the built ttq_pack exits 2 with one
// line on bad input. CUDA cases (tensor cores, CUDA cores, graph replay) skip without a GPU.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "app/infer.h"
#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/ops/ops.h"
#include "kernels/pack.h"
#include "kernels/packed_ops.h"
#include "models/model_file.h"
#include "models/packed.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

const std::string kSeed = test::seed_dir();

struct SeedFile {
  std::string file, arch;
  int layers;
  int64_t weights, zeros;  // tests/fixtures/seed/README.md, "Ternary statistics per layer"
};
const std::vector<SeedFile> kSeeds = {{"small_densenet_ttq", "small_densenet", 62, 381024, 145691},
                                      {"squeezenet_ttq", "squeezenet", 24, 717824, 459891}};

const io::SafeTensors& seed(const std::string& file) {
  static std::map<std::string, io::SafeTensors> cache;
  auto it = cache.find(file);
  if (it == cache.end())
    it = cache.emplace(file, io::read_safetensors(kSeed + "/" + file + ".safetensors")).first;
  return it->second;
}
const io::SafeTensors& reference() { return seed("reference_io"); }

const models::PackedContent& packed_seed(const SeedFile& s) {
  static std::map<std::string, models::PackedContent> cache;
  auto it = cache.find(s.file);
  if (it == cache.end())
    it = cache
             .emplace(s.file,
                      models::pack_tensors(seed(s.file).tensors(), seed(s.file).metadata(), s.arch, s.file))
             .first;
  return it->second;
}

std::unique_ptr<models::PackedModel> packed_model(const SeedFile& s, Device dev,
                                                  models::PackedRunOptions o = {}) {
  const auto& c = packed_seed(s);
  return models::PackedModel::from_tensors(c.tensors, c.metadata, "", dev, s.file + " (packed)", o);
}

// The float model with the seed's ternary weights, as ttq_infer runs it.
Tensor float_logits(const SeedFile& s, const Tensor& x) {
  static std::map<std::string, Tensor> cache;
  auto it = cache.find(s.file);
  if (it != cache.end() && x.same_view(reference().at("input"))) return it->second;
  auto model = models::create(s.arch);
  models::load_weights(*model, seed(s.file).tensors(), s.file);
  model->eval();
  autograd::NoGradGuard ng;
  Tensor y = model->forward(x);
  if (x.same_view(reference().at("input"))) cache[s.file] = y;
  return y;
}

// ---- packing ----------------------------------------------------------------------

TEST(PackSeed, ZeroFractionsMatchTheSeedReadme) {
  for (const SeedFile& s : kSeeds) {
    const models::PackReport& r = packed_seed(s).report;
    EXPECT_EQ(static_cast<int>(r.layers.size()), s.layers) << s.file;
    EXPECT_EQ(r.quantized_weights, s.weights) << s.file;
    EXPECT_EQ(r.zeros, s.zeros) << s.file;
    const std::string text = models::format_pack_report(r);
    const std::string pct =
        s.arch == "squeezenet" ? "(64.1% of the quantized weights)" : "(38.2% of the quantized weights)";
    EXPECT_NE(text.find(pct), std::string::npos) << text;
    EXPECT_EQ(r.packed_bytes * 15 < r.float_bytes, true) << "2-bit codes should be ~16x smaller than F32";
  }
  // Per-layer check of one row of the README table: denseblock1.denselayer1.conv.1 48x48x1x1,
  // 42.6% zeros, 25.1% +wp, 32.3% -wn, wp 0.886829615, wn 0.886829734.
  const models::PackLayerReport& l = packed_seed(kSeeds[0]).report.layers[0];
  EXPECT_EQ(l.name, "features.denseblock1.denselayer1.conv.1");
  EXPECT_NEAR(double(l.zeros) / l.numel, 0.426, 0.0005);
  EXPECT_NEAR(double(l.pos) / l.numel, 0.251, 0.0005);
  EXPECT_NEAR(l.wp, 0.886829615, 1e-7);
  EXPECT_NEAR(l.wn, 0.886829734, 1e-7);
}

TEST(PackSeed, PackedFileFollowsTheCanonicalLayoutAndUnpacksExactly) {
  for (const SeedFile& s : kSeeds) {
    const auto& c = packed_seed(s);
    EXPECT_EQ(c.metadata.at("format"), "ttq-packed-2bit");
    EXPECT_EQ(c.metadata.at("model"), s.arch);
    std::map<std::string, Tensor> out(c.tensors.begin(), c.tensors.end());
    int layers = 0;
    for (const auto& [name, t] : seed(s.file).tensors()) {
      const std::string layer = name.substr(0, name.size() - 7);  // strip ".weight"
      if (name.size() > 7 && out.count(layer + ".codes")) {
        ++layers;
        const Tensor& codes = out.at(layer + ".codes");
        ASSERT_EQ(codes.dtype(), DType::U8);
        ASSERT_EQ(codes.numel(), (t.numel() + 3) / 4);
        EXPECT_EQ(out.at(layer + ".wp").dim(), 0) << "F32 scalars";
        const Tensor back = kernels::decode_packed(codes, t.shape(), out.at(layer + ".wp").reshape({1}),
                                                   out.at(layer + ".wn").reshape({1}));
        EXPECT_EQ(test::max_abs_diff(back, t), 0.0) << layer;
        // Element 0 of the canonical layout is bits 0-1 of byte 0.
        const float v0 = t.to_vector<float>()[0];
        const uint8_t c0 = codes.to_vector<uint8_t>()[0] & 3u;
        EXPECT_EQ(c0, v0 > 0 ? 1 : (v0 < 0 ? 2 : 0)) << layer;
      } else {
        ASSERT_TRUE(out.count(name)) << name;
        EXPECT_EQ(test::max_abs_diff(out.at(name), t), 0.0) << name;
      }
    }
    EXPECT_EQ(layers, s.layers);
  }
}

TEST(PackSeed, OurTtqCheckpointPacksWithoutItsTrainingStateAndKeepsClassNames) {
  const SeedFile& s = kSeeds[1];
  io::NamedTensors ckpt;
  Generator g(5);
  for (const auto& [name, t] : seed(s.file).tensors()) {
    ckpt.emplace_back(name, t);
    if (name.find("expand3x3.weight") != std::string::npos ||
        name.find("squeeze.weight") != std::string::npos ||
        name.find("expand1x1.weight") != std::string::npos) {
      const std::string layer = name.substr(0, name.size() - 7);
      ckpt.emplace_back(layer + ".latent_weight", Tensor::randn(t.shape(), g));
      ckpt.emplace_back(layer + ".wp", Tensor::full({1}, 0.5));
      ckpt.emplace_back(layer + ".wn", Tensor::full({1}, 0.5));
      ckpt.emplace_back("optimizer.state.0." + layer, Tensor::zeros(t.shape()));
    }
  }
  ckpt.emplace_back("optimizer_scalar.step", Tensor::full({1}, 3));
  ckpt.emplace_back("scheduler.best", Tensor::full({1}, 0.4));
  io::Metadata meta = {{"format", "ttq-checkpoint"},     {"model", "squeezenet"}, {"phase", "ttq"},
                       {"classes", "[\"cat\",\"dog\"]"}, {"ttq.t", "0.15"},       {"run_state", "{}"}};
  models::PackedContent c = models::pack_tensors(ckpt, meta, "squeezenet", "ckpt.safetensors");
  EXPECT_EQ(c.report.zeros, s.zeros);
  EXPECT_EQ(c.metadata.at("classes"), "[\"cat\",\"dog\"]");
  EXPECT_EQ(c.metadata.at("ttq.t"), "0.15");
  EXPECT_EQ(c.metadata.count("run_state"), 0u);
  const auto& ref = packed_seed(s);
  ASSERT_EQ(c.tensors.size(), ref.tensors.size());
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    EXPECT_EQ(c.tensors[i].first, ref.tensors[i].first);
    EXPECT_EQ(test::max_abs_diff(c.tensors[i].second.to(DType::F64), ref.tensors[i].second.to(DType::F64)),
              0.0)
        << c.tensors[i].first;
  }
}

TEST(PackSeed, RefusesALayerWithFourValuesAndTheFullPrecisionFile) {
  io::NamedTensors t = seed("squeezenet_ttq").tensors();
  for (auto& [name, v] : t) {
    if (name == "features.7.expand3x3.weight") {
      v = v.clone();
      v.data<float>()[5] = 0.123f;
    }
  }
  try {
    models::pack_tensors(t, {}, "squeezenet", "bad.safetensors");
    FAIL() << "a four-valued layer was packed";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("features.7.expand3x3"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  EXPECT_THROW(models::pack_tensors(seed("small_densenet_fp").tensors(), {}, "small_densenet", "fp"),
               InputError);
  // A checkpoint's scale that is not finite is refused, not replaced by 1.
  io::NamedTensors nan_scale = seed("squeezenet_ttq").tensors();
  nan_scale.emplace_back("features.7.expand3x3.wp", Tensor::full({1}, NAN));
  try {
    models::pack_tensors(nan_scale, {}, "squeezenet", "nan.safetensors");
    FAIL() << "a NaN scale was packed";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("nan.safetensors: 'features.7.expand3x3.wp' holds NaN"),
              std::string::npos)
        << e.what();
  }
}

// ---- inference --------------------------------------------------------------------

TEST(PackedInference, ReproducesTheFloatTtqModelAndPyTorchOnTheCpu) {
  const Tensor& x = reference().at("input");
  for (const SeedFile& s : kSeeds) {
    const Tensor expect = float_logits(s, x);
    for (kernels::CpuIsa isa : {kernels::CpuIsa::Scalar, kernels::CpuIsa::Avx2, kernels::CpuIsa::Avx512}) {
      if (!kernels::cpu_isa_supported(isa)) continue;
      models::PackedRunOptions o;
      o.cpu_isa = isa;
      auto m = packed_model(s, Device::cpu(), o);
      const Tensor got = m->forward(x);
      const double rel = test::max_rel_error(got, expect);
      const double torch = test::max_rel_error(got, reference().at(s.file + ".logits"));
      std::printf("%-20s cpu %-6s: vs float model %.3g, vs PyTorch %.3g\n", s.file.c_str(),
                  kernels::cpu_isa_name(isa), rel, torch);
      EXPECT_LT(rel, 1e-5) << s.file << " " << kernels::cpu_isa_name(isa);
      EXPECT_LT(torch, 1e-4) << s.file << " " << kernels::cpu_isa_name(isa);
    }
  }
}

TEST(PackedInference, BatchOfNEqualsNBatchesOfOneAndRunsAreReproducible) {
  const Tensor& x = reference().at("input");
  for (const SeedFile& s : kSeeds) {
    auto m = packed_model(s, Device::cpu());
    const Tensor all = m->forward(x);
    EXPECT_EQ(test::max_abs_diff(m->forward(x), all), 0.0) << s.file << ": a second run differs";
    for (int64_t i = 0; i < x.size(0); ++i) {
      const Tensor one = m->forward(x.narrow(0, i, 1).contiguous());
      EXPECT_LE(test::max_rel_error(one, all.narrow(0, i, 1).contiguous()), 1e-6) << s.file << " image " << i;
    }
  }
}

// A model of `arch` with random weights made ternary (scales of the init's magnitude,
// so activations stay O(1) through every layer) and non-trivial BN statistics.
io::NamedTensors random_ternary_weights(models::Model& model) {
  std::set<std::string> quant;
  for (auto& [name, conv] : model.quantizable_convs()) quant.insert(name + ".weight");
  io::NamedTensors sd;
  for (auto& [name, t] : model.state_dict()) {
    Tensor v = t.clone();
    if (quant.count(name)) {
      const float a = 1.2f / std::sqrt(float(v.numel() / v.size(0))), b = 0.8f * a;
      float* p = v.data<float>();
      for (int64_t i = 0; i < v.numel(); ++i) p[i] = p[i] > 0.3f * a ? a : (p[i] < -0.3f * a ? -b : 0.0f);
    }
    if (name.find("running_var") != std::string::npos) v.fill_(1.3);
    if (name.find("running_mean") != std::string::npos) v.fill_(0.1);
    sd.emplace_back(name, v);
  }
  models::load_weights(model, sd, "random");
  model.eval();
  return sd;
}

TEST(PackedInference, OtherArchitecturesInputSizesAndChannelsFollowTheFloatModel) {
  struct Case {
    std::string arch;
    int64_t channels, classes;
    std::vector<int64_t> sizes;
  };
  for (const Case& c : {Case{"small_densenet", 1, 10, {28, 33}}, Case{"squeezenet", 1, 10, {28, 31}},
                        Case{"densenet121", 3, 200, {16}}}) {
    models::ModelConfig cfg;
    cfg.in_channels = c.channels;
    cfg.num_classes = c.classes;
    Generator g(11);
    auto model = models::create(c.arch, cfg, g);
    const io::NamedTensors sd = random_ternary_weights(*model);
    models::PackedContent packed = models::pack_tensors(sd, {}, c.arch, "random");
    auto m = models::PackedModel::from_tensors(packed.tensors, packed.metadata, "", Device::cpu(), "random");
    EXPECT_EQ(m->config().in_channels, c.channels);
    EXPECT_EQ(m->config().num_classes, c.classes);
    EXPECT_EQ(m->quantized_layers(), static_cast<int>(model->quantizable_convs().size()));
    for (int64_t size : c.sizes) {
      const Tensor x = test::rand({2, c.channels, size, size}, 12 + size);
      autograd::NoGradGuard ng;
      EXPECT_LT(test::max_rel_error(m->forward(x), model->forward(x)), 1e-5) << c.arch << " size " << size;
    }
    EXPECT_THROW(m->check_input({1, c.channels + 1, 28, 28}, "x"), InputError);
    EXPECT_THROW(m->check_input({1, c.channels, 2, 2}, "x"), InputError);
  }
}

// The graph compiler fuses every BN, ReLU, pool, concatenation and residual of
// the three models into the convolutions and the fused pool ops: one step per
// conv plus the few pool / classifier steps, nothing else.
TEST(PackedInference, TheGraphCompilerFusesTheKnownModelsCompletely) {
  struct Case {
    std::string arch;
    int64_t steps;
  };
  // small DenseNet: conv0, norm0+relu+pool0, 2 convs x 30 dense layers, 2
  // transitions, norm4+relu+global pool, classifier. SqueezeNet: conv, BN+relu+
  // pool, 3 convs x 8 Fires, 2 pools, classifier conv, relu+global pool.
  // DenseNet-121: conv0, 2 x 58 dense layers, 3 transitions, norm5 + relu + pool,
  // classifier; its norm0 + relu0 (no pool0) is one affine step.
  for (const Case& c :
       {Case{"small_densenet", 1 + 1 + 60 + 2 + 1 + 1}, Case{"squeezenet", 1 + 1 + 24 + 2 + 1 + 1},
        Case{"densenet121", 1 + 1 + 116 + 3 + 1 + 1}}) {
    Generator g(5);
    auto model = models::create(c.arch, {}, g);
    const io::NamedTensors sd = random_ternary_weights(*model);
    models::PackedContent packed = models::pack_tensors(sd, {}, c.arch, "random");
    auto m = models::PackedModel::from_tensors(packed.tensors, packed.metadata, "", Device::cpu(), "random");
    EXPECT_EQ(m->plan_steps(1, 56, 56), c.steps) << c.arch;
  }
}

#ifdef TTQ_HAS_CUDA
TEST(PackedInferenceCuda, MatchesTheCpuOnBothPathsAndGraphReplayIsExact) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
  const Tensor& x = reference().at("input");
  for (const SeedFile& s : kSeeds) {
    const Tensor expect = float_logits(s, x);
    for (kernels::CudaPath path : {kernels::CudaPath::Simt, kernels::CudaPath::TensorCore}) {
      if (path == kernels::CudaPath::TensorCore && !kernels::packed_conv_tensor_cores_supported()) continue;
      models::PackedRunOptions o;
      o.cuda_path = path;
      auto m = packed_model(s, Device::cuda(0), o);
      const Tensor eager = m->forward(x);   // first call: eager
      const Tensor graph1 = m->forward(x);  // second: captured, then replayed
      const Tensor graph2 = m->forward(x);  // third: replayed
      const double rel = test::max_rel_error(eager, expect);
      std::printf("%-20s cuda %-11s: vs float model %.3g, vs PyTorch %.3g\n", s.file.c_str(),
                  kernels::cuda_path_name(path), rel,
                  test::max_rel_error(eager, reference().at(s.file + ".logits")));
      EXPECT_LT(rel, path == kernels::CudaPath::Simt ? 1e-5 : 1e-3)
          << s.file << " " << kernels::cuda_path_name(path);
      EXPECT_EQ(test::max_abs_diff(graph1, eager), 0.0)
          << s.file << ": graph replay differs from the eager run";
      EXPECT_EQ(test::max_abs_diff(graph2, eager), 0.0) << s.file;
      EXPECT_EQ(m->graph_replays(), 2) << s.file << ": the forward pass was not captured as a CUDA graph";
      // Batch of one (another plan, another graph).
      const Tensor one = m->forward(x.narrow(0, 1, 1).contiguous());
      const Tensor one_again = m->forward(x.narrow(0, 1, 1).contiguous());
      const Tensor one_graph = m->forward(x.narrow(0, 1, 1).contiguous());
      EXPECT_EQ(test::max_abs_diff(one_graph, one), 0.0) << s.file;
      EXPECT_EQ(test::max_abs_diff(one_again, one), 0.0) << s.file;
      EXPECT_LT(test::max_rel_error(one, eager.narrow(0, 1, 1).contiguous()),
                path == kernels::CudaPath::Simt ? 1e-5 : 1e-3)
          << s.file;
    }
  }
}
#endif

// ---- the fused inference ops against the engine's ops ---------------------------------

class PackedOps : public testing::TestWithParam<Device> {};

TEST_P(PackedOps, AffineMaxPoolGlobalPoolAndLinearMatchTheEngineOps) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  const Tensor x = test::rand({3, 7, 13, 12}, 1);
  const int64_t c = 7;
  Tensor w = test::rand({c}, 2), b = test::rand({c}, 3), mean = test::rand({c}, 4);
  Tensor var = ops::add(ops::mul(test::rand({c}, 5), test::rand({c}, 5)), Tensor::full({c}, 0.5));
  // BN folded as models/packed_model.cpp folds it.
  std::vector<float> sv(c), hv(c);
  for (int64_t i = 0; i < c; ++i) {
    const double s = double(w.to_vector<float>()[i]) / std::sqrt(double(var.to_vector<float>()[i]) + 1e-5);
    sv[i] = float(s);
    hv[i] = float(double(b.to_vector<float>()[i]) - double(mean.to_vector<float>()[i]) * s);
  }
  const Tensor scale = Tensor::from_vector(sv, {c}, dev), shift = Tensor::from_vector(hv, {c}, dev);
  const Tensor act = ops::relu(ops::batch_norm2d(x, w, b, mean, var, false));
  for (kernels::MaxPoolSpec p :
       {kernels::MaxPoolSpec{3, 2, 1, false}, kernels::MaxPoolSpec{3, 2, 0, true},
        kernels::MaxPoolSpec{1, 1, 0, false}, kernels::MaxPoolSpec{2, 2, 0, false}}) {
    const Tensor expect = p.kernel == 1 ? act : ops::max_pool2d(act, p.kernel, p.stride, p.pad, p.ceil_mode);
    Tensor y = Tensor::empty(kernels::affine_maxpool_output_shape(x.shape(), p), DType::F32, dev);
    test::poison(y);
    kernels::affine_maxpool_out(x.to(dev), scale, shift, true, p, y);
    EXPECT_LT(test::max_rel_error(y.to(Device::cpu()), expect), 1e-6)
        << "pool " << p.kernel << "/" << p.stride;
  }
  {  // no affine, no ReLU: plain max pool
    Tensor y =
        Tensor::empty(kernels::affine_maxpool_output_shape(x.shape(), {3, 2, 0, true}), DType::F32, dev);
    kernels::affine_maxpool_out(x.to(dev), Tensor(), Tensor(), false, {3, 2, 0, true}, y);
    EXPECT_EQ(test::max_abs_diff(y.to(Device::cpu()), ops::max_pool2d(x, 3, 2, 0, true)), 0.0);
  }
  Tensor g = Tensor::empty({3, c}, DType::F32, dev);
  test::poison(g);
  kernels::affine_global_avgpool_out(x.to(dev), scale, shift, true, g);
  EXPECT_LT(test::max_rel_error(g.to(Device::cpu()), ops::global_avg_pool2d(act)), 1e-5);
  const Tensor lw = test::rand({11, c}, 6), lb = test::rand({11}, 7);
  Tensor ly = Tensor::empty({3, 11}, DType::F32, dev);
  test::poison(ly);
  const Tensor feat = ops::global_avg_pool2d(act);
  kernels::linear_out(feat.to(dev), lw.to(dev), lb.to(dev), ly);
  EXPECT_LT(test::max_rel_error(ly.to(Device::cpu()), ops::linear(feat, lw, lb)), 1e-5);
  // The dense convs: 3x3 pad 1 without bias (a first conv), 1x1 with bias (a classifier).
  for (int64_t k : {3, 1}) {
    const int pad = static_cast<int>(k / 2);
    const Tensor cw = test::rand({5, c, k, k}, 8 + k), cb = k == 1 ? test::rand({5}, 9) : Tensor();
    Tensor cy = Tensor::empty({3, 5, 13, 12}, DType::F32, dev);
    test::poison(cy);
    kernels::dense_conv2d_out(x.to(dev), cw.to(dev), cb.defined() ? cb.to(dev) : cb, pad, cy);
    EXPECT_LT(test::max_rel_error(cy.to(Device::cpu()), ops::conv2d(x, cw, cb, 1, pad)), 1e-5) << "k " << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, PackedOps, testing::ValuesIn(test::all_devices()), test::device_name);

// ---- validation of packed files ---------------------------------------------------------

std::string load_error(const io::NamedTensors& t, const io::Metadata& m) {
  try {
    models::PackedModel::from_tensors(t, m, "", Device::cpu(), "evil.safetensors");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(PackedFile, EveryDefectIsOneInputErrorLineNamingTheFile) {
  const auto& good = packed_seed(kSeeds[0]);
  ASSERT_EQ(load_error(good.tensors, good.metadata), "");
  auto expect_error = [&](const io::NamedTensors& t, const io::Metadata& m, const std::string& needle) {
    const std::string msg = load_error(t, m);
    EXPECT_NE(msg.find("evil.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  };
  const std::string layer = "features.denseblock2.denselayer3.conv.2";
  auto with = [&](const std::string& name, const std::function<Tensor(const Tensor&)>& f) {
    io::NamedTensors t;
    for (const auto& [n, v] : good.tensors) t.emplace_back(n, n == name ? f(v) : v);
    return t;
  };
  // A code 3 anywhere.
  expect_error(with(layer + ".codes",
                    [](const Tensor& v) {
                      Tensor c = v.clone();
                      c.data<uint8_t>()[7] |= 0x30;
                      return c;
                    }),
               good.metadata, layer);
  // Wrong byte count, wrong dtype, non-positive scale.
  expect_error(with(layer + ".codes", [](const Tensor& v) { return v.narrow(0, 0, v.numel() - 1).clone(); }),
               good.metadata, layer + ".codes");
  expect_error(with(layer + ".codes", [](const Tensor& v) { return v.to(DType::F32); }), good.metadata, "U8");
  expect_error(with(layer + ".wn", [](const Tensor&) { return Tensor::scalar(-1.0); }), good.metadata, layer);
  expect_error(with(layer + ".wp", [](const Tensor&) { return Tensor::scalar(NAN); }), good.metadata, layer);
  expect_error(with("features.norm4.running_var", [](const Tensor&) { return Tensor::ones({5}); }),
               good.metadata, "features.norm4.running_var");
  // Values: non-finite F32 tensors, a negative running variance.
  auto poke = [](float value) {
    return [=](const Tensor& v) {
      Tensor c = v.clone();
      c.data<float>()[1] = value;
      return c;
    };
  };
  expect_error(with("features.norm4.weight", poke(NAN)), good.metadata,
               "'features.norm4.weight' holds NaN at element 1");
  expect_error(with("classifier.bias", poke(-INFINITY)), good.metadata, "'classifier.bias' holds -Inf");
  expect_error(with("features.norm0.running_var", poke(-1.0f)), good.metadata,
               "'features.norm0.running_var' holds -1 at element 1, below zero");
  // Missing and unexpected tensors.
  io::NamedTensors missing(good.tensors.begin(), good.tensors.end() - 1);
  expect_error(missing, good.metadata, "missing tensor");
  io::NamedTensors extra = good.tensors;
  extra.emplace_back("features.bogus", Tensor::zeros({1}));
  expect_error(extra, good.metadata, "unexpected tensor");
  // A quantized layer stored as F32 (an unpacked file claiming to be packed).
  io::NamedTensors unpacked = good.tensors;
  unpacked.emplace_back(layer + ".weight", Tensor::zeros({12, 48, 3, 3}));
  expect_error(unpacked, good.metadata, "unexpected tensor");
  // Metadata.
  io::Metadata m = good.metadata;
  m["format"] = "ttq-checkpoint";
  expect_error(good.tensors, m, "not a packed model");
  m = good.metadata;
  m["model"] = "squeezenet";
  expect_error(good.tensors, m, "evil.safetensors");
  m.erase("model");
  expect_error(good.tensors, m, "--arch");
}

// ---- the built ttq_pack ----------------------------------------------------------------

class PackTool : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::access(kPack.c_str(), X_OK), 0) << kPack << " is not built (build the ttq_pack target)";
    std::string tmpl = testing::TempDir() + "ttq_pack_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    m_dir = tmpl;
  }
  void TearDown() override { std::system(("rm -rf '" + m_dir + "'").c_str()); }
  std::string file(const std::string& n) const { return m_dir + "/" + n; }
  test::ToolRun run(const std::string& args) const { return test::run_tool(kPack + " " + args, m_dir); }

  const std::string kPack = std::string(TTQ_BINARY_DIR) + "/tools/ttq_pack";
  std::string m_dir;
};

TEST_F(PackTool, PacksTheSeedFilesAndTheResultRunsInTensorMode) {
  for (const SeedFile& s : kSeeds) {
    const std::string out = file(s.arch + ".packed.safetensors");
    test::ToolRun r = run("--in " + kSeed + "/" + s.file + ".safetensors --out " + out + " --arch " + s.arch);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_NE(r.out.find(s.arch == "squeezenet" ? "64.1%" : "38.2%"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("bytes packed"), std::string::npos) << r.out;
    EXPECT_TRUE(models::is_packed_file(out));
    EXPECT_FALSE(models::is_packed_file(kSeed + "/" + s.file + ".safetensors"));
    app::TensorInferOptions o;
    o.model_path = out;
    o.device = "cpu";
    o.input_path = kSeed + "/reference_io.safetensors";
    o.input_name = "input";
    o.logits_out = file(s.arch + ".logits.safetensors");
    std::ostringstream log;
    const Tensor logits = app::run_tensor_inference(o, log);
    EXPECT_LT(test::max_rel_error(logits, reference().at(s.file + ".logits")), 1e-4);
    EXPECT_LT(test::max_rel_error(io::read_safetensors(o.logits_out).at("logits"),
                                  float_logits(s, reference().at("input"))),
              1e-5);
  }
}

TEST_F(PackTool, BadInputsExitTwoWithOneLine) {
  auto write_raw = [&](const std::string& name, const std::string& bytes) {
    std::ofstream f(file(name), std::ios::binary);
    f << bytes;
    return file(name);
  };
  const std::string garbage = write_raw("garbage.safetensors", "this is not a safetensors file at all");
  io::NamedTensors four = seed("squeezenet_ttq").tensors();
  for (auto& [name, v] : four)
    if (name == "features.10.squeeze.weight") {
      v = v.clone();
      v.data<float>()[0] = 7.0f;
    }
  const std::string four_f = file("four.safetensors");
  io::write_safetensors(four_f, four, {{"model", "squeezenet"}});
  const std::string nometa = file("nometa.safetensors");
  io::write_safetensors(nometa, seed("squeezenet_ttq").tensors());
  const std::string packed = file("already.safetensors");
  ASSERT_EQ(run("--in " + kSeed + "/squeezenet_ttq.safetensors --out " + packed + " --arch squeezenet").code,
            0);
  const std::string out = file("out.safetensors");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--in " + garbage + " --out " + out + " --arch squeezenet", "garbage.safetensors"},
      {"--in " + file("absent.safetensors") + " --out " + out + " --arch squeezenet", "absent.safetensors"},
      {"--in " + four_f + " --out " + out, "features.10.squeeze"},
      {"--in " + nometa + " --out " + out, "--arch"},
      {"--in " + kSeed + "/squeezenet_ttq.safetensors --out " + out + " --arch resnet", "resnet"},
      {"--in " + kSeed + "/squeezenet_ttq.safetensors --out " + out + " --arch small_densenet", "--arch is"},
      {"--in " + nometa + " --out " + out + " --arch small_densenet", "features.conv0.weight"},
      {"--in " + kSeed + "/squeezenet_fp.safetensors --out " + out + " --arch squeezenet", "distinct values"},
      {"--in " + packed + " --out " + out, "already a packed model"},
      {"--out " + out, "--in"},
  };
  for (const auto& [args, needle] : cases) {
    test::ToolRun r = run(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
    EXPECT_EQ(test::count_lines(r.err), 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << "\n" << r.err;
  }
  EXPECT_NE(::access(out.c_str(), F_OK), 0) << "a failed run left an output file";
  test::ToolRun help = run("--help");
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--in"), std::string::npos);
}

}  // namespace
}  // namespace ttq
