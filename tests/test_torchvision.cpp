// torchvision's architectures as presets (models/torchvision.cpp): their
// state-dict names, dtypes, shapes and order against torchvision's own lists
// (tests/fixtures/torchvision/<preset>.txt, written by
// tests/torchvision/export_torchvision.py --names), parameter counts, minimum
// input sizes, the TTQ rule on them, and train -> TTQ -> pack -> packed logits
// equal to the float TTQ model's. The logits against torchvision's own modules:
// tests/test_torchvision_parity.cpp.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "engine/autograd.h"
#include "engine/ops/ops.h"
#include "engine/optim/optimizer.h"
#include "models/model.h"
#include "models/packed.h"
#include "models/summary.h"
#include "models/ttq.h"
#include "tests/test_util.h"
#include "train/trainer.h"

namespace ttq {
namespace {

const std::vector<std::string> kPresets = {"resnet18", "resnet34", "tv_densenet121", "squeezenet1_1"};

struct Entry {
  std::string name, dtype;
  Shape shape;
};

// torchvision's state dict of `preset` (1000 classes): "name dtype AxBxC" per line.
std::vector<Entry> torchvision_list(const std::string& preset) {
  const std::string path = test::seed_dir() + "/../torchvision/" + preset + ".txt";
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  std::vector<Entry> out;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ss(line);
    Entry e;
    std::string dims;
    ss >> e.name >> e.dtype >> dims;
    if (dims != "scalar") {
      std::istringstream ds(dims);
      std::string d;
      while (std::getline(ds, d, 'x')) e.shape.push_back(std::stoll(d));
    }
    out.push_back(e);
  }
  return out;
}

models::ModelConfig imagenet() {
  models::ModelConfig c;
  c.num_classes = 1000;
  c.input_size = 224;
  return c;
}

// Every problem of mapping torchvision's list onto the model's state dict, one
// per line (empty when the two match one to one, in order): each BatchNorm's
// num_batches_tracked (I64 scalar, which the engine ignores) must belong to a BN
// of the model; every other entry must be the model's next one, same name and shape.
std::string mapping_problems(const std::vector<Entry>& tv, models::Model& model) {
  std::vector<std::pair<std::string, Shape>> ours;
  for (const auto& [name, t] : model.state_dict()) ours.emplace_back(name, t.shape());
  std::set<std::string> bns;
  for (const auto& [name, m] : model.named_modules())
    if (dynamic_cast<nn::BatchNorm2d*>(m) != nullptr) bns.insert(name);
  std::ostringstream p;
  size_t k = 0;
  for (const Entry& e : tv) {
    const std::string suffix = ".num_batches_tracked";
    if (e.name.size() > suffix.size() &&
        e.name.compare(e.name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string bn = e.name.substr(0, e.name.size() - suffix.size());
      if (!bns.count(bn) || e.dtype != "I64" || !e.shape.empty()) p << "unexpected " << e.name << "\n";
      continue;
    }
    if (k >= ours.size()) {
      p << "unexpected " << e.name << "\n";
      continue;
    }
    if (ours[k].first != e.name || ours[k].second != e.shape || e.dtype != "F32")
      p << "torchvision's " << e.name << " " << shape_str(e.shape) << " is the model's " << ours[k].first
        << " " << shape_str(ours[k].second) << "\n";
    ++k;
  }
  for (; k < ours.size(); ++k) p << "missing " << ours[k].first << "\n";
  return p.str();
}

TEST(Torchvision, StateDictNamesShapesAndOrderAreTorchvisions) {
  for (const std::string& preset : kPresets) {
    const std::vector<Entry> tv = torchvision_list(preset);
    ASSERT_GT(tv.size(), 50u) << preset;
    Generator gen(1);
    models::ModelPtr m = models::create(preset, imagenet(), gen);
    EXPECT_EQ(mapping_problems(tv, *m), "") << preset;

    // A renamed layer, a reshaped one and a missing one are each caught.
    std::vector<Entry> renamed = tv, reshaped = tv, shorter = tv;
    renamed[renamed.size() / 2].name += "x";
    reshaped.back().shape[0] += 1;
    shorter.erase(shorter.begin() + 1);
    EXPECT_NE(mapping_problems(renamed, *m), "") << preset;
    EXPECT_NE(mapping_problems(reshaped, *m), "") << preset;
    EXPECT_NE(mapping_problems(shorter, *m), "") << preset;

    // And the loader takes torchvision's list as it is: random tensors under its
    // names (num_batches_tracked as I64) load strictly and land where they are named.
    io::NamedTensors sd;
    for (size_t i = 0; i < tv.size(); ++i) {
      const Entry& e = tv[i];
      if (e.dtype == "I64") {
        sd.emplace_back(e.name, Tensor::zeros(e.shape, DType::I64));
      } else {
        Tensor t = test::rand(e.shape, 100 + i);
        if (e.name.find("running_var") != std::string::npos)
          for (int64_t j = 0; j < t.numel(); ++j) t.data<float>()[j] = 0.5f + std::fabs(t.data<float>()[j]);
        sd.emplace_back(e.name, t);
      }
    }
    models::load_weights(*m, sd, preset + ".txt");
    const auto loaded = m->state_dict();
    std::map<std::string, Tensor> by_name(loaded.begin(), loaded.end());
    for (const auto& [name, t] : sd) {
      if (t.dtype() == DType::I64) continue;
      ASSERT_TRUE(by_name.count(name)) << name;
      EXPECT_EQ(test::max_abs_diff(by_name.at(name), t), 0.0) << name;
    }
    // One renamed tensor: refused, naming it, with nothing copied.
    io::NamedTensors bad = sd;
    bad[3].first = "renamed.weight";
    EXPECT_INPUT_ERROR_MENTIONS(models::load_weights(*m, bad, "tv.safetensors"), "renamed.weight");
  }
}

TEST(Torchvision, ParameterCountsAreTorchvisions) {
  // torchvision's own counts at 1000 classes (sum of p.numel() over parameters()).
  const std::map<std::string, int64_t> want = {{"resnet18", 11689512},
                                               {"resnet34", 21797672},
                                               {"tv_densenet121", 7978856},
                                               {"squeezenet1_1", 1235496}};
  for (const auto& [preset, count] : want) {
    Generator gen(2);
    models::ModelPtr m = models::create(preset, imagenet(), gen);
    EXPECT_EQ(m->num_parameters(), count) << preset;
    EXPECT_EQ(m->graph().num_parameters(), count) << preset;
    EXPECT_EQ(models::summarize(*m, {1, 3, 224, 224}).params, count) << preset;
  }
  // The classifier follows --classes: ResNet-18's fc is 512 -> classes.
  models::ModelConfig c200;
  c200.num_classes = 200;
  EXPECT_EQ(models::create("resnet18", c200)->num_parameters(), 11689512 - 800 * 513);
}

TEST(Torchvision, SummaryToolPrintsTorchvisionsCount) {
  const test::ToolRun r = test::run_argv({test::tool_path("ttq_infer"), "--summary", "--arch", "resnet18",
                                          "--input", "3x224x224", "--classes", "1000"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters: 11689512"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layer4.1.conv2"), std::string::npos) << r.out;
}

TEST(Torchvision, MinimumInputSizes) {
  // resnet18: every window fits a 1x1 input (padded stem, pool and convs).
  // tv_densenet121: 29 -> conv0 15 -> pool0 8 -> transitions 4, 2, 1.
  // squeezenet1_1: 25 -> features.0 12 -> ceil pools 6, 3, 1.
  for (const auto& [preset, min] : std::map<std::string, int64_t>{
           {"resnet18", 1}, {"resnet34", 1}, {"tv_densenet121", 29}, {"squeezenet1_1", 25}}) {
    models::ModelConfig c;
    c.num_classes = 3;
    Generator gen(3);
    models::ModelPtr m = models::create(preset, c, gen);
    EXPECT_EQ(m->min_input_size(), min) << preset;
    if (min > 1) {
      EXPECT_THROW(m->check_input({1, 3, min - 1, min - 1}, "x"), InputError) << preset;
    }
    m->eval();
    autograd::NoGradGuard ng;
    EXPECT_EQ(m->forward(test::rand({1, 3, min, min}, 4)).shape(), (Shape{1, 3})) << preset;
  }
}

TEST(Torchvision, TrainingOnImagesTooSmallForTheArchitectureIsABadInput) {
  // 28x28 MNIST images into tv_densenet121 (29x29 at least): one line, exit 2,
  // nothing written in the run folder.
  std::string tmpl = testing::TempDir() + "ttq_tv_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  const std::string data = test::make_tiny_idx(tmpl + "/mnist", 20, 10);
  const test::ToolRun r =
      test::run_argv({test::tool_path("ttq_train"), "--model", "tv_densenet121", "--data", "mnist:" + data,
                      "--out", tmpl + "/run", "--device", "cpu", "--epochs", "1", "--quiet"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("mnist:" + data + " images: shape [1, 1, 28, 28] does not fit tv_densenet121"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(std::filesystem::exists(tmpl + "/run/config.json"));
  std::filesystem::remove_all(tmpl);
}

TEST(Torchvision, TtqScalesStartAtTheMeansInANetworkWithoutBatchNorm) {
  for (const auto& [preset, init] : std::map<std::string, std::string>{{"resnet18", "ones"},
                                                                       {"tv_densenet121", "ones"},
                                                                       {"squeezenet1_1", "mean"},
                                                                       {"squeezenet", "ones"}}) {
    train::TrainOptions o;
    o.model = preset;
    o.phase = "ttq";
    o.init = "fp.safetensors";
    o.out = "run";
    EXPECT_EQ(train::resolve_defaults(o).scales_init, init) << preset;
    o.scales_init = "ones";
    EXPECT_EQ(train::resolve_defaults(o).scales_init, "ones") << preset << ": the flag wins";
  }
}

TEST(Torchvision, TtqRuleKeepsTheStemAndClassifierAndQuantizesDownsamples) {
  struct Case {
    std::string preset, first, classifier;
    size_t quantized;
  };
  // resnet18: 16 block convs and the 3 downsample convs (resnet34: 32 and 3); the DenseNet: 58 dense
  // layers x 2 and 3 transitions; SqueezeNet 1.1: 8 Fires x 3.
  for (const Case& c : {Case{"resnet18", "conv1", "fc", 19}, Case{"resnet34", "conv1", "fc", 35},
                        Case{"tv_densenet121", "features.conv0", "classifier", 119},
                        Case{"squeezenet1_1", "features.0", "classifier.1", 24}}) {
    const models::Graph g = models::build_graph(c.preset, imagenet());
    ASSERT_EQ(g.first_layers().size(), 1u) << c.preset;
    EXPECT_EQ(g.node(g.first_layers()[0]).name, c.first);
    EXPECT_EQ(g.node(g.first_layers()[0]).conv.kernel, c.preset == "squeezenet1_1" ? 3 : 7);
    ASSERT_EQ(g.classifiers().size(), 1u) << c.preset;
    EXPECT_EQ(g.node(g.classifiers()[0]).name, c.classifier);
    EXPECT_EQ(g.quantizable_convs().size(), c.quantized) << c.preset;
  }
  const models::Graph r = models::build_graph("resnet18", imagenet());
  std::set<std::string> q;
  for (int i : r.quantizable_convs()) q.insert(r.node(i).name);
  for (const char* d : {"layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"})
    EXPECT_TRUE(q.count(d)) << d;
}

// Random data of `classes` classes: class k adds a bright block at a place of its own.
struct Batch {
  Tensor x, y;
};
Batch toy_batch(int64_t n, int64_t size, int64_t classes, uint64_t seed) {
  Tensor x = test::rand({n, 3, size, size}, seed);
  std::vector<int64_t> lab(static_cast<size_t>(n));
  float* px = x.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = i % classes;
    lab[static_cast<size_t>(i)] = k;
    for (int64_t ch = 0; ch < 3; ++ch)
      for (int64_t r = 0; r < size / 2; ++r)
        for (int64_t col = 0; col < size / 2; ++col)
          px[((i * 3 + ch) * size + r + (k % 2) * size / 2) * size + col + (k / 2 % 2) * size / 2] += 2.0f;
  }
  return {x, Tensor::from_vector<int64_t>(lab, {n})};
}

void step(models::Model& m, optim::Optimizer& opt, const Batch& b) {
  m.train();
  Tensor loss = ops::cross_entropy(m.forward(b.x), b.y);
  ASSERT_TRUE(std::isfinite(loss.item()));
  opt.zero_grad();
  loss.backward();
  opt.step();
}

// Full precision steps, TTQ, TTQ steps, packing, and the packed model's logits
// on `dev` against the float TTQ model's (CPU) on inputs of two sizes. On CUDA:
// the fp32 CUDA-core path at 1e-4 and the fp16 tensor-core path at 2e-3.
void train_quantize_pack(const std::string& preset, int64_t size, size_t quantized, Device dev) {
  models::ModelConfig cfg;
  cfg.num_classes = 4;
  cfg.input_size = size;
  Generator gen(5);
  nn::manual_seed(5);
  models::ModelPtr m = models::create(preset, cfg, gen);
  // Biases (zero at init) and BN statistics away from their defaults, so that
  // folding them into the packed convs is visible in the logits.
  uint64_t seed = 60;
  for (auto& [name, t] : m->named_parameters())
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0)
      t->copy_(ops::scale(test::rand(t->shape(), ++seed), 0.3));
  for (auto& [name, t] : m->named_buffers()) {
    Tensor r = test::rand(t->shape(), ++seed);
    for (int64_t j = 0; j < r.numel(); ++j)
      r.data<float>()[j] = name.find("running_var") != std::string::npos ? 0.6f + 0.5f * r.data<float>()[j]
                                                                         : 0.2f * r.data<float>()[j];
    t->copy_(r);
  }
  const Batch b = toy_batch(4, size, 4, 6);
  {
    optim::SGDOptions so;
    so.lr = 0.01;
    so.momentum = 0.9;
    optim::SGD sgd(so);
    sgd.add_param_group(m->parameters());
    for (int s = 0; s < 2; ++s) step(*m, sgd, b);
  }
  models::TtqOptions to;
  to.t = 0.05;
  models::TtqModel ttq = models::quantize_model(*m, to);
  ASSERT_EQ(ttq.layers.size(), quantized) << preset;
  {
    auto opt = models::make_ttq_optimizer(*m, ttq, 1e-3);
    for (int s = 0; s < 2; ++s) step(*m, *opt, b);
  }
  const io::NamedTensors view = models::ttq_checkpoint_view(*m, ttq);
  models::PackedContent packed = models::pack_tensors(view, {}, preset, preset);
  EXPECT_EQ(packed.report.layers.size(), quantized) << preset;
  std::vector<std::pair<models::PackedRunOptions, double>> runs = {{models::PackedRunOptions{}, 1e-4}};
  if (dev.is_cuda()) {
    runs[0].first.cuda_path = kernels::CudaPath::Simt;
    runs.push_back({models::PackedRunOptions{}, 2e-3});
  }
  m->eval();
  autograd::NoGradGuard ng;
  ops::set_poison_outputs(true);  // every op output NaN until its kernel writes it
  for (const auto& [options, tol] : runs) {
    auto pm = models::PackedModel::from_tensors(packed.tensors, packed.metadata, "", dev, preset, options);
    EXPECT_EQ(pm->quantized_layers(), static_cast<int>(quantized)) << preset;
    for (int64_t s : {size, size + 7}) {
      const Tensor x = test::rand({2, 3, s, s}, 40 + s);
      const Tensor want = m->forward(x), got = pm->forward(x.to(dev));
      ASSERT_TRUE(test::all_finite(got)) << preset;
      EXPECT_LT(test::max_rel_error(got, want), tol) << preset << " at " << s << "x" << s;
    }
  }
  ops::set_poison_outputs(false);
}

class TorchvisionPacked : public testing::TestWithParam<Device> {};

TEST_P(TorchvisionPacked, ResNet18TrainsQuantizesPacksAndMatchesItsFloatModel) {
  TTQ_SKIP_IF_NO_DEVICE(GetParam());
  train_quantize_pack("resnet18", 32, 19, GetParam());
}
TEST_P(TorchvisionPacked, ResNet34TrainsQuantizesPacksAndMatchesItsFloatModel) {
  TTQ_SKIP_IF_NO_DEVICE(GetParam());
  train_quantize_pack("resnet34", 32, 35, GetParam());
}
TEST_P(TorchvisionPacked, DenseNet121TrainsQuantizesPacksAndMatchesItsFloatModel) {
  TTQ_SKIP_IF_NO_DEVICE(GetParam());
  train_quantize_pack("tv_densenet121", 32, 119, GetParam());
}
TEST_P(TorchvisionPacked, SqueezeNet11TrainsQuantizesPacksAndMatchesItsFloatModel) {
  // Its quantized convs have biases: the packed convs take them as epilogue shifts.
  TTQ_SKIP_IF_NO_DEVICE(GetParam());
  train_quantize_pack("squeezenet1_1", 32, 24, GetParam());
}
INSTANTIATE_TEST_SUITE_P(Devices, TorchvisionPacked, testing::ValuesIn(test::all_devices()),
                         test::device_name);

}  // namespace
}  // namespace ttq
