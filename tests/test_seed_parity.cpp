// Golden end-to-end test against PyTorch: the seed's four trained models
// (tests/fixtures/seed, small DenseNet and SqueezeNet, fp and TTQ) load with no
// name mapping and reproduce PyTorch's logits for reference_io's input within a
// relative error of 1e-4 (max|ours - theirs| / max|theirs|), on the CPU and on
// CUDA when present; batch N equals N batches of 1; eval is bit-reproducible;
// the built ttq_infer gives the same logits and fails cleanly (exit 2, one line)
// on broken files.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "app/infer.h"
#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "models/model.h"
#include "models/model_file.h"
#include "models/packed.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

const std::string kSeed = test::seed_dir();

struct SeedCase {
  std::string file;  // e.g. "small_densenet_fp"
  std::string arch;
};
const std::vector<SeedCase> kCases = {{"small_densenet_fp", "small_densenet"},
                                      {"small_densenet_ttq", "small_densenet"},
                                      {"squeezenet_fp", "squeezenet"},
                                      {"squeezenet_ttq", "squeezenet"}};

const io::SafeTensors& reference() {
  static const io::SafeTensors ref = io::read_safetensors(kSeed + "/reference_io.safetensors");
  return ref;
}

// The seed model with its weights loaded straight through load_state_dict
// (no name mapping), in eval mode on `device`.
models::ModelPtr seed_model(const SeedCase& c, Device device) {
  auto model = models::create(c.arch);
  io::SafeTensors st = io::read_safetensors(kSeed + "/" + c.file + ".safetensors");
  model->load_state_dict(st.tensors(), /*strict=*/true, c.file);
  model->eval();
  model->to(device);
  return model;
}

Tensor eval_forward(models::Model& m, const Tensor& x) {
  autograd::NoGradGuard ng;
  return m.forward(x.to(m.named_parameters()[0].second->device())).to(Device::cpu());
}

class SeedParity : public testing::TestWithParam<Device> {};

TEST_P(SeedParity, LogitsMatchPyTorch) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  const Tensor& x = reference().at("input");
  for (const SeedCase& c : kCases) {
    auto model = seed_model(c, dev);
    Tensor ours = eval_forward(*model, x);
    const Tensor& theirs = reference().at(c.file + ".logits");
    ASSERT_EQ(ours.shape(), theirs.shape());
    const double rel = test::max_rel_error(ours, theirs);
    const double abs = test::max_abs_diff(ours, theirs);
    std::printf("%-20s %s: max rel error %.3g, max abs error %.3g\n", c.file.c_str(), dev.str().c_str(), rel,
                abs);
    EXPECT_LT(rel, 1e-4) << c.file << " on " << dev.str();
    // Argmax of image 0 (tests/fixtures/seed/README.md, top-5 of image 0).
    std::vector<float> l = ours.to_vector<float>();
    int best = static_cast<int>(std::max_element(l.begin(), l.begin() + 200) - l.begin());
    const int expect = c.file.rfind("small", 0) == 0 ? 134 : 62;
    EXPECT_EQ(best, expect) << c.file;
  }
}

TEST_P(SeedParity, BatchOfNEqualsNBatchesOfOneAndEvalIsReproducible) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  const Tensor& x = reference().at("input");
  for (const SeedCase& c : {kCases[0], kCases[3]}) {
    auto model = seed_model(c, dev);
    Tensor all = eval_forward(*model, x);
    Tensor again = eval_forward(*model, x);
    EXPECT_EQ(test::max_abs_diff(all, again), 0.0) << c.file << ": eval forward is not bit-reproducible";
    for (int64_t i = 0; i < x.size(0); ++i) {
      Tensor one = eval_forward(*model, x.narrow(0, i, 1).contiguous());
      EXPECT_LE(test::max_rel_error(one, all.narrow(0, i, 1).contiguous()), 1e-5) << c.file << " image " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, SeedParity, testing::ValuesIn(test::all_devices()), test::device_name);

TEST(SeedImport, TorchvisionSpellingLoadsThroughTheNameMapping) {
  io::SafeTensors st = io::read_safetensors(kSeed + "/small_densenet_fp.safetensors");
  io::NamedTensors renamed;
  int changed = 0;
  for (const auto& [n, t] : st.tensors()) {
    std::string r = n;
    for (const char* part : {"norm", "conv"}) {
      for (const char* idx : {"1", "2"}) {
        const std::string from = std::string(".") + part + "." + idx + ".";
        const std::string to = std::string(".") + part + idx + ".";
        size_t pos = r.find(from);
        if (pos != std::string::npos && r.find(".denselayer") != std::string::npos) {
          r.replace(pos, from.size(), to);
          ++changed;
        }
      }
    }
    renamed.emplace_back(r, t);
  }
  EXPECT_EQ(changed, 30 * (4 + 1 + 4 + 1));  // per dense layer: norm.1 (4 tensors), conv.1, norm.2, conv.2
  auto model = models::create("small_densenet");
  EXPECT_THROW(model->load_state_dict(renamed, true, "renamed"), InputError);
  models::load_weights(*model, renamed, "renamed");
  model->eval();
  auto direct = seed_model(kCases[0], Device::cpu());
  const Tensor& x = reference().at("input");
  EXPECT_EQ(test::max_abs_diff(eval_forward(*model, x), eval_forward(*direct, x)), 0.0);
}

// ---- the ttq_infer binary ---------------------------------------------------

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("ttq_infer") {}
};

const std::string kInfer = std::string(TTQ_BINARY_DIR) + "/tools/ttq_infer";

test::ToolRun run_infer(const std::string& args, const TempDir& dir) {
  return test::run_tool(kInfer + " " + args, dir.path());
}

class InferTool : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::access(kInfer.c_str(), X_OK), 0) << kInfer << " is not built (build the ttq_infer target)";
  }
  TempDir dir;
};

TEST_F(InferTool, TensorModeReproducesTheSeedLogits) {
  for (const SeedCase& c : {kCases[1], kCases[2]}) {
    const std::string out = dir.file(c.file + "_logits.safetensors");
    test::ToolRun r = run_infer("--model " + kSeed + "/" + c.file + ".safetensors --arch " + c.arch +
                                    " --device cpu --input-tensors " + kSeed +
                                    "/reference_io.safetensors --input-name input --logits-out " + out,
                                dir);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    io::SafeTensors st = io::read_safetensors(out);
    const Tensor& logits = st.at("logits");
    EXPECT_LT(test::max_rel_error(logits, reference().at(c.file + ".logits")), 1e-4) << c.file;
    EXPECT_EQ(st.meta("model"), c.arch);
    auto model = seed_model(c, Device::cpu());
    EXPECT_EQ(test::max_abs_diff(logits, eval_forward(*model, reference().at("input"))), 0.0);
  }
}

TEST_F(InferTool, ArchitectureFromMetadataAndDefaultDevice) {
  // A training checkpoint whose metadata names the model needs no --arch; its
  // optimizer state and TTQ training state (latent weight, scales) are skipped.
  io::SafeTensors st = io::read_safetensors(kSeed + "/squeezenet_ttq.safetensors");
  io::NamedTensors content = st.tensors();
  content.emplace_back("features.4.squeeze.latent_weight", Tensor::zeros({16, 64, 1, 1}));
  content.emplace_back("features.4.squeeze.wp", Tensor::ones({1}));
  content.emplace_back("features.4.squeeze.wn", Tensor::ones({1}));
  content.emplace_back("optimizer.group0.param0.exp_avg", Tensor::zeros({64, 3, 3, 3}));
  content.emplace_back("optimizer_scalar.steps", Tensor::ones({1}, DType::F64));
  content.emplace_back("scheduler.best", Tensor::ones({1}, DType::F64));
  const std::string ckpt = dir.file("ckpt.safetensors");
  io::write_safetensors(ckpt, content, {{"model", "squeezenet"}, {"phase", "ttq"}});
  const std::string out = dir.file("logits.safetensors");
  test::ToolRun r = run_infer("--model " + ckpt + " --input-tensors " + kSeed +
                                  "/reference_io.safetensors --input-name input --logits-out " + out,
                              dir);
  ASSERT_EQ(r.code, 0) << r.err;
  if (!cuda::available()) {
    EXPECT_EQ(r.err, "no CUDA device available: running on the CPU\n");
  }
  EXPECT_LT(
      test::max_rel_error(io::read_safetensors(out).at("logits"), reference().at("squeezenet_ttq.logits")),
      1e-4);
  // Metadata and --arch disagreeing is an input error.
  r = run_infer("--model " + ckpt + " --arch small_densenet --device cpu --input-tensors " + kSeed +
                    "/reference_io.safetensors --input-name input --logits-out " + out,
                dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("metadata says model 'squeezenet'"), std::string::npos) << r.err;
}

TEST_F(InferTool, PackedModelsRunThroughThePackedRuntime) {
  const std::string packed = dir.file("packed.safetensors");
  models::pack_model_file(kSeed + "/squeezenet_ttq.safetensors", packed, "");
  const std::string out = dir.file("logits.safetensors");
  test::ToolRun r = run_infer("--model " + packed + " --device cpu --input-tensors " + kSeed +
                                  "/reference_io.safetensors --input-name input --logits-out " + out,
                              dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_LT(
      test::max_rel_error(io::read_safetensors(out).at("logits"), reference().at("squeezenet_ttq.logits")),
      1e-4);
  r = run_infer("--summary --model " + packed, dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("packed model"), std::string::npos) << r.err;
}

TEST_F(InferTool, SummaryPrintsLayersParametersAndFlops) {
  test::ToolRun r = run_infer("--summary --arch small_densenet", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters: 440264"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("features.conv0"), std::string::npos);
  EXPECT_NE(r.out.find("[1, 48, 56, 56]"), std::string::npos);
  r = run_infer("--summary --arch squeezenet --input 1x28x28 --classes 10", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters: " + std::to_string(827784 - 64 * 2 * 9 - 190 * 513)), std::string::npos);
  r = run_infer("--summary --arch squeezenet --input 3x5x5", dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
}

// Every broken input: exit code 2 and exactly one line on stderr naming the problem.
TEST_F(InferTool, BrokenInputsExitTwoWithOneLine) {
  const std::string good = kSeed + "/squeezenet_fp.safetensors";
  const std::string ref = kSeed + "/reference_io.safetensors";
  io::SafeTensors st = io::read_safetensors(good);
  const std::vector<uint8_t> bytes = [&] {
    std::ifstream f(good, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }();
  auto write_raw = [&](const std::string& name, const std::vector<uint8_t>& b) {
    std::ofstream f(dir.file(name), std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    return dir.file(name);
  };
  const std::string truncated =
      write_raw("truncated.safetensors", {bytes.begin(), bytes.begin() + bytes.size() / 2});
  std::vector<uint8_t> huge_header = bytes;
  huge_header[4] = 0x7f;  // header length of ~0.5 TB
  const std::string huge = write_raw("huge.safetensors", huge_header);
  std::vector<uint8_t> bad_json = bytes;
  bad_json[8] = '[';
  const std::string badjson = write_raw("badjson.safetensors", bad_json);
  io::NamedTensors missing(st.tensors().begin() + 1, st.tensors().end());
  const std::string missing_f = dir.file("missing.safetensors");
  io::write_safetensors(missing_f, missing);
  io::NamedTensors extra = st.tensors();
  extra.emplace_back("features.4.bogus", Tensor::zeros({2}));
  const std::string extra_f = dir.file("extra.safetensors");
  io::write_safetensors(extra_f, extra);
  io::NamedTensors wrong = st.tensors();
  for (auto& [n, t] : wrong)
    if (n == "features.5.squeeze.weight") t = Tensor::zeros({16, 128, 3, 3});
  const std::string wrong_f = dir.file("wrong.safetensors");
  io::write_safetensors(wrong_f, wrong);
  const std::string plain = dir.file("plain.safetensors");  // a PyTorch export without metadata
  io::write_safetensors(plain, st.tensors());
  const std::string bad_input = dir.file("input.safetensors");
  io::write_safetensors(bad_input,
                        {{"input", Tensor::zeros({2, 1, 56, 56})}, {"codes", Tensor::zeros({4}, DType::U8)}});

  struct Case {
    std::string args;
    std::string needle;
  };
  const std::string out = " --logits-out " + dir.file("o.safetensors");
  const std::string in = " --input-tensors " + ref + " --input-name input" + out;
  std::vector<Case> cases = {
      {"--model " + dir.file("absent.safetensors") + " --arch squeezenet --device cpu" + in, "cannot open"},
      {"--model " + truncated + " --arch squeezenet --device cpu" + in, "past the end of the data section"},
      {"--model " + huge + " --arch squeezenet --device cpu" + in, "runs past the end of the file"},
      {"--model " + badjson + " --arch squeezenet --device cpu" + in, "invalid JSON"},
      {"--model " + missing_f + " --arch squeezenet --device cpu" + in, "features.0.weight"},
      {"--model " + extra_f + " --arch squeezenet --device cpu" + in, "features.4.bogus"},
      {"--model " + wrong_f + " --arch squeezenet --device cpu" + in, "features.5.squeeze.weight"},
      {"--model " + plain + " --device cpu" + in, "--arch"},
      {"--model " + plain + " --arch resnet --device cpu" + in, "unknown model 'resnet'"},
      {"--model " + good + " --arch small_densenet --device cpu" + in, "metadata says model 'squeezenet'"},
      {"--model " + good + " --arch squeezenet --device tpu" + in, "unknown device 'tpu'"},
      {"--model " + good + " --arch squeezenet --device cpu --input-tensors " + ref + " --input-name nope" +
           out,
       "no tensor named 'nope'"},
      {"--model " + good + " --arch squeezenet --device cpu --input-tensors " + bad_input +
           " --input-name input" + out,
       "does not fit squeezenet"},
      {"--model " + good + " --arch squeezenet --device cpu --input-tensors " + bad_input +
           " --input-name codes" + out,
       "is U8"},
      {"--model " + good + " --arch squeezenet --device cpu --input-tensors " + ref +
           " --input-name input "
           "--logits-out /nonexistent-dir-ttq/o.safetensors",
       "cannot create a temporary file"},
      {"--model " + good + " --arch squeezenet --no-such-flag", "no-such-flag"},
      {"", "nothing to do"},
  };
  if (!cuda::available())
    cases.push_back({"--model " + good + " --arch squeezenet --device cuda" + in, "no CUDA device"});
  for (const Case& c : cases) {
    test::ToolRun r = run_infer(c.args, dir);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.err;
    EXPECT_EQ(test::count_lines(r.err), 1) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << "expected '" << c.needle << "' in: " << r.err;
    EXPECT_EQ(r.err.find("internal error"), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace ttq
