// ttq_train's run folder on the real tool (and the library where a testing aid
// is needed): a folder holding a run is refused without --resume / --overwrite,
// nothing changes before the inputs are validated (a failed --init leaves no
// folder), --init cannot be a file the run writes, --resume refuses options
// that shape the data order or the model and takes unset ones from the run,
// two trainers on one folder, SIGTERM in the validation, and a full disk
// (RLIMIT_FSIZE) in the middle of a run. Set TTQ_TOOLS_DIR to run these
// against another build's tools. Code: train/run_folder.cpp, train/trainer.cpp.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "engine/io/safetensors.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
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

// Every file of a folder: its size and a hash of its bytes (short to print).
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const std::string bytes = slurp(e.path());
    m[e.path().filename().string()] =
        std::to_string(bytes.size()) + " bytes, hash " + std::to_string(std::hash<std::string>{}(bytes));
  }
  return m;
}

// metrics.jsonl without the timings, each line parsed (so a half line fails).
std::vector<nlohmann::json> metrics(const fs::path& run) {
  std::vector<nlohmann::json> out;
  std::ifstream f(run / "metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    j.erase("seconds");
    j.erase("images_per_second");
    out.push_back(j);
  }
  return out;
}

// The tensors of two safetensors files, bit for bit.
void expect_same_tensors(const std::string& a, const std::string& b) {
  io::SafeTensors ta = io::read_safetensors(a), tb = io::read_safetensors(b);
  ASSERT_EQ(ta.tensors().size(), tb.tensors().size());
  for (size_t i = 0; i < ta.tensors().size(); ++i) {
    const auto& [na, xa] = ta.tensors()[i];
    const auto& [nb, xb] = tb.tensors()[i];
    ASSERT_EQ(na, nb);
    ASSERT_EQ(xa.nbytes(), xb.nbytes()) << na;
    EXPECT_EQ(0, std::memcmp(xa.raw_data(), xb.raw_data(), xa.nbytes())) << na << " differs";
  }
}

class RunFolder : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    s_root = fs::temp_directory_path() / ("ttq_run_folder_" + std::to_string(getpid()));
    fs::remove_all(s_root);
    test::make_tiny_idx((s_root / "data").string(), 96, 48);
  }
  static void TearDownTestSuite() { fs::remove_all(s_root); }
  static std::string data() { return "mnist:" + (s_root / "data").string(); }
  static std::string dir(const std::string& name) {
    fs::remove_all(s_root / name);
    return (s_root / name).string();
  }
  // ttq_train on the tiny data: 6 batches of 16 per epoch.
  static std::vector<std::string> train_args(const std::string& out, int epochs) {
    return {test::tool_path("ttq_train"), "--data",  data(), "--out", out,    "--device", "cpu", "--epochs",
            std::to_string(epochs),       "--batch", "16",   "--lr",  "0.05", "--seed",   "7",   "--quiet"};
  }
  // `args` with `more` (flags with a value replace the same flag's value in args).
  static test::ToolRun train(std::vector<std::string> args, const std::vector<std::string>& more = {},
                             test::RunLimits limits = {}) {
    for (size_t i = 0; i < more.size(); ++i) {
      const bool has_value = i + 1 < more.size() && more[i + 1].rfind("--", 0) != 0;
      auto it = std::find(args.begin(), args.end(), more[i]);
      if (has_value && it != args.end()) {
        *(it + 1) = more[++i];
      } else {
        args.push_back(more[i]);
        if (has_value) args.push_back(more[++i]);
      }
    }
    limits.timeout_s = std::min(limits.timeout_s, 90.0);
    return test::run_argv(args, limits);
  }
  static void expect_one_line(const test::ToolRun& r, const std::string& starts) {
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
    EXPECT_EQ(r.err.rfind("ttq_train: " + starts, 0), 0u) << r.err;
  }
  static fs::path s_root;
};
fs::path RunFolder::s_root;

TEST_F(RunFolder, ANewRunRefusesAFolderThatHoldsARun) {
  const std::string out = dir("held");
  ASSERT_EQ(train(train_args(out, 1)).code, 0);
  const auto before = snapshot(out);
  ASSERT_TRUE(before.count("config.json") && before.count("metrics.jsonl") &&
              before.count("last.safetensors"));
  expect_one_line(train(train_args(out, 1)), "--out " + out + " already holds a run");
  expect_one_line(train(train_args(out, 1), {"--lr", "0.01"}), "--out " + out + " already holds a run");
  EXPECT_EQ(snapshot(out), before);
  // --overwrite starts afresh: one metrics line, new checkpoints.
  const test::ToolRun r = train(train_args(out, 1), {"--lr", "0.01", "--overwrite"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(metrics(out).size(), 2u);  // epoch 1 and the final test line
  EXPECT_EQ(nlohmann::json::parse(slurp(fs::path(out) / "config.json"))["lr"], 0.01);
  EXPECT_NE(snapshot(out).at("last.safetensors"), before.at("last.safetensors"));
  // --resume and --overwrite together make no sense.
  expect_one_line(train(train_args(out, 2), {"--resume", "--overwrite"}), "--resume and --overwrite");
}

TEST_F(RunFolder, NothingIsCreatedOrReplacedBeforeTheInputsAreValid) {
  // A failed --init leaves no folder behind.
  const std::string fresh = dir("fresh") + "/sub";
  expect_one_line(train(train_args(fresh, 1), {"--init", (s_root / "missing.safetensors").string()}),
                  (s_root / "missing.safetensors").string());
  EXPECT_FALSE(fs::exists(fresh));
  EXPECT_FALSE(fs::exists(fs::path(fresh).parent_path()));
  // Without --device too: no "running on the CPU" line before the error.
  std::vector<std::string> no_device = train_args(fresh, 1);
  no_device.erase(no_device.begin() + 5, no_device.begin() + 7);
  ASSERT_EQ(no_device[5], "--epochs");
  expect_one_line(train(no_device, {"--init", (s_root / "missing.safetensors").string()}),
                  (s_root / "missing.safetensors").string());
  expect_one_line(train(train_args(fresh, 1), {"--init", test::seed_dir() + "/squeezenet_fp.safetensors"}),
                  test::seed_dir() + "/squeezenet_fp.safetensors");
  EXPECT_FALSE(fs::exists(fs::path(fresh).parent_path()));
  // Bad data likewise.
  std::vector<std::string> args = train_args(fresh, 1);
  args[2] = "mnist:" + (s_root / "no_data").string();
  EXPECT_EQ(train(args).code, 2);
  EXPECT_FALSE(fs::exists(fs::path(fresh).parent_path()));
  // --overwrite of a run with a bad --init leaves the run as it was.
  const std::string held = dir("held_overwrite");
  ASSERT_EQ(train(train_args(held, 1)).code, 0);
  const auto before = snapshot(held);
  expect_one_line(
      train(train_args(held, 1), {"--overwrite", "--init", (s_root / "missing.safetensors").string()}),
      (s_root / "missing.safetensors").string());
  EXPECT_EQ(snapshot(held), before);
}

TEST_F(RunFolder, InitCannotBeAFileTheRunWrites) {
  const std::string fp = dir("fp_for_init");
  ASSERT_EQ(train(train_args(fp, 1)).code, 0);
  const auto before = snapshot(fp);
  for (const std::string& init :
       {fp + "/last.safetensors", fp + "/./best.safetensors", fp + "/../fp_for_init/last.safetensors"}) {
    for (bool overwrite : {false, true}) {
      std::vector<std::string> more = {"--phase", "ttq", "--init", init};
      if (overwrite) more.push_back("--overwrite");
      expect_one_line(train(train_args(fp, 1), more), "--init " + init + " is ");
      EXPECT_EQ(snapshot(fp), before) << init;
    }
  }
  // Through a symbolic link too.
  fs::create_symlink(fs::path(fp) / "last.safetensors", s_root / "init_link.safetensors");
  expect_one_line(train(train_args(fp, 1), {"--phase", "ttq", "--overwrite", "--init",
                                            (s_root / "init_link.safetensors").string()}),
                  "--init ");
  EXPECT_EQ(snapshot(fp), before);
  fs::remove(s_root / "init_link.safetensors");
}

TEST_F(RunFolder, ResumeRefusesOptionsThatShapeTheDataOrTheModel) {
  const std::string out = dir("resume_refuse");
  ASSERT_EQ(train(train_args(out, 1), {"--limit-train", "64", "--schedule", "plateau"}).code, 0);
  const auto before = snapshot(out);
  const std::string other = (s_root / "other_data").string();
  test::make_tiny_idx(other, 96, 48, 99);  // same sizes, other images
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--batch", "8"}, "--batch 8: the run being resumed has --batch 16"},
      {{"--limit-train", "32"}, "--limit-train 32: the run being resumed has --limit-train 64"},
      {{"--limit-val", "16"}, "--limit-val 16: the run being resumed has --limit-val unset (all images)"},
      {{"--seed", "8"}, "--seed 8: the run being resumed has --seed 7"},
      {{"--lr", "0.01"}, "--lr 0.01: the run being resumed has --lr 0.05"},
      {{"--dropout", "0.1"}, "--dropout 0.1: the run being resumed has --dropout"},
      {{"--momentum", "0.9"}, "--momentum 0.9: the run being resumed has --momentum 0.95"},
      {{"--weight-decay", "0.001"}, "--weight-decay 0.001: the run being resumed has --weight-decay 0.0001"},
      {{"--schedule", "cosine"}, "--schedule cosine: the run being resumed has --schedule plateau"},
      {{"--model", "squeezenet"}, "--model squeezenet: the run being resumed has --model small_densenet"},
      {{"--data", "mnist:" + other}, "--data mnist:" + other + ": the run being resumed has --data"},
  };
  for (const auto& [more, says] : cases) {
    std::vector<std::string> m = more;
    m.push_back("--resume");
    expect_one_line(train(train_args(out, 2), m), says);
    EXPECT_EQ(snapshot(out), before) << more[0];
  }
}

TEST_F(RunFolder, ResumeTakesUnsetOptionsFromTheRun) {
  // Straight: 2 epochs with non-default options.
  const std::vector<std::string> shaping = {"--limit-train",  "64",   "--limit-val", "32",
                                            "--dropout",      "0.1",  "--momentum",  "0.9",
                                            "--weight-decay", "0.001"};
  const std::string a = dir("adopt_straight");
  ASSERT_EQ(train(train_args(a, 2), shaping).code, 0);
  // Split: 1 epoch, then --resume naming only the folder, the data, the seed and the epochs.
  const std::string b = dir("adopt_split");
  ASSERT_EQ(train(train_args(b, 1), shaping).code, 0);
  const test::ToolRun r = train({test::tool_path("ttq_train"), "--data", data(), "--out", b, "--device",
                                 "cpu", "--seed", "7", "--epochs", "2", "--resume", "--quiet"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(metrics(a), metrics(b));
  expect_same_tensors(a + "/last.safetensors", b + "/last.safetensors");
  const auto cfg = nlohmann::json::parse(slurp(fs::path(b) / "config.json"));
  EXPECT_EQ(cfg["batch"], 16);
  EXPECT_EQ(cfg["limit_train"], 64);
  EXPECT_EQ(cfg["epochs"], 2);
  // A finished run: fewer epochs than it has done are refused; as many (the
  // run's, when --epochs is left out) only redo the final test line.
  const std::vector<std::string> again = {test::tool_path("ttq_train"),
                                          "--data",
                                          data(),
                                          "--out",
                                          b,
                                          "--device",
                                          "cpu",
                                          "--seed",
                                          "7",
                                          "--resume",
                                          "--quiet"};
  const auto before = snapshot(b);
  expect_one_line(train(again, {"--epochs", "1"}), "--epochs 1: the run in " + b + " has completed 2 epochs");
  EXPECT_EQ(snapshot(b), before);
  ASSERT_EQ(train(again).code, 0);
  EXPECT_EQ(metrics(b), metrics(a));
}

// The evaluation at the end of an epoch can take long: SIGINT / SIGTERM stop it
// at the next batch, and --resume redoes it (library, with the testing aid that
// stops after the epoch's last optimiser step).
TEST_F(RunFolder, StopInTheValidationResumesExactly) {
  std::ostringstream log;
  auto options = [&](const std::string& out) {
    train::TrainOptions o;
    o.data = data();
    o.out = out;
    o.device = "cpu";
    o.epochs = 2;
    o.batch = 16;
    o.lr = 0.05;
    o.seed = 7;
    o.progress = false;
    return o;
  };
  const std::string a = dir("val_stop_straight");
  ASSERT_EQ(train::run_training(options(a), log).exit_code, 0);
  const std::string b = dir("val_stop_split");
  auto o = options(b);
  o.stop_after_steps = 6;  // the last step of epoch 1: the stop comes in its validation
  train::RunResult r1 = train::run_training(o, log);
  train::clear_stop_request();
  ASSERT_EQ(r1.exit_code, 130);
  train::CheckpointContent c = train::read_checkpoint(b + "/last.safetensors");
  EXPECT_EQ(c.state.epoch, 0);
  EXPECT_EQ(c.state.batch, 6);
  EXPECT_EQ(c.state.global_step, 6);
  EXPECT_TRUE(metrics(b).empty());
  EXPECT_FALSE(fs::exists(b + "/best.safetensors"));
  o.stop_after_steps = 0;
  o.resume = true;
  ASSERT_EQ(train::run_training(o, log).exit_code, 0);
  EXPECT_EQ(metrics(a), metrics(b));
  expect_same_tensors(a + "/last.safetensors", b + "/last.safetensors");
  expect_same_tensors(a + "/best.safetensors", b + "/best.safetensors");
}

// A started tool, its stderr in a file.
pid_t spawn(const std::vector<std::string>& args, const std::string& err_file) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<std::string> copy = args;
    std::vector<char*> argv;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (!freopen("/dev/null", "w", stdout) || !freopen(err_file.c_str(), "w", stderr)) _exit(126);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

bool wait_for(const std::function<bool()>& ok, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!ok()) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

TEST_F(RunFolder, SigtermInTheValidationStopsWithinASecond) {
  // 16 training images (one step), 4000 validation images (held out of the
  // training images) one at a time: seconds of work.
  const std::string slow = (s_root / "slow_val").string();
  test::make_tiny_idx(slow, 4016, 8, 5);
  const std::string out = dir("sigterm_val");
  const std::string err = (s_root / "sigterm_val.err").string();
  const pid_t pid = spawn({test::tool_path("ttq_train"), "--data", "mnist:" + slow, "--out", out, "--device",
                           "cpu", "--epochs", "3", "--batch", "16", "--val-size", "4000", "--limit-train",
                           "16", "--eval-batch", "1", "--workers", "1"},
                          err);
  // The progress line of the epoch's only batch comes just before the validation.
  ASSERT_TRUE(wait_for([&] { return slurp(err).find("[1/1]") != std::string::npos; }, 60)) << slurp(err);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto t0 = std::chrono::steady_clock::now();
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(WIFEXITED(status)) << slurp(err);
  EXPECT_EQ(WEXITSTATUS(status), 143) << slurp(err);
  EXPECT_LT(seconds, 1.5) << slurp(err);
  train::CheckpointContent c = train::read_checkpoint(out + "/last.safetensors");
  EXPECT_EQ(c.state.epoch, 0);
  EXPECT_EQ(c.state.batch, 1);
  EXPECT_TRUE(metrics(out).empty());
  EXPECT_NE(slurp(err).find("in the validation"), std::string::npos) << slurp(err);
}

TEST_F(RunFolder, SigtermInTheFinalTestStopsWithinASecond) {
  // One training step, 8 validation images, then 5000 test images one at a time:
  // seconds of work.
  const std::string slow = (s_root / "slow_test").string();
  test::make_tiny_idx(slow, 32, 5000, 6);
  const std::string out = dir("sigterm_test");
  const std::string err = (s_root / "sigterm_test.err").string();
  const std::vector<std::string> args = {test::tool_path("ttq_train"),
                                         "--data",
                                         "mnist:" + slow,
                                         "--out",
                                         out,
                                         "--device",
                                         "cpu",
                                         "--epochs",
                                         "1",
                                         "--batch",
                                         "16",
                                         "--val-size",
                                         "8",
                                         "--limit-train",
                                         "16",
                                         "--eval-batch",
                                         "1",
                                         "--workers",
                                         "1"};
  const pid_t pid = spawn(args, err);
  ASSERT_TRUE(wait_for([&] { return slurp(err).find("on 5000 test images") != std::string::npos; }, 60))
      << slurp(err);
  const auto t0 = std::chrono::steady_clock::now();
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(WIFEXITED(status)) << slurp(err);
  EXPECT_EQ(WEXITSTATUS(status), 143) << slurp(err);
  EXPECT_LT(seconds, 1.5) << slurp(err);
  EXPECT_NE(slurp(err).find("in the final test"), std::string::npos) << slurp(err);
  EXPECT_EQ(metrics(out).size(), 1u);  // no final line
  // --resume redoes only the test (here on fewer images: --limit-test may change).
  std::vector<std::string> resume = args;
  resume.insert(resume.end(), {"--resume", "--limit-test", "8"});
  const test::ToolRun r = test::run_argv(resume);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto m = metrics(out);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1]["test_images"], 8);
}

TEST_F(RunFolder, TwoTrainersOnOneFolder) {
  const std::string out = dir("two");
  const std::string err = (s_root / "two.err").string();
  const pid_t first = spawn(train_args(out, 200), err);
  ASSERT_TRUE(wait_for([&] { return fs::exists(out + "/config.json"); }, 60)) << slurp(err);
  expect_one_line(train(train_args(out, 200), {"--resume"}),
                  "--out " + out + ": in use by another ttq_train");
  expect_one_line(train(train_args(out, 200), {"--overwrite"}),
                  "--out " + out + ": in use by another ttq_train");
  expect_one_line(train(train_args(out, 200)), "--out " + out + " already holds a run");
  kill(first, SIGINT);
  int status = 0;
  waitpid(first, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130) << slurp(err);
  train::read_checkpoint(out + "/last.safetensors");  // whole
  EXPECT_EQ(nlohmann::json::parse(slurp(fs::path(out) / "config.json"))["epochs"], 200);
  // Free again once the first has gone.
  EXPECT_EQ(train(train_args(out, 1), {"--overwrite"}).code, 0);
}

TEST_F(RunFolder, AFullDiskNeverLeavesAHalfWrittenRun) {
  const std::string straight = dir("disk_straight");
  ASSERT_EQ(train(train_args(straight, 2)).code, 0);
  const std::string out = dir("disk");
  ASSERT_EQ(train(train_args(out, 1)).code, 0);
  const auto before = snapshot(out);
  test::RunLimits tiny;
  tiny.file_size_limit = 300;  // config.json does not fit
  test::ToolRun r = train(train_args(out, 2), {"--resume"}, tiny);
  expect_one_line(r, out + "/config.json: write failed: File too large");
  EXPECT_EQ(snapshot(out), before);
  // Room for config.json and a metrics line, not for a checkpoint.
  test::RunLimits small;
  small.file_size_limit = 64 * 1024;
  r = train(train_args(out, 2), {"--resume"}, small);
  EXPECT_EQ(r.code, 2) << r.err;  // after the progress lines, the error on the last line
  EXPECT_NE(r.err.find(".safetensors: write failed: File too large\n"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("internal error"), std::string::npos) << r.err;
  EXPECT_EQ(snapshot(out).at("last.safetensors"), before.at("last.safetensors"));
  EXPECT_LE(metrics(out).size(), 2u);  // every line whole
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  // With room again the run goes on as if nothing had happened.
  r = train(train_args(out, 2), {"--resume"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(metrics(out), metrics(straight));
  expect_same_tensors(out + "/last.safetensors", straight + "/last.safetensors");
}

}  // namespace
}  // namespace ttq
