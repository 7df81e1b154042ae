// The presets resnet18, resnet34, tv_densenet121 and squeezenet1_1 against torchvision's
// own modules: torchvision's state dicts (random init, seeded), random inputs and
// torchvision's logits, written into the build folder by the ctest fixture
// torchvision_export (tests/torchvision/export_torchvision.py; skipped, and these
// tests with it, where python3-torch / python3-torchvision are absent). Then the
// tools on such a file: ttq_infer runs it, ttq_train fine-tunes from it (--init),
// quantizes, ttq_pack packs, and the packed file runs. Names, counts and the TTQ
// rule without torch: tests/test_torchvision.cpp.
#include <filesystem>

#include "data/image.h"
#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/ops/ops.h"
#include "models/model_file.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

namespace fs = std::filesystem;

const std::string kExport = std::string(TTQ_BINARY_DIR) + "/torchvision/";

#define SKIP_WITHOUT_EXPORT(preset)                                                        \
  do {                                                                                     \
    if (!fs::exists(kExport + (preset) + "_io.safetensors"))                               \
      GTEST_SKIP() << "no torchvision export in " << kExport                               \
                   << " (tests/torchvision/export_torchvision.py needs python3-torch and " \
                      "python3-torchvision)";                                              \
  } while (0)

Tensor tensor_named(const io::SafeTensors& st, const std::string& name) {
  for (const auto& [n, t] : st.tensors())
    if (n == name) return t;
  ADD_FAILURE() << "no tensor " << name;
  return Tensor();
}

// torchvision's state dict loads into the preset as it is (no metadata, so the
// architecture comes from the flag), and the logits on 224x224 and 64x64 inputs
// are torchvision's within 1e-4 of their largest magnitude.
void expect_parity(const std::string& preset) {
  SKIP_WITHOUT_EXPORT(preset);
  models::ModelPtr m = models::load_model_file(kExport + preset + ".safetensors", preset, Device::cpu());
  EXPECT_EQ(m->config().num_classes, 1000);
  const io::SafeTensors io = io::read_safetensors(kExport + preset + "_io.safetensors");
  autograd::NoGradGuard ng;
  ops::set_poison_outputs(true);  // every op output NaN until its kernel writes it
  for (const char* size : {"224", "64"}) {
    const Tensor x = tensor_named(io, std::string("input_") + size);
    const Tensor want = tensor_named(io, std::string("logits_") + size);
    const Tensor got = m->forward(x);
    ASSERT_EQ(got.shape(), want.shape()) << preset;
    EXPECT_LT(test::max_rel_error(got, want), 1e-4) << preset << " at " << size << "x" << size;
  }
  ops::set_poison_outputs(false);
}

TEST(TorchvisionParity, ResNet18) { expect_parity("resnet18"); }
TEST(TorchvisionParity, ResNet34) { expect_parity("resnet34"); }
TEST(TorchvisionParity, DenseNet121) { expect_parity("tv_densenet121"); }
TEST(TorchvisionParity, SqueezeNet11) { expect_parity("squeezenet1_1"); }

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("ttq_tv") {}
};

// A folder data set (train / val) of 64x64 RGB noise, two classes.
void make_folder(const std::string& root) {
  Generator g(7);
  for (const char* split : {"train", "val"})
    for (const char* c : {"a", "b"}) {
      fs::create_directories(fs::path(root) / split / c);
      for (int k = 0; k < 4; ++k) {
        data::Image img(64, 64, 3);
        for (auto& p : img.pixels) p = static_cast<uint8_t>(g.below(256));
        data::save_image(root + "/" + split + "/" + c + "/" + std::to_string(k) + ".png", img);
      }
    }
}

void expect_ok(const test::ToolRun& r, const std::string& what) {
  EXPECT_EQ(r.code, 0) << what << "\n" << r.err;
}

TEST(TorchvisionParity, ToolsRunFineTuneQuantizeAndPackATorchvisionFile) {
  SKIP_WITHOUT_EXPORT("resnet18");
  TempDir dir;
  const std::string tv = kExport + "resnet18.safetensors", io = kExport + "resnet18_io.safetensors";
  const io::SafeTensors ref = io::read_safetensors(io);

  // ttq_infer on the file as torchvision wrote it: torchvision's logits.
  const std::string logits = dir.file("logits.safetensors");
  expect_ok(
      test::run_argv({test::tool_path("ttq_infer"), "--model", tv, "--arch", "resnet18", "--device", "cpu",
                      "--input-tensors", io, "--input-name", "input_64", "--logits-out", logits}),
      "ttq_infer");
  EXPECT_LT(test::max_rel_error(tensor_named(io::read_safetensors(logits), "logits"),
                                tensor_named(ref, "logits_64")),
            1e-4);

  // Fine-tuning from it on two classes: a fresh classifier, everything else
  // torchvision's (a learning rate too small to move the weights in one epoch).
  const std::string data = dir.file("data");
  make_folder(data);
  const std::string fp = dir.file("fp"), ttq = dir.file("ttq");
  const std::vector<std::string> common = {"--model",   "resnet18", "--data", "folder:" + data, "--device",
                                           "cpu",       "--epochs", "1",      "--batch",        "4",
                                           "--workers", "1",        "--quiet"};
  auto train = [&](std::vector<std::string> args) {
    args.insert(args.begin(), test::tool_path("ttq_train"));
    args.insert(args.end(), common.begin(), common.end());
    return test::run_argv(args, {.timeout_s = 300});
  };
  expect_ok(train({"--phase", "fp", "--init", tv, "--reset-classifier", "--lr", "1e-12", "--out", fp}),
            "ttq_train fp");
  const io::SafeTensors tvw = io::read_safetensors(tv), last = io::read_safetensors(fp + "/last.safetensors");
  for (const char* name : {"conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.conv2.weight"})
    EXPECT_LT(test::max_rel_error(tensor_named(last, name), tensor_named(tvw, name)), 1e-6) << name;
  EXPECT_EQ(tensor_named(last, "fc.weight").shape(), (Shape{2, 512}));

  // TTQ from that checkpoint, packed; the packed file runs on the 2-bit kernels
  // and gives the TTQ checkpoint's logits.
  expect_ok(train({"--phase", "ttq", "--init", fp + "/best.safetensors", "--out", ttq}), "ttq_train ttq");
  const std::string packed = dir.file("resnet18.packed.safetensors");
  expect_ok(test::run_argv({test::tool_path("ttq_pack"), "--in", ttq + "/best.safetensors", "--out", packed}),
            "ttq_pack");
  const std::string a = dir.file("a.safetensors"), b = dir.file("b.safetensors");
  for (const auto& [model, out] : {std::pair{ttq + "/best.safetensors", a}, std::pair{packed, b}})
    expect_ok(test::run_argv({test::tool_path("ttq_infer"), "--model", model, "--device", "cpu",
                              "--input-tensors", io, "--input-name", "input_64", "--logits-out", out}),
              "ttq_infer " + model);
  EXPECT_LT(test::max_rel_error(tensor_named(io::read_safetensors(b), "logits"),
                                tensor_named(io::read_safetensors(a), "logits")),
            1e-4);
}

}  // namespace
}  // namespace ttq
