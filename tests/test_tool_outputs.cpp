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

#include "data/dataset.h"
#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "models/model.h"
#include "models/model_file.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
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

// ttq_pack's size line: the network's float weights (every model tensor as F32,
// recomputed here from the model the input holds) against the packed file, and
// the input file's size stated beside it.
TEST_F(ToolOutputs, PackComparesAgainstTheFloatNetwork) {
  const std::string in = (s_dir / "small_densenet_ttq.safetensors").string();
  const std::string out = (s_dir / "sized.safetensors").string();
  const test::ToolRun r = test::run_argv({test::tool_path("ttq_pack"), "--in", in, "--out", out});
  ASSERT_EQ(r.code, 0) << r.err;
  int64_t floats = 0;
  for (const auto& [name, t] : models::load_model_file(in, "small_densenet", Device::cpu())->state_dict())
    floats += t.numel();
  const std::string want = "network: " + std::to_string(floats * 4) + " bytes as F32 -> packed file " +
                           std::to_string(fs::file_size(out)) + " bytes (";
  EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  EXPECT_NE(r.out.find("input file " + std::to_string(fs::file_size(in)) + " bytes"), std::string::npos)
      << r.out;
}

// ttq_pack --weights-only: the model's tensors only, F32, under the names the
// model loads, values unchanged; ttq_eval and ttq_infer give the same numbers
// as with the original file.
TEST_F(ToolOutputs, PackWeightsOnly) {
  const std::string data = "mnist:" + (s_dir / "data").string();
  for (const std::string& in :
       {(s_dir / "run" / "last.safetensors").string(), (s_dir / "small_densenet_ttq.safetensors").string()}) {
    const std::string out = (s_dir / "plain.safetensors").string();
    const test::ToolRun r =
        test::run_argv({test::tool_path("ttq_pack"), "--weights-only", "--in", in, "--out", out});
    ASSERT_EQ(r.code, 0) << r.err;
    const io::SafeTensors plain = io::read_safetensors(out);
    const auto want = models::load_model_file(in, "small_densenet", Device::cpu())->state_dict();
    ASSERT_EQ(plain.tensors().size(), want.size()) << in;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(plain.tensors()[i].first, want[i].first);
      EXPECT_EQ(plain.tensors()[i].second.dtype(), DType::F32) << want[i].first;
      EXPECT_EQ(test::max_abs_diff(plain.tensors()[i].second, want[i].second.to(DType::F32)), 0.0)
          << want[i].first;
    }
    EXPECT_EQ(plain.meta("model"), "small_densenet");
    EXPECT_FALSE(plain.meta("model_config").empty());
    const io::SafeTensors source = io::read_safetensors(in);
    EXPECT_EQ(plain.meta("classes"), source.meta("classes"));
    EXPECT_EQ(plain.meta("preprocess"), source.meta("preprocess"));
    if (in.find("last") != std::string::npos) {
      EXPECT_FALSE(plain.meta("classes").empty());
      // ttq_eval: the same numbers as on the checkpoint.
      auto eval = [&](const std::string& weights) {
        const std::string json = (s_dir / "plain_eval.json").string();
        const test::ToolRun e = test::run_argv({test::tool_path("ttq_eval"), "--weights", weights, "--data",
                                                data, "--device", "cpu", "--split", "test", "--json", json});
        EXPECT_EQ(e.code, 0) << e.err;
        const auto j = nlohmann::json::parse(slurp(json));
        return std::make_pair(j.at("top1").get<double>(), j.at("loss").get<double>());
      };
      const auto a = eval(in), b = eval(out);
      EXPECT_EQ(a.first, b.first);
      EXPECT_NEAR(a.second, b.second, 1e-9);
    } else {
      // A TTQ checkpoint: its quantized layers are ternary in the output, and no latent weights.
      for (const auto& [name, t] : plain.tensors()) EXPECT_EQ(name.find("latent"), std::string::npos) << name;
      auto infer = [&](const std::string& model, const std::string& logits) {
        const test::ToolRun e = test::run_argv(
            {test::tool_path("ttq_infer"), "--model", model, "--device", "cpu", "--input-tensors",
             (s_dir / "reference_io.safetensors").string(), "--input-name", "input", "--logits-out", logits});
        EXPECT_EQ(e.code, 0) << e.err;
        return io::read_safetensors(logits).tensors().at(0).second;
      };
      const Tensor a = infer(in, (s_dir / "logits_a.safetensors").string());
      const Tensor b = infer(out, (s_dir / "logits_b.safetensors").string());
      EXPECT_EQ(test::max_abs_diff(a, b), 0.0);
    }
    for (const auto& [name, t] : plain.tensors()) {
      EXPECT_EQ(name.rfind("optimizer", 0), std::string::npos) << name;
      EXPECT_EQ(name.rfind("scheduler", 0), std::string::npos) << name;
    }
  }
}

// ttq_train --config: a run started from another run's config.json records the
// same options; flags given on the command line override the file's.
TEST_F(ToolOutputs, TrainFromAnotherRunsConfig) {
  const std::string data = "mnist:" + (s_dir / "data").string();
  const fs::path a = s_dir / "config_a", b = s_dir / "config_b", c = s_dir / "config_c";
  const test::ToolRun first = test::run_argv({test::tool_path("ttq_train"),
                                              "--data",
                                              data,
                                              "--out",
                                              a.string(),
                                              "--device",
                                              "cpu",
                                              "--epochs",
                                              "1",
                                              "--batch",
                                              "12",
                                              "--lr",
                                              "0.03",
                                              "--seed",
                                              "5",
                                              "--limit-train",
                                              "30",
                                              "--dropout",
                                              "0.1",
                                              "--plateau-patience",
                                              "3",
                                              "--early-stop-patience",
                                              "7",
                                              "--val-size",
                                              "9",
                                              "--weight-decay",
                                              "0.0002",
                                              "--momentum",
                                              "0.5",
                                              "--schedule",
                                              "cosine",
                                              "--workers",
                                              "1",
                                              "--quiet"});
  ASSERT_EQ(first.code, 0) << first.err;
  const test::ToolRun second =
      test::run_argv({test::tool_path("ttq_train"), "--config", (a / "config.json").string(), "--out",
                      b.string(), "--device", "cpu", "--quiet"});
  ASSERT_EQ(second.code, 0) << second.err;
  nlohmann::json ja = nlohmann::json::parse(slurp(a / "config.json"));
  nlohmann::json jb = nlohmann::json::parse(slurp(b / "config.json"));
  // The pipeline's values come from the file, so their provenance says so: the
  // first run detected them, the second was given them.
  EXPECT_EQ(ja.at("mean_std_from"), "Fashion-MNIST's");
  EXPECT_EQ(jb.at("mean_std_from"), "given");
  EXPECT_EQ(jb.at("input_detected"), "");
  for (const char* k : {"mean_std_from", "input_detected"}) {
    ja.erase(k);
    jb.erase(k);
  }
  EXPECT_EQ(ja, jb);
  EXPECT_EQ(ja.at("lr"), 0.03);
  EXPECT_EQ(ja.at("batch"), 12);
  EXPECT_EQ(ja.at("schedule"), "cosine");
  // The same data order and model: the same first epoch.
  EXPECT_EQ(nlohmann::json::parse(slurp(a / "metrics.jsonl").substr(0, slurp(a / "metrics.jsonl").find('\n')))
                .at("train_loss"),
            nlohmann::json::parse(slurp(b / "metrics.jsonl").substr(0, slurp(b / "metrics.jsonl").find('\n')))
                .at("train_loss"));
  // Given flags win.
  const test::ToolRun third =
      test::run_argv({test::tool_path("ttq_train"), "--config", (a / "config.json").string(), "--out",
                      c.string(), "--device", "cpu", "--lr", "0.02", "--seed", "0", "--quiet"});
  ASSERT_EQ(third.code, 0) << third.err;
  nlohmann::json jc = nlohmann::json::parse(slurp(c / "config.json"));
  EXPECT_EQ(jc.at("lr"), 0.02);
  EXPECT_EQ(jc.at("seed"), 0);
  jc["lr"] = ja.at("lr");
  jc["seed"] = ja.at("seed");
  jc.erase("train_images");
  jc.erase("val_images");
  jc.erase("mean_std_from");
  jc.erase("input_detected");
  nlohmann::json ja_rest = ja;
  ja_rest.erase("train_images");
  ja_rest.erase("val_images");
  EXPECT_EQ(jc, ja_rest);
  // A file that is not a run's config: one line naming the flag and the file.
  const std::string bad = (s_dir / "not_config.json").string();
  std::ofstream(bad) << "[1, 2]";
  expect_one_line(test::run_argv({test::tool_path("ttq_train"), "--config", bad, "--out",
                                  (s_dir / "config_d").string(), "--device", "cpu"}),
                  "ttq_train", "--config " + bad + ": not a JSON object");
}

// --json's per_class and confusion against a direct recomputation: the
// checkpoint's logits on every test image, with the strict argmax taken here.
TEST_F(ToolOutputs, EvalPerClassAndConfusion) {
  const std::string weights = (s_dir / "run" / "last.safetensors").string();
  const std::string data = "mnist:" + (s_dir / "data").string();
  const std::string json = (s_dir / "per_class.json").string();
  const test::ToolRun run = test::run_argv({test::tool_path("ttq_eval"), "--weights", weights, "--data", data,
                                            "--device", "cpu", "--split", "test", "--json", json});
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_NE(run.out.find("worst classes (top1):"), std::string::npos) << run.out;
  const nlohmann::json j = nlohmann::json::parse(slurp(json));

  // The recomputation.
  const train::CheckpointContent c = train::read_checkpoint(weights);
  models::ModelPtr model = models::create(c.arch, c.config);
  models::LoadOptions lo;
  lo.ignore_ttq_state = true;
  models::load_weights(*model, c.model_tensors, weights, lo);
  model->eval();
  const data::DataSpec spec = data::parse_data_spec(data);
  const data::Preprocess pre = data::preprocess_for(spec);
  const data::Splits splits = data::open_data(spec, pre.image_size);
  const int64_t k = splits.test->num_classes();
  ASSERT_EQ(k, 10);
  std::vector<std::vector<int64_t>> want(static_cast<size_t>(k), std::vector<int64_t>(k + 1, 0));
  int64_t images = 0, correct = 0;
  data::Loader loader(splits.test, pre, train::loader_options(7, 1, 0, false));
  loader.start_epoch(0, 0);
  autograd::NoGradGuard no_grad;
  while (auto b = loader.next()) {
    const Tensor logits = (*model)(b->images);
    const std::vector<float> v = logits.to_vector<float>();
    const std::vector<int64_t> y = b->labels.to_vector<int64_t>();
    for (int64_t i = 0; i < b->size(); ++i) {
      int64_t best = -1;
      for (int64_t p = 0; p < k; ++p) {
        bool beats_all = std::isfinite(v[i * k + p]);
        for (int64_t q = 0; q < k; ++q)
          beats_all = beats_all && std::isfinite(v[i * k + q]) && (q == p || v[i * k + p] > v[i * k + q]);
        if (beats_all) best = p;
      }
      ++want[y[i]][best < 0 ? k : best];
      correct += best == y[i] ? 1 : 0;
      ++images;
    }
  }
  ASSERT_EQ(images, 24);
  EXPECT_EQ(j.at("images").get<int64_t>(), images);
  EXPECT_DOUBLE_EQ(j.at("top1").get<double>(), static_cast<double>(correct) / images);
  const auto& counts = j.at("confusion").at("counts");
  ASSERT_EQ(counts.size(), static_cast<size_t>(k));
  int64_t sum = 0, trace = 0;
  for (int64_t t = 0; t < k; ++t) {
    ASSERT_EQ(counts[t].size(), static_cast<size_t>(k + 1));
    for (int64_t p = 0; p <= k; ++p) {
      EXPECT_EQ(counts[t][p].get<int64_t>(), want[t][p]) << "true " << t << " predicted " << p;
      sum += counts[t][p].get<int64_t>();
    }
    trace += counts[t][t].get<int64_t>();
  }
  EXPECT_EQ(sum, images);
  EXPECT_NEAR(static_cast<double>(trace), j.at("top1").get<double>() * images, 1e-9);
  EXPECT_EQ(j.at("confusion").at("predicted").back(), "none");
  const auto& per_class = j.at("per_class");
  ASSERT_EQ(per_class.size(), static_cast<size_t>(k));
  for (int64_t t = 0; t < k; ++t) {
    int64_t n = 0;
    for (int64_t p = 0; p <= k; ++p) n += want[t][p];
    EXPECT_EQ(per_class[t].at("name"), splits.test->class_names()[t]);
    EXPECT_EQ(j.at("confusion").at("classes")[t], splits.test->class_names()[t]);
    EXPECT_EQ(per_class[t].at("count").get<int64_t>(), n);
    EXPECT_DOUBLE_EQ(per_class[t].at("top1").get<double>(),
                     n > 0 ? static_cast<double>(want[t][t]) / n : 0.0);
  }
}

}  // namespace
}  // namespace ttq
