// torchvision networks exported by torch.onnx (ResNet-18 with BN folded and
// kept, SqueezeNet 1.1, DenseNet-121, MobileNetV2; tests/onnx/make_fixtures.py,
// run by ctest as the fixture OnnxTorchvisionFixtures into the build folder)
// imported and run against PyTorch's logits on every device; then exported and
// imported again (the same logits), and ternarized, packed and run on the 2-bit
// kernels against their float model. Skipped when the fixtures are absent (no
// torch / torchvision). The ONNX importer itself: models/onnx.h.
#include <gtest/gtest.h>

#include <filesystem>

#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/ops/ops.h"
#include "models/graph_io.h"
#include "models/model_file.h"
#include "models/onnx.h"
#include "models/packed.h"
#include "test_util.h"

namespace ttq {
namespace {

const std::string kDir = std::string(TTQ_BINARY_DIR) + "/onnx_fixtures";
const char* kNets[] = {"resnet18", "resnet18_bn", "squeezenet1_1", "densenet121", "mobilenet_v2"};

bool have(const std::string& net) {
  return std::filesystem::exists(kDir + "/" + net + ".onnx") &&
         std::filesystem::exists(kDir + "/" + net + "_io.safetensors");
}
#define SKIP_WITHOUT_FIXTURES(net)                                                                          \
  do {                                                                                                      \
    if (!models::onnx_available()) GTEST_SKIP() << "this build reads no ONNX";                              \
    if (!have(net)) GTEST_SKIP() << "no " << kDir << "/" << (net) << ".onnx (torch / torchvision absent?)"; \
  } while (0)

Tensor forward(models::Model& m, const Tensor& x, Device dev) {
  autograd::NoGradGuard ng;
  m.to(dev);
  return m.forward(x.to(dev)).to(Device::cpu());
}

class OnnxTorchvision : public testing::TestWithParam<Device> {};

TEST_P(OnnxTorchvision, LogitsMatchPyTorch) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  for (const char* net : kNets) {
    SKIP_WITHOUT_FIXTURES(net);
    const io::SafeTensors io = io::read_safetensors(kDir + "/" + net + "_io.safetensors");
    auto model = models::load_model_file(kDir + "/" + net + ".onnx", "", Device::cpu());
    EXPECT_EQ(model->config().in_channels, 3);
    EXPECT_EQ(model->config().num_classes, 10);
    EXPECT_EQ(model->config().input_size, 64);
    const Tensor ours = forward(*model, io.at("input"), dev);
    const Tensor& theirs = io.at("logits");
    ASSERT_EQ(ours.shape(), theirs.shape());
    const double rel = test::max_rel_error(ours, theirs);
    std::printf("%-14s %s: max rel error %.3g\n", net, dev.str().c_str(), rel);
    EXPECT_LT(rel, 1e-4) << net << " on " << dev.str();
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, OnnxTorchvision, testing::ValuesIn(test::all_devices()), test::device_name);

// A network exported in training mode (BN kept) trains as in PyTorch: one
// training-mode forward (batch statistics) and backward of sum(logits * r) give
// PyTorch's logits and the gradient of every parameter.
TEST_P(OnnxTorchvision, TrainingStepMatchesPyTorch) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  SKIP_WITHOUT_FIXTURES("fmnist_cnn_train");
  const io::SafeTensors io = io::read_safetensors(kDir + "/fmnist_cnn_train_io.safetensors");
  auto model = models::load_model_file(kDir + "/fmnist_cnn_train.onnx", "", Device::cpu());
  model->to(dev);
  model->train();
  const Tensor logits = model->forward(io.at("input").to(dev));
  EXPECT_LT(test::max_rel_error(logits.to(Device::cpu()), io.at("logits")), 1e-5);
  ops::sum(ops::mul(logits, io.at("r").to(dev))).backward();
  int checked = 0;
  for (auto& [name, p] : model->named_parameters()) {
    const Tensor g = p->grad().to(Device::cpu());
    const double rel = test::max_rel_error(g, io.at("grad." + name));
    EXPECT_LT(rel, 1e-4) << name << " on " << dev.str();
    ++checked;
  }
  EXPECT_EQ(checked, 17);  // 5 convs, 5 BNs (weight, bias), the classifier (weight, bias)
}

// Import -> export -> import: the same graph description and the same logits, bit for bit.
TEST(OnnxTorchvisionRoundTrip, ExportThenImportGivesTheSameLogits) {
  for (const char* net : kNets) {
    SKIP_WITHOUT_FIXTURES(net);
    const io::SafeTensors io = io::read_safetensors(kDir + "/" + net + "_io.safetensors");
    const models::OnnxImport a = models::import_onnx_file(kDir + "/" + net + ".onnx");
    const std::string bytes = models::export_onnx(a.graph, a.tensors, 64, 64);
    const models::OnnxImport b = models::import_onnx(bytes.data(), bytes.size(), "exported", a.graph.arch());
    EXPECT_EQ(models::graph_to_json(a.graph), models::graph_to_json(b.graph)) << net;
    Generator gen(1);
    auto ma = models::create(a.graph, a.config, gen);
    auto mb = models::create(b.graph, b.config, gen);
    ma->load_state_dict(a.tensors, true, "a");
    mb->load_state_dict(b.tensors, true, "b");
    ma->eval();
    mb->eval();
    const Tensor la = forward(*ma, io.at("input"), Device::cpu());
    const Tensor lb = forward(*mb, io.at("input"), Device::cpu());
    EXPECT_EQ(test::max_abs_diff(la, lb), 0.0) << net;
  }
}

// An imported network with its quantizable convs made ternary ({-b, 0, +a} per
// layer) packs to 2 bits, and the packed runner gives the float model's logits.
// An eval-mode export folds BN into conv biases: those layers run as float convs
// of their ternary values (the packed kernels add no bias), the others packed.
TEST(OnnxTorchvisionPacked, TernaryImportPacksAndMatchesItsFloatModel) {
  for (const char* net : {"resnet18", "resnet18_bn", "squeezenet1_1", "densenet121"}) {
    SKIP_WITHOUT_FIXTURES(net);
    const io::SafeTensors io = io::read_safetensors(kDir + "/" + net + "_io.safetensors");
    models::OnnxImport im = models::import_onnx_file(kDir + "/" + net + ".onnx");
    const std::string arch = models::register_graph(im.graph, net);
    std::set<std::string> quantized;
    for (int i : im.graph.quantizable_convs()) quantized.insert(im.graph.node(i).name + ".weight");
    ASSERT_FALSE(quantized.empty());
    for (auto& [name, t] : im.tensors) {
      if (!quantized.count(name)) continue;
      std::vector<float> w = t.to_vector<float>();
      double mean = 0;
      for (float v : w) mean += std::fabs(v);
      mean /= static_cast<double>(w.size());
      // Scales of the layer's own magnitude keep the activations in range.
      const float wp = static_cast<float>(1.5 * mean), wn = static_cast<float>(1.25 * mean);
      for (float& v : w) v = v > 0.7 * mean ? wp : v < -0.7 * mean ? -wn : 0.0f;
      t = Tensor::from_vector(w, t.shape());
    }
    Generator gen(2);
    auto model = models::create(im.graph, im.config, gen);
    model->load_state_dict(im.tensors, true, net);
    model->eval();
    const Tensor ref = forward(*model, io.at("input"), Device::cpu());
    io::Metadata meta;
    models::describe_arch(meta, arch);
    models::PackedContent packed = models::pack_tensors(im.tensors, meta, arch, net);
    EXPECT_EQ(packed.metadata.at("model_graph"), models::graph_to_json(im.graph));
    auto runner = models::PackedModel::from_tensors(packed.tensors, packed.metadata, "", Device::cpu(), net);
    const Tensor got = runner->forward(io.at("input"));
    const double rel = test::max_rel_error(got, ref);
    std::printf("%-14s packed vs float: max rel error %.3g (%d packed layers)\n", net, rel,
                runner->quantized_layers());
    EXPECT_LT(rel, 1e-4) << net;
  }
}

}  // namespace
}  // namespace ttq
