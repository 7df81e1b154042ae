// Data-parallel training: the grad_ready hook of the autograd, the MPI cases of
// tests/dist_worker.cpp run on 2 ranks (all-reduce, synchronised BN, the
// gradient reducer), and ttq_train under mpirun: 2 ranks x B with --sync-bn
// against 1 process x 2B, --resume with another rank count, a killed rank, a
// mismatch of flags between ranks. The MPI cases skip where mpirun or the MPI
// build is absent. Code: engine/dist/, train/distributed.{h,cpp}.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "data/idx.h"
#include "engine/autograd.h"
#include "engine/dist/comm.h"
#include "engine/io/safetensors.h"
#include "engine/ops/ops.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

// ---- the hook the reducer relies on ---------------------------------------------

TEST(GradReadyHook, FiresOnceWithTheFinalGradient) {
  Tensor w = test::rand({4, 3}, 1).set_requires_grad(true);    // used twice
  Tensor u = test::rand({4, 3}, 2).set_requires_grad(true);    // used once
  Tensor unused = test::rand({3}, 3).set_requires_grad(true);  // not in this graph
  std::map<std::string, int> calls;
  std::map<std::string, Tensor> seen;
  for (auto [name, t] : {std::pair<std::string, Tensor*>{"w", &w}, {"u", &u}, {"unused", &unused}}) {
    autograd::set_grad_ready_hook(*t, [&calls, &seen, name](const Tensor& g) {
      ++calls[name];
      seen[name] = g.clone();
    });
  }
  const Tensor x = test::rand({2, 4}, 4);
  // w feeds two nodes: its hook must wait for both.
  Tensor y = ops::add(ops::mul(ops::matmul(x, w), ops::matmul(x, w)), ops::relu(ops::matmul(x, u)));
  Tensor loss = ops::sum(y);
  loss.backward();
  EXPECT_EQ(calls["w"], 1);
  EXPECT_EQ(calls["u"], 1);
  EXPECT_EQ(calls.count("unused"), 0u);
  EXPECT_EQ(test::max_abs_diff(seen["w"], w.grad()), 0.0);
  EXPECT_EQ(test::max_abs_diff(seen["u"], u.grad()), 0.0);
  autograd::set_grad_ready_hook(w, {});
  w.zero_grad();
  ops::sum(ops::matmul(x, w)).backward();
  EXPECT_EQ(calls["w"], 1);  // cleared
}

// ---- runs under mpirun ----------------------------------------------------------

std::string mpirun_path() {
  for (const char* p : {"/usr/bin/mpirun", "/usr/local/bin/mpirun"})
    if (fs::exists(p)) return p;
  return "";
}

#define TTQ_NEED_MPIRUN()                                                         \
  do {                                                                            \
    if (!dist::mpi_compiled()) GTEST_SKIP() << "built without MPI";               \
    if (mpirun_path().empty()) GTEST_SKIP() << "no mpirun (Debian: openmpi-bin)"; \
  } while (0)

// mpirun -np `np` with what it needs on a 2-core machine run as root.
std::vector<std::string> mpirun(int np) {
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  setenv("OMP_NUM_THREADS", "1", 1);
  setenv("OMP_WAIT_POLICY", "passive", 1);
  // Waiting ranks yield the CPU rather than poll: the suite runs tests side by side.
  return {mpirun_path(), "--oversubscribe", "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1",
          "-np",         std::to_string(np)};
}

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The worker's cases, on 2 ranks; each must pass on both (none skipped).
void run_worker_cases(const std::string& filter, int cases) {
  const test::ToolRun r =
      test::run_argv(concat(mpirun(2), {std::string(TTQ_BINARY_DIR) + "/tests/dist_worker",
                                        "--gtest_color=no", "--gtest_filter=" + filter}));
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  const std::string passed = "[  PASSED  ] " + std::to_string(cases) + " test";
  size_t n = 0;
  for (size_t at = r.out.find(passed); at != std::string::npos; at = r.out.find(passed, at + 1)) ++n;
  EXPECT_EQ(n, 2u) << r.out;
  EXPECT_EQ(r.out.find("SKIPPED"), std::string::npos) << r.out;
}

TEST(DistMpi, WorkerCasesPassOnTwoRanks) {
  TTQ_NEED_MPIRUN();
  run_worker_cases("-*Nccl*", 4);
}

TEST(DistMpi, NcclWorkerCasePassesOnTwoGpus) {
  TTQ_NEED_MPIRUN();
  if (!dist::nccl_compiled()) GTEST_SKIP() << "built without NCCL";
  if (cuda::device_count() < 2) GTEST_SKIP() << "needs a CUDA device per rank (2)";
  run_worker_cases("*Nccl*", 1);
}

// A tiny IDX data set: 10 classes, a bright square at a class-specific place.
struct TinyData {
  fs::path dir;
  explicit TinyData(uint64_t seed = 99)
      : dir(fs::temp_directory_path() /
            ("ttq_dist_" + std::to_string(getpid()) + "_" + std::to_string(seed))) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    Generator g(seed);
    auto make = [&](int64_t n, const std::string& prefix) {
      std::vector<uint8_t> px(static_cast<size_t>(n) * 28 * 28), lab(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const int k = static_cast<int>(g.below(10));
        lab[static_cast<size_t>(i)] = static_cast<uint8_t>(k);
        const int r0 = 2 + (k / 5) * 12, c0 = 2 + (k % 5) * 5;
        for (int r = 0; r < 28; ++r)
          for (int c = 0; c < 28; ++c) {
            int v = static_cast<int>(g.below(60));
            if (r >= r0 && r < r0 + 6 && c >= c0 && c < c0 + 6) v += 180;
            px[static_cast<size_t>((i * 28 + r) * 28 + c)] = static_cast<uint8_t>(std::min(v, 255));
          }
      }
      data::write_idx((dir / (prefix + "-images-idx3-ubyte")).string(), {n, 28, 28}, px, false);
      data::write_idx((dir / (prefix + "-labels-idx1-ubyte")).string(), {n}, lab, true);
    };
    make(120, "train");
    make(20, "t10k");
  }
  ~TinyData() { fs::remove_all(dir); }
  std::string run(const std::string& name) const { return (dir / name).string(); }
};

std::vector<std::string> train_args(const TinyData& d, const std::string& out, int64_t batch,
                                    const std::vector<std::string>& extra = {}, int64_t limit_train = 32) {
  return concat({test::tool_path("ttq_train"),
                 "--model",
                 "small_densenet",
                 "--data",
                 "mnist:" + d.dir.string(),
                 "--device",
                 "cpu",
                 "--dropout",
                 "0",
                 "--limit-train",
                 std::to_string(limit_train),
                 "--limit-val",
                 "16",
                 "--limit-test",
                 "8",
                 "--seed",
                 "3",
                 "--workers",
                 "1",
                 "--quiet",
                 "--batch",
                 std::to_string(batch),
                 "--out",
                 out},
                extra);
}

// ||a - b|| / ||a|| over every model tensor (weights, BN parameters and
// statistics, TTQ scales) of two checkpoints. A global norm: a tensor near 0
// (a BN shift a few steps from its zero start, whose gradient is a sum that
// mostly cancels) would make a per-tensor ratio meaningless, and a ReLU or
// max-pool tie that rounding tips the other way moves single gradient entries.
double model_difference(const std::string& a_path, const std::string& b_path) {
  const train::CheckpointContent a = train::read_checkpoint(a_path), b = train::read_checkpoint(b_path);
  std::map<std::string, Tensor> bt(b.model_tensors.begin(), b.model_tensors.end());
  double num = 0, den = 0;
  for (const auto& [name, t] : a.model_tensors) {
    if (t.dtype() != DType::F32) continue;
    const std::vector<double> x = t.to_vector<double>(), y = bt.at(name).to_vector<double>();
    for (size_t i = 0; i < x.size(); ++i) {
      num += (x[i] - y[i]) * (x[i] - y[i]);
      den += x[i] * x[i];
    }
  }
  return std::sqrt(num / den);
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

// With --sync-bn, 2 ranks x 8 follow 1 process x 16 (two steps, the same samples in
// the same order): the same weights to float rounding; rank 0 alone wrote the run.
TEST(DistMpi, TwoRanksWithSyncBnFollowOneProcessWithTheGlobalBatch) {
  TTQ_NEED_MPIRUN();
  TinyData d;
  const std::vector<std::string> lr{"--epochs", "1", "--lr", "1e-4"};
  const test::ToolRun one = test::run_argv(train_args(d, d.run("one"), 16, lr));
  ASSERT_EQ(one.code, 0) << one.err;
  const test::ToolRun two =
      test::run_argv(concat(mpirun(2), train_args(d, d.run("two"), 8, concat(lr, {"--sync-bn"}))));
  ASSERT_EQ(two.code, 0) << two.out << two.err;
  EXPECT_LT(model_difference(d.run("one") + "/last.safetensors", d.run("two") + "/last.safetensors"), 1e-5);
  // One "done" line and one epoch line: rank 0 alone reports; the run records the global batch.
  EXPECT_EQ(test::count_lines(two.out), 1) << two.out;
  const nlohmann::json cfg = read_json(d.run("two") + "/config.json");
  EXPECT_EQ(cfg["batch"], 16);
  EXPECT_EQ(cfg["ranks"], 2);
  EXPECT_NE(two.err.find("data parallel: 2 ranks"), std::string::npos) << two.err;
  // The sharded, reduced validation counts every validation image once.
  const nlohmann::json m1 = read_json(d.run("one") + "/config.json");
  EXPECT_EQ(cfg["val_images"], m1["val_images"]);
  // --config of the one-process run under 2 ranks keeps its global batch (2 x 8).
  const test::ToolRun again = test::run_argv(
      concat(mpirun(2), {test::tool_path("ttq_train"), "--config", d.run("one") + "/config.json", "--out",
                         d.run("three"), "--device", "cpu", "--quiet", "--sync-bn"}));
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(read_json(d.run("three") + "/config.json")["batch"], 16);
  EXPECT_LT(model_difference(d.run("one") + "/last.safetensors", d.run("three") + "/last.safetensors"), 1e-5);
}

// --resume with another rank count continues the same run: one process's
// checkpoint resumed by 2 ranks gives (to rounding) what one process gives.
TEST(DistMpi, ResumeWithAnotherRankCount) {
  TTQ_NEED_MPIRUN();
  TinyData d;
  // One step an epoch: the resumed step starts from the same state on both sides.
  const test::ToolRun first =
      test::run_argv(train_args(d, d.run("a"), 16, {"--epochs", "1", "--lr", "1e-3"}, 16));
  ASSERT_EQ(first.code, 0) << first.err;
  fs::copy(d.run("a"), d.run("b"), fs::copy_options::recursive);
  const std::vector<std::string> more{"--epochs", "2", "--resume"};
  auto strip_batch = [](std::vector<std::string> a) {  // --resume takes the run's global batch
    auto it = std::find(a.begin(), a.end(), "--batch");
    a.erase(it, it + 2);
    return a;
  };
  const test::ToolRun one = test::run_argv(strip_batch(train_args(d, d.run("a"), 16, more, 16)));
  ASSERT_EQ(one.code, 0) << one.err;
  const test::ToolRun two = test::run_argv(
      concat(mpirun(2), strip_batch(train_args(d, d.run("b"), 16, concat(more, {"--sync-bn"}), 16))));
  ASSERT_EQ(two.code, 0) << two.out << two.err;
  EXPECT_NE(two.err.find("resuming"), std::string::npos) << two.err;
  EXPECT_LT(model_difference(d.run("a") + "/last.safetensors", d.run("b") + "/last.safetensors"), 1e-5);
  // A per-rank --batch that does not give the run's global batch is refused.
  const test::ToolRun bad =
      test::run_argv(concat(mpirun(2), train_args(d, d.run("b"), 4, {"--epochs", "3", "--resume"}, 16)));
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("--batch"), std::string::npos) << bad.err;
}

// Every rank must run the same command: different flags are found at start-up,
// reported in one line by rank 0, and nothing is written.
TEST(DistMpi, MismatchedFlagsAreOneLineAtStartUp) {
  TTQ_NEED_MPIRUN();
  TinyData d;
  std::vector<std::string> argv = mpirun(1);
  argv.resize(argv.size() - 2);  // MPMD: "-np 1 A : -np 1 B"
  argv = concat(argv, {"-np", "1"});
  argv = concat(argv, train_args(d, d.run("x"), 8, {"--epochs", "1", "--lr", "0.25"}));
  argv = concat(argv, {":", "-np", "1"});
  argv = concat(argv, train_args(d, d.run("x"), 8, {"--epochs", "1", "--lr", "0.5"}));
  const test::ToolRun r = test::run_argv(argv);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("ttq_train: rank 1: the flags differ from rank 0's (rank 0 has \"lr\": 0.25)"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(d.run("x") + "/config.json"));
}

// The same flags on different data (a relative --data resolved in two working
// folders, as two hosts with their own copies would): one line, nothing written.
TEST(DistMpi, MismatchedDataIsOneLineAtStartUp) {
  TTQ_NEED_MPIRUN();
  TinyData a(7), b(8);
  std::vector<std::string> argv = mpirun(1);
  argv.resize(argv.size() - 2);
  auto app = [&](const TinyData& d) {
    std::vector<std::string> t = train_args(a, a.run("x"), 8, {"--epochs", "1"});
    *std::find(t.begin(), t.end(), "mnist:" + a.dir.string()) = "mnist:.";
    return concat({"-np", "1", "-wdir", d.dir.string()}, t);
  };
  argv = concat(concat(concat(argv, app(a)), {":"}), app(b));
  const test::ToolRun r = test::run_argv(argv);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("ttq_train: rank 1: the data differ from rank 0's"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(a.run("x") + "/config.json"));
}

// A rank killed mid-epoch ends the job, non-zero, within 60 s; the last
// checkpoint stays loadable and one process resumes it to the end.
TEST(DistMpi, AKilledRankEndsTheJob) {
  TTQ_NEED_MPIRUN();
  TinyData d;
  std::vector<std::string> args =
      concat(mpirun(2), train_args(d, d.run("k"), 4, {"--epochs", "30", "--lr", "0.01"}, 64));
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t job = fork();
  ASSERT_GE(job, 0);
  if (job == 0) {
    setpgid(0, 0);
    const int devnull = ::open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  // Wait for the first epoch's checkpoint, then for the ranks to be well into the next epoch.
  while (!fs::exists(d.run("k") + "/last.safetensors") && elapsed() < 120)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(fs::exists(d.run("k") + "/last.safetensors"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // The ranks: ttq_train processes whose parent is mpirun.
  std::vector<pid_t> ranks;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream st(e.path() / "stat");
    std::string line;
    std::getline(st, line);
    const size_t close = line.rfind(')');
    if (close == std::string::npos || line.find("(ttq_train)") == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state;
    pid_t ppid;
    rest >> state >> ppid;
    if (ppid == job) ranks.push_back(std::stoi(name));
  }
  ASSERT_EQ(ranks.size(), 2u);
  ASSERT_EQ(::kill(ranks[1], SIGKILL), 0);
  const auto t_kill = std::chrono::steady_clock::now();
  int status = 0;
  pid_t done = 0;
  while ((done = waitpid(job, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() - t_kill < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (done == 0) {
    ::kill(-job, SIGKILL);
    waitpid(job, &status, 0);
    FAIL() << "the job still ran 60 s after a rank was killed";
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  // mpirun may return while a rank is still going down (and holding the run's lock): wait for both.
  for (pid_t p : ranks) ::kill(p, SIGKILL);
  auto alive = [](pid_t p) {
    std::ifstream st("/proc/" + std::to_string(p) + "/stat");
    std::string line;
    if (!std::getline(st, line)) return false;
    const size_t close = line.rfind(')');
    return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
  };
  for (pid_t p : ranks)
    for (int i = 0; i < 200 && alive(p); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const train::CheckpointContent c = train::read_checkpoint(d.run("k") + "/last.safetensors");
  EXPECT_GE(c.state.epoch, 1);
  // One process continues the run (the global batch of 8 is its own), a short way.
  std::vector<std::string> resume =
      train_args(d, d.run("k"), 8, {"--resume", "--epochs", std::to_string(c.state.epoch + 1)}, 64);
  const test::ToolRun r = test::run_argv(resume);
  EXPECT_EQ(r.code, 0) << r.err;
}

}  // namespace
}  // namespace ttq
