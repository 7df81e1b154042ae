// The training loop end to end on a tiny generated IDX data set: exact resume
// (straight run == stopped + resumed run: same metrics lines and the same
// weights bit for bit), mid-epoch resume, SIGINT / SIGKILL on the real tool,
// a diverging loss, and checkpoint contents. Tool: tools/ttq_train.cpp;
// loop: train/trainer.cpp.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "app/eval.h"
#include "data/idx.h"
#include "data/image.h"
#include "engine/io/safetensors.h"
#include "engine/ops/ops.h"
#include "models/model.h"
#include "models/packed.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

// 10 classes of 28x28 images: class k is a bright 6x6 square at a class-specific
// place plus noise, so a small net learns it within an epoch or two.
std::string make_idx_data(const std::string& name, int64_t n_train, int64_t n_test) {
  fs::path dir = fs::temp_directory_path() / ("ttq_train_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  Generator g(1234);
  auto make = [&](int64_t n, const std::string& prefix) {
    std::vector<uint8_t> px(static_cast<size_t>(n) * 28 * 28), lab(n);
    for (int64_t i = 0; i < n; ++i) {
      int k = static_cast<int>(g.below(10));
      lab[i] = static_cast<uint8_t>(k);
      int r0 = 2 + (k / 5) * 12, c0 = 2 + (k % 5) * 5;
      for (int r = 0; r < 28; ++r)
        for (int c = 0; c < 28; ++c) {
          int v = static_cast<int>(g.below(60));
          if (r >= r0 && r < r0 + 6 && c >= c0 && c < c0 + 6) v += 180;
          px[(i * 28 + r) * 28 + c] = static_cast<uint8_t>(std::min(v, 255));
        }
    }
    data::write_idx((dir / (prefix + "-images-idx3-ubyte")).string(), {n, 28, 28}, px, false);
    data::write_idx((dir / (prefix + "-labels-idx1-ubyte")).string(), {n}, lab, true);
  };
  make(n_train, "train");
  make(n_test, "t10k");
  return dir.string();
}

train::TrainOptions tiny_options(const std::string& data_dir, const std::string& out) {
  train::TrainOptions o;
  o.model = "small_densenet";
  o.data = "mnist:" + data_dir;
  o.out = out;
  o.device = "cpu";
  o.epochs = 2;
  o.batch = 16;
  o.lr = 0.05;
  o.seed = 7;
  o.workers = 2;
  o.progress = false;
  return o;
}

std::vector<nlohmann::json> metrics_lines(const std::string& run) {
  std::vector<nlohmann::json> out;
  std::ifstream f(fs::path(run) / "metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    j.erase("seconds");  // timings differ between runs
    j.erase("images_per_second");
    out.push_back(j);
  }
  return out;
}

void expect_same_tensors(const std::string& a, const std::string& b) {
  io::SafeTensors ta = io::read_safetensors(a), tb = io::read_safetensors(b);
  ASSERT_EQ(ta.tensors().size(), tb.tensors().size());
  for (size_t i = 0; i < ta.tensors().size(); ++i) {
    const auto& [na, xa] = ta.tensors()[i];
    const auto& [nb, xb] = tb.tensors()[i];
    ASSERT_EQ(na, nb);
    ASSERT_EQ(xa.shape(), xb.shape()) << na;
    ASSERT_EQ(xa.nbytes(), xb.nbytes()) << na;
    EXPECT_EQ(0, std::memcmp(xa.raw_data(), xb.raw_data(), xa.nbytes())) << na << " differs";
  }
}

class TrainLoop : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { s_data = make_idx_data("loop", 96, 48); }
  static void TearDownTestSuite() { fs::remove_all(s_data); }
  std::string run_dir(const std::string& name) {
    fs::path p = fs::temp_directory_path() / ("ttq_run_" + name + "_" + std::to_string(getpid()));
    fs::remove_all(p);
    return p.string();
  }
  static std::string s_data;
};
std::string TrainLoop::s_data;

TEST_F(TrainLoop, ResumeAtEpochBoundaryIsExact) {
  std::ostringstream log;
  auto a = tiny_options(s_data, run_dir("straight"));
  train::RunResult ra = train::run_training(a, log);
  ASSERT_EQ(ra.exit_code, 0);
  ASSERT_EQ(ra.epochs_completed, 2);

  auto b = tiny_options(s_data, run_dir("split"));
  b.epochs = 1;
  ASSERT_EQ(train::run_training(b, log).exit_code, 0);
  b.epochs = 2;
  b.resume = true;
  ASSERT_EQ(train::run_training(b, log).exit_code, 0);

  auto ma = metrics_lines(a.out), mb = metrics_lines(b.out);
  ASSERT_EQ(ma.size(), 3u);  // two epochs and the final test line
  ASSERT_EQ(ma, mb);
  expect_same_tensors(a.out + "/last.safetensors", b.out + "/last.safetensors");
  // config.json and best.safetensors exist; every metrics field is there.
  EXPECT_TRUE(fs::exists(a.out + "/config.json"));
  EXPECT_TRUE(fs::exists(a.out + "/best.safetensors"));
  for (const char* k : {"epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"})
    EXPECT_TRUE(ma[0].contains(k)) << k;
}

TEST_F(TrainLoop, ResumeMidEpochIsExact) {
  std::ostringstream log;
  auto a = tiny_options(s_data, run_dir("straight_mid"));
  ASSERT_EQ(train::run_training(a, log).exit_code, 0);

  auto b = tiny_options(s_data, run_dir("split_mid"));
  b.stop_after_steps = 9;  // 6 batches per epoch: stops in the middle of epoch 2
  train::RunResult r1 = train::run_training(b, log);
  train::clear_stop_request();
  ASSERT_EQ(r1.exit_code, 130);
  train::CheckpointContent c = train::read_checkpoint(b.out + "/last.safetensors");
  EXPECT_EQ(c.state.epoch, 1);
  EXPECT_EQ(c.state.batch, 3);
  EXPECT_EQ(c.state.global_step, 9);
  b.stop_after_steps = 0;
  b.resume = true;
  ASSERT_EQ(train::run_training(b, log).exit_code, 0);
  EXPECT_EQ(metrics_lines(a.out), metrics_lines(b.out));
  expect_same_tensors(a.out + "/last.safetensors", b.out + "/last.safetensors");
}

TEST_F(TrainLoop, TtqPhaseFromFpCheckpoint) {
  std::ostringstream log;
  auto fp = tiny_options(s_data, run_dir("fp_for_ttq"));
  fp.epochs = 1;
  ASSERT_EQ(train::run_training(fp, log).exit_code, 0);
  auto q = tiny_options(s_data, run_dir("ttq"));
  q.phase = "ttq";
  q.init = fp.out + "/last.safetensors";
  q.lr = -1;  // the seed's default for the phase
  q.epochs = 1;
  train::RunResult r = train::run_training(q, log);
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_TRUE(r.last.ttq);
  EXPECT_GT(r.last.zero_fraction, 0.0);
  EXPECT_LT(r.last.zero_fraction, 1.0);
  // The checkpoint's quantized weights hold at most three values {+Wp, 0, -Wn}.
  train::CheckpointContent c = train::read_checkpoint(q.out + "/last.safetensors");
  EXPECT_EQ(c.phase, "ttq");
  int quantized = 0;
  for (const auto& [name, t] : c.model_tensors) {
    if (name.size() < 12 || name.compare(name.size() - 7, 7, ".weight") != 0 || t.dim() != 4) continue;
    const std::string layer = name.substr(0, name.size() - 7);
    bool has_latent = false;
    for (const auto& [n2, t2] : c.model_tensors) has_latent = has_latent || n2 == layer + ".latent_weight";
    if (!has_latent) continue;
    ++quantized;
    std::set<float> values;
    for (float v : t.to_vector<float>()) values.insert(v);
    EXPECT_LE(values.size(), 3u) << name;
  }
  EXPECT_GT(quantized, 10);
  // ttq_eval-style evaluation of the TTQ checkpoint runs.
  app::EvalOptions eo;
  eo.weights = q.out + "/last.safetensors";
  eo.data = "mnist:" + s_data;
  eo.device = "cpu";
  // --split val is the validation split the run used (held out of the training
  // images); --split test is the t10k split the run reported at its end.
  train::EvalResult vv = app::run_eval(eo, log).result;
  EXPECT_EQ(vv.count, 9);  // 10% of 96
  EXPECT_NEAR(vv.top1, r.last.val_top1, 1e-12);
  EXPECT_NEAR(vv.loss, r.last.val_loss, 1e-9);
  eo.split = "test";
  train::EvalResult ev = app::run_eval(eo, log).result;
  EXPECT_EQ(ev.count, 48);
  ASSERT_TRUE(r.test.evaluated);
  EXPECT_EQ(r.test.count, 48);
  EXPECT_NEAR(ev.top1, r.test.top1, 1e-12);  // one epoch: best is last
  EXPECT_NEAR(ev.loss, r.test.loss, 1e-9);
  // The packed file evaluates on the 2-bit kernels to the same numbers (up to
  // summation order), and a mismatched --model is refused.
  const std::string packed = q.out + "/packed.safetensors";
  models::pack_model_file(eo.weights, packed, "");
  app::EvalOptions po = eo;
  po.weights = packed;
  train::EvalResult pv = app::run_eval(po, log).result;
  EXPECT_EQ(pv.count, ev.count);
  EXPECT_NEAR(pv.loss, ev.loss, 1e-4 * std::max(1.0, ev.loss));
  EXPECT_NEAR(pv.top1, ev.top1, 1.0 / 48 + 1e-12);  // a near-tie may flip one image at most
  EXPECT_NEAR(pv.top5, ev.top5, 1.0 / 48 + 1e-12);
  po.model = "squeezenet";
  EXPECT_THROW(app::run_eval(po, log), InputError);
}

// Model selection sees the validation split only; the test split is evaluated
// once, on best.safetensors, and reported as metrics.jsonl's final line.
TEST_F(TrainLoop, TestSplitIsTouchedOnceOnTheBestCheckpoint) {
  std::ostringstream log;
  auto o = tiny_options(s_data, run_dir("test_split"));
  o.epochs = 3;
  o.val_size = 20;
  train::RunResult r = train::run_training(o, log);
  ASSERT_EQ(r.exit_code, 0);
  auto lines = metrics_lines(o.out);
  ASSERT_EQ(lines.size(), 4u);
  for (size_t e = 0; e < 3; ++e) {
    EXPECT_FALSE(lines[e].contains("test_top1")) << "epoch " << e + 1 << " saw the test split";
    EXPECT_EQ(lines[e]["epoch"], static_cast<int>(e) + 1);
  }
  const nlohmann::json& fin = lines[3];
  EXPECT_EQ(fin["final"], true);
  ASSERT_TRUE(fin["test_top1"].is_number()) << fin.dump();
  EXPECT_EQ(fin["test_images"], 48);
  // The best epoch is the first one with the highest val top1.
  int best = 1;
  for (int e = 2; e <= 3; ++e)
    if (lines[e - 1]["val_top1"].get<double>() > lines[best - 1]["val_top1"].get<double>()) best = e;
  EXPECT_EQ(fin["best_epoch"], best);
  EXPECT_EQ(r.test.best_epoch, best);
  // ttq_eval --split test on best.safetensors gives the reported numbers.
  app::EvalOptions eo;
  eo.weights = o.out + "/best.safetensors";
  eo.data = o.data;
  eo.device = "cpu";
  eo.split = "test";
  train::EvalResult ev = app::run_eval(eo, log).result;
  EXPECT_NEAR(ev.top1, fin["test_top1"].get<double>(), 1e-12);
  EXPECT_NEAR(ev.loss, fin["test_loss"].get<double>(), 1e-9);
  // --split val uses the run's --val-size, recorded in the checkpoint.
  eo.split = "val";
  train::EvalResult vv = app::run_eval(eo, log).result;
  EXPECT_EQ(vv.count, 20);
  EXPECT_NEAR(vv.top1, lines[best - 1]["val_top1"].get<double>(), 1e-12);
  // --split all is every image of the data set: 96 + 48.
  eo.split = "all";
  EXPECT_EQ(app::run_eval(eo, log).result.count, 96 + 48);
  eo.split = "train";
  EXPECT_THROW(app::run_eval(eo, log), InputError);
  // config.json says where each split comes from.
  std::ifstream cf(o.out + "/config.json");
  const auto config = nlohmann::json::parse(cf);
  EXPECT_EQ(config["val_size"], 20);
  EXPECT_EQ(config["val_images"], 20);
  EXPECT_EQ(config["train_images"], 76);
  EXPECT_EQ(config["test_images"], 48);
  EXPECT_NE(config["val_from"].get<std::string>().find("held out"), std::string::npos);
}

// --init from a 10-class checkpoint onto a 3-class folder: refused with the
// hint without --reset-classifier; with it, the classifier is fresh (3 rows)
// and everything else comes from the checkpoint (the TTQ phase freezes the
// first conv, so it must still hold the checkpoint's values after training).
TEST_F(TrainLoop, ResetClassifierFineTunesOnAnotherClassCount) {
  const fs::path root = run_dir("reset_data");
  Generator g(99);
  for (const std::string& split : {std::string("train"), std::string("val")})
    for (const char* c : {"a", "b", "c"})
      for (int k = 0; k < (split == "train" ? 4 : 1); ++k) {
        fs::create_directories(root / split / c);
        data::Image img(32, 32, 3);
        for (auto& px : img.pixels) px = static_cast<uint8_t>(g.below(256));
        data::save_image((root / split / c / (std::to_string(k) + ".png")).string(), img);
      }
  const std::string data = "folder:" + root.string();
  const data::Preprocess pre = data::preprocess_for(data::parse_data_spec(data));
  models::ModelConfig mc;
  mc.in_channels = pre.channels;
  mc.input_size = pre.crop;
  mc.num_classes = 10;
  Generator init_gen(5);
  models::ModelPtr ten = models::create("small_densenet", mc, init_gen);
  const std::string init = (root / "ten.safetensors").string();
  io::write_safetensors(init, ten->state_dict(), {{"model", "small_densenet"}});
  const std::string first = ten->first_conv_name() + ".weight", cls = ten->classifier_name() + ".weight";

  train::TrainOptions o = tiny_options(s_data, run_dir("reset_run"));
  o.data = data;
  o.phase = "ttq";
  o.init = init;
  o.epochs = 1;
  o.batch = 4;
  o.lr = train::kUnset;
  std::ostringstream log;
  EXPECT_INPUT_ERROR_MENTIONS(train::run_training(o, log),
                              "(use --reset-classifier to fine-tune on a data set with another class count)");
  EXPECT_INPUT_ERROR_MENTIONS(train::run_training(o, log), init + ": " + cls + " is [10, ");
  EXPECT_FALSE(fs::exists(fs::path(o.out) / "last.safetensors"));

  o.reset_classifier = true;
  const train::RunResult r = train::run_training(o, log);
  ASSERT_EQ(r.exit_code, 0) << log.str();
  const io::SafeTensors last = io::read_safetensors((fs::path(o.out) / "last.safetensors").string());
  const io::SafeTensors given = io::read_safetensors(init);
  auto find = [](const io::SafeTensors& st, const std::string& name) {
    for (const auto& [n, t] : st.tensors())
      if (n == name) return t;
    ADD_FAILURE() << "no " << name;
    return Tensor();
  };
  EXPECT_EQ(find(last, cls).size(0), 3);
  EXPECT_EQ(find(given, cls).size(0), 10);
  EXPECT_EQ(test::max_abs_diff(find(last, first), find(given, first)), 0.0) << first;
  const auto config = nlohmann::json::parse(std::ifstream(fs::path(o.out) / "config.json"));
  EXPECT_EQ(config.at("reset_classifier"), true);
  fs::remove_all(root);
  fs::remove_all(o.out);
}

// The confusion matrix's predictions: the strict argmax, none (-1) for a tied
// maximum or a non-finite row, the rule under which topk_correct counts a miss.
TEST(TrainEvaluate, StrictTop1) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const Tensor logits = Tensor::from_vector<float>({1, 3, 2,      // 1
                                                    5, 5, 0,      // tie: none
                                                    -1, -2, -3,   // 0
                                                    0, nan, 9,    // NaN: none
                                                    0, inf, 1,    // infinity: none
                                                    0, 0, 0.5f},  // 2
                                                   Shape{6, 3});
  EXPECT_EQ(train::strict_top1(logits), (std::vector<int64_t>{1, -1, 0, -1, -1, 2}));
  // Consistent with topk_correct at k = 1 for every label.
  for (int64_t label = 0; label < 3; ++label) {
    const Tensor y = Tensor::from_vector<int64_t>(std::vector<int64_t>(6, label), Shape{6});
    const std::vector<int64_t> p = train::strict_top1(logits);
    EXPECT_EQ(ops::topk_correct(logits, y, 1), std::count(p.begin(), p.end(), label)) << label;
  }
}

// Metrics lines are JSON whatever the numbers: a non-finite value is null.
TEST(TrainMetrics, NonFiniteNumbersAreWrittenAsNull) {
  train::EpochMetrics m;
  m.epoch = 3;
  m.train_loss = std::numeric_limits<double>::quiet_NaN();
  m.val_loss = std::numeric_limits<double>::infinity();
  m.val_top1 = 0.5;
  m.ttq = true;
  m.mean_wp = -std::numeric_limits<double>::infinity();
  const auto j = nlohmann::json::parse(m.json());
  EXPECT_TRUE(j["train_loss"].is_null());
  EXPECT_TRUE(j["val_loss"].is_null());
  EXPECT_TRUE(j["mean_wp"].is_null());
  EXPECT_EQ(j["val_top1"], 0.5);
  EXPECT_EQ(j["epoch"], 3);
  train::TestMetrics t;
  t.evaluated = true;
  t.loss = std::numeric_limits<double>::quiet_NaN();
  const auto k = nlohmann::json::parse(t.json());
  EXPECT_TRUE(k["test_loss"].is_null());
  EXPECT_EQ(k["final"], true);
  train::TestMetrics none;
  EXPECT_TRUE(nlohmann::json::parse(none.json())["test_top1"].is_null());
}

// A validation loss that is not finite is divergence even when the training loss
// is fine: here the last BN's running statistics send eval-mode activations to
// infinity (training mode normalises with batch statistics and never sees them).
TEST_F(TrainLoop, NonFiniteValidationLossIsDivergence) {
  std::ostringstream log;
  auto fp = tiny_options(s_data, run_dir("val_nan_init"));
  fp.epochs = 1;
  ASSERT_EQ(train::run_training(fp, log).exit_code, 0);
  io::SafeTensors st = io::read_safetensors(fp.out + "/best.safetensors");
  io::NamedTensors tensors;
  for (const auto& [name, t] : st.tensors()) {
    if (name.rfind("optimizer", 0) == 0 || name.rfind("scheduler.", 0) == 0) continue;
    Tensor c = t.clone();
    if (name == "features.norm4.running_mean") {
      float* p = c.data<float>();
      for (int64_t i = 0; i < c.numel(); ++i) p[i] = -3e38f;
    }
    if (name == "features.norm4.running_var") {
      float* p = c.data<float>();
      for (int64_t i = 0; i < c.numel(); ++i) p[i] = 1e-30f;
    }
    tensors.emplace_back(name, c);
  }
  const std::string init = run_dir("val_nan_init") + ".safetensors";
  io::Metadata meta;
  meta["model"] = "small_densenet";
  io::write_safetensors(init, tensors, meta);

  auto o = tiny_options(s_data, run_dir("val_nan"));
  o.init = init;
  o.epochs = 2;
  o.limit_train = 16;  // one step: the running statistics stay where the file put them
  try {
    train::run_training(o, log);
    FAIL() << "expected the validation loss to diverge";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("validation loss is"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(o.out + "/best.safetensors"));  // never saved as best
  EXPECT_FALSE(fs::exists(o.out + "/last.safetensors"));  // nothing good to keep yet
  fs::remove(init);
}

TEST_F(TrainLoop, DivergedLossIsAnInputError) {
  std::ostringstream log;
  auto o = tiny_options(s_data, run_dir("nan"));
  o.lr = 1e30;
  o.momentum = 0;
  try {
    train::run_training(o, log);
    FAIL() << "expected the loss to diverge";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("diverged"), std::string::npos) << e.what();
  }
}

TEST_F(TrainLoop, BadFlagsAreInputErrors) {
  std::ostringstream log;
  auto o = tiny_options(s_data, run_dir("bad"));
  o.phase = "int8";
  EXPECT_THROW(train::run_training(o, log), InputError);
  o = tiny_options(s_data, run_dir("bad"));
  o.phase = "ttq";  // no --init
  EXPECT_THROW(train::run_training(o, log), InputError);
  o = tiny_options(s_data, run_dir("bad"));
  o.data = "mnist:/nonexistent/folder";
  EXPECT_THROW(train::run_training(o, log), InputError);
  o = tiny_options(s_data, run_dir("bad"));
  o.resume = true;  // nothing to resume
  EXPECT_THROW(train::run_training(o, log), InputError);
}

// Runs the real tool; returns its wait status.
pid_t spawn_train(const std::vector<std::string>& args) {
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    std::string bin = std::string(TTQ_BINARY_DIR) + "/tools/ttq_train";
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    freopen("/dev/null", "w", stdout);
    freopen("/dev/null", "w", stderr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

std::vector<std::string> tool_args(const std::string& data, const std::string& out, int epochs) {
  return {"--model",  "small_densenet",
          "--data",   "mnist:" + data,
          "--out",    out,
          "--device", "cpu",
          "--epochs", std::to_string(epochs),
          "--batch",  "16",
          "--lr",     "0.05",
          "--seed",   "3",
          "--quiet"};
}

TEST_F(TrainLoop, SigintWritesCheckpointAndExits130) {
  if (!fs::exists(std::string(TTQ_BINARY_DIR) + "/tools/ttq_train")) GTEST_SKIP() << "ttq_train not built";
  std::string out = run_dir("sigint");
  pid_t pid = spawn_train(tool_args(s_data, out, 50));
  // Wait until the first epoch's checkpoint exists, then interrupt.
  for (int i = 0; i < 600 && !fs::exists(out + "/last.safetensors"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(out + "/last.safetensors"));
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  train::CheckpointContent c = train::read_checkpoint(out + "/last.safetensors");
  EXPECT_GE(c.state.epoch, 1);
  EXPECT_LT(c.state.epoch, 50);
}

TEST_F(TrainLoop, SigkillNeverLeavesABrokenCheckpoint) {
  if (!fs::exists(std::string(TTQ_BINARY_DIR) + "/tools/ttq_train")) GTEST_SKIP() << "ttq_train not built";
  const std::string out = run_dir("sigkill");
  const std::string last = out + "/last.safetensors";
  Generator g(99);
  const int epochs = 40;
  int kills = 0;
  for (int round = 0; round < 4; ++round) {
    auto args = tool_args(s_data, out, epochs);
    if (round > 0) args.push_back("--resume");
    pid_t pid = spawn_train(args);
    if (round == 0) {
      // Let the first checkpoint appear, then kill at a random moment after it.
      for (int i = 0; i < 1800 && !fs::exists(last); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ASSERT_TRUE(fs::exists(last)) << "no checkpoint within 180 s";
    }
    // A random moment: during start-up, a step, or a checkpoint write.
    std::this_thread::sleep_for(std::chrono::milliseconds(200 + g.below(3000)));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) ++kills;
    train::CheckpointContent c = train::read_checkpoint(last);  // must always load
    EXPECT_GE(c.state.epoch, 1);
  }
  EXPECT_GE(kills, 1);
  // The run goes on from where the last kill left it.
  train::CheckpointContent c = train::read_checkpoint(last);
  auto args = tool_args(s_data, out, static_cast<int>(c.state.epoch) + 1);
  args.push_back("--resume");
  pid_t pid = spawn_train(args);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(train::read_checkpoint(last).state.epoch, c.state.epoch + 1);
}

}  // namespace
}  // namespace ttq
