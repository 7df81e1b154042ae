// The files ttq_eval --json, ttq_pack --out and ttq_infer --logits-out write:
// an output that names an input (the same path spelled otherwise, or a
// symbolic link to it) is refused with the input left as it was, and a full
// disk (RLIMIT_FSIZE in the tool's process) is exit code 2 with one line and
// the previous output intact, never a truncated file with exit code 0.
// Set TTQ_TOOLS_DIR to run these against another build's tools.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/test_util.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class ToolOutputs : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    s_dir = fs::temp_directory_path() / ("ttq_tool_outputs_" + std::to_string(getpid()));
    fs::remove_all(s_dir);
    fs::create_directories(s_dir);
    test::make_tiny_idx((s_dir / "data").string(), 48, 24);
    train::TrainOptions o;
    o.data = "mnist:" + (s_dir / "data").string();
    o.out = (s_dir / "run").string();
    o.device = "cpu";
    o.epochs = 1;
    o.batch = 16;
    o.progress = false;
    std::ostringstream log;
    train::run_training(o, log);
    for (const char* f :
         {"small_densenet_ttq.safetensors", "small_densenet_fp.safetensors", "reference_io.safetensors"})
      fs::copy_file(fs::path(test::seed_dir()) / f, s_dir / f);
  }
  static void TearDownTestSuite() { fs::remove_all(s_dir); }

  static void expect_one_line(const test::ToolRun& r, const std::string& tool, const std::string& says) {
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
    EXPECT_EQ(r.err.rfind(tool + ": ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(says), std::string::npos) << r.err;
  }

  static fs::path s_dir;
};
fs::path ToolOutputs::s_dir;

TEST_F(ToolOutputs, PackRefusesToReplaceItsInput) {
  const fs::path in = s_dir / "small_densenet_ttq.safetensors";
  const std::string before = slurp(in);
  fs::create_symlink(in, s_dir / "pack_link.safetensors");
  for (const std::string& out : {in.string(), (s_dir / "." / "small_densenet_ttq.safetensors").string(),
                                 (s_dir / "data" / ".." / "small_densenet_ttq.safetensors").string(),
                                 (s_dir / "pack_link.safetensors").string()}) {
    const test::ToolRun r = test::run_argv({test::tool_path("ttq_pack"), "--in", in.string(), "--out", out});
    expect_one_line(r, "ttq_pack", "--out " + out + " is the --in file");
    EXPECT_EQ(slurp(in), before) << out;
  }
  fs::remove(s_dir / "pack_link.safetensors");
}

TEST_F(ToolOutputs, InferRefusesToReplaceItsInputs) {
  const std::string model = (s_dir / "small_densenet_fp.safetensors").string();
  const std::string input = (s_dir / "reference_io.safetensors").string();
  const std::string model_before = slurp(model), input_before = slurp(input);
  auto run = [&](const std::string& out) {
    return test::run_argv({test::tool_path("ttq_infer"), "--model", model, "--device", "cpu",
                           "--input-tensors", input, "--input-name", "input", "--logits-out", out});
  };
  expect_one_line(run(model), "ttq_infer", "is the --model file");
  expect_one_line(run((s_dir / "." / "small_densenet_fp.safetensors").string()), "ttq_infer",
                  "is the --model file");
  expect_one_line(run(input), "ttq_infer", "is the --input-tensors file");
  EXPECT_EQ(slurp(model), model_before);
  EXPECT_EQ(slurp(input), input_before);
  // Packed models too.
  const std::string packed = (s_dir / "packed.safetensors").string();
  ASSERT_EQ(test::run_argv({test::tool_path("ttq_pack"), "--in",
                            (s_dir / "small_densenet_ttq.safetensors").string(), "--out", packed})
                .code,
            0);
  const std::string packed_before = slurp(packed);
  const test::ToolRun r =
      test::run_argv({test::tool_path("ttq_infer"), "--model", packed, "--device", "cpu", "--input-tensors",
                      input, "--input-name", "input", "--logits-out", packed});
  expect_one_line(r, "ttq_infer", "is the --model file");
  EXPECT_EQ(slurp(packed), packed_before);
}

TEST_F(ToolOutputs, EvalRefusesToReplaceTheWeights) {
  const std::string weights = (s_dir / "run" / "last.safetensors").string();
  const std::string before = slurp(weights);
  const test::ToolRun r = test::run_argv({test::tool_path("ttq_eval"), "--weights", weights, "--data",
                                          "mnist:" + (s_dir / "data").string(), "--device", "cpu", "--json",
                                          (s_dir / "run" / "." / "last.safetensors").string()});
  expect_one_line(r, "ttq_eval", "is the --weights file");
  EXPECT_EQ(slurp(weights), before);
}

TEST_F(ToolOutputs, EvalJsonUnderAFullDisk) {
  const std::string json = (s_dir / "eval.json").string();
  const std::vector<std::string> args = {test::tool_path("ttq_eval"),
                                         "--weights",
                                         (s_dir / "run" / "last.safetensors").string(),
                                         "--data",
                                         "mnist:" + (s_dir / "data").string(),
                                         "--device",
                                         "cpu",
                                         "--json",
                                         json};
  test::ToolRun ok = test::run_argv(args);
  ASSERT_EQ(ok.code, 0) << ok.err;
  const std::string before = slurp(json);
  EXPECT_TRUE(nlohmann::json::parse(before).contains("top1"));
  test::RunLimits full;
  full.file_size_limit = 50;
  const test::ToolRun r = test::run_argv(args, full);
  expect_one_line(r, "ttq_eval", json + ": write failed: File too large");
  EXPECT_EQ(slurp(json), before);
}

TEST_F(ToolOutputs, PackAndInferUnderAFullDisk) {
  const std::string packed = (s_dir / "full_packed.safetensors").string();
  const std::vector<std::string> pack = {test::tool_path("ttq_pack"), "--in",
                                         (s_dir / "small_densenet_ttq.safetensors").string(), "--out",
                                         packed};
  ASSERT_EQ(test::run_argv(pack).code, 0);
  const std::string packed_before = slurp(packed);
  test::RunLimits full;
  full.file_size_limit = 4096;
  expect_one_line(test::run_argv(pack, full), "ttq_pack", packed + ": write failed: File too large");
  EXPECT_EQ(slurp(packed), packed_before);

  const std::string logits = (s_dir / "logits.safetensors").string();
  const std::vector<std::string> infer = {test::tool_path("ttq_infer"),
                                          "--model",
                                          (s_dir / "small_densenet_fp.safetensors").string(),
                                          "--device",
                                          "cpu",
                                          "--input-tensors",
                                          (s_dir / "reference_io.safetensors").string(),
                                          "--input-name",
                                          "input",
                                          "--logits-out",
                                          logits};
  ASSERT_EQ(test::run_argv(infer).code, 0);
  const std::string logits_before = slurp(logits);
  full.file_size_limit = 1024;
  expect_one_line(test::run_argv(infer, full), "ttq_infer", logits + ": write failed: File too large");
  EXPECT_EQ(slurp(logits), logits_before);
  for (const auto& e : fs::directory_iterator(s_dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

}  // namespace
}  // namespace ttq
