// Peak memory of one DenseNet-121 training step (batch 16, 3x56x56, 200
// classes, CPU: forward, cross-entropy, backward, SGD with Nesterov momentum)
// with the memory-efficient dense layer (models/densenet.cpp) and with the
// naive concatenation graph. Each configuration runs in a fresh process (this
// binary re-executed) so that neither inherits the other's heap. glibc's mmap
// threshold is pinned so every tensor above 128 KiB is mapped and unmapped on
// its own and the resident-set high-water mark (VmHWM, reset just before the
// step) follows the live tensor bytes. Results: bench/RESULTS.md.
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "engine/ops/ops.h"
#include "engine/optim/optimizer.h"
#include "models/model.h"

namespace {

constexpr const char* kChildFlag = "--densenet-memory-child";

// A field of /proc/self/status in KiB ("VmRSS", "VmHWM").
long status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::stol(line.substr(line.find(':') + 1));
  return -1;
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// The child: one training step; prints "baseline_kib peak_kib wall_s cpu_s loss".
int run_child(bool efficient, int batch) {
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  mallopt(M_TRIM_THRESHOLD, 128 * 1024);
  using namespace ttq;
  models::ModelConfig cfg;
  cfg.memory_efficient = efficient;
  Generator gen(1);
  auto model = models::create("densenet121", cfg, gen);
  model->train();
  optim::SGDOptions so;
  so.lr = 0.1;
  so.momentum = 0.95;
  so.nesterov = true;
  so.weight_decay = 1e-4;
  optim::SGD opt(model->parameters(), so);
  Tensor x = Tensor::randn({batch, 3, 56, 56}, gen);
  std::vector<int64_t> labels(batch);
  for (int i = 0; i < batch; ++i) labels[i] = (i * 37) % 200;
  Tensor y = Tensor::from_vector(labels, {batch});

  { std::ofstream("/proc/self/clear_refs") << "5"; }  // reset VmHWM to the current RSS
  const long baseline = status_kib("VmRSS");
  auto t0 = std::chrono::steady_clock::now();
  const double c0 = cpu_seconds();
  Tensor loss = ops::cross_entropy(model->forward(x), y);
  loss.backward();
  opt.step();
  opt.zero_grad();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = cpu_seconds() - c0;
  const long peak = status_kib("VmHWM");
  std::printf("%ld %ld %.3f %.3f %.6f\n", baseline, peak, seconds, cpu, loss.item());
  return 0;
}

void BM_DenseNet121TrainStepMemory(benchmark::State& state) {
  const bool efficient = state.range(0) != 0;
  const int batch = static_cast<int>(state.range(1));
  long baseline = 0, peak = 0;
  double seconds = 0, cpu = 0, loss = 0;
  for (auto _ : state) {
    int fds[2];
    if (pipe(fds) != 0) {
      state.SkipWithError("pipe failed");
      return;
    }
    pid_t pid = fork();
    if (pid == 0) {
      dup2(fds[1], STDOUT_FILENO);
      close(fds[0]);
      std::string eff = efficient ? "1" : "0", b = std::to_string(batch);
      execl("/proc/self/exe", "bench_densenet_memory", kChildFlag, eff.c_str(), b.c_str(), nullptr);
      _exit(127);
    }
    close(fds[1]);
    char buf[256] = {};
    ssize_t n = 0, got = 0;
    while ((n = read(fds[0], buf + got, sizeof(buf) - 1 - got)) > 0) got += n;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        std::sscanf(buf, "%ld %ld %lf %lf %lf", &baseline, &peak, &seconds, &cpu, &loss) != 5) {
      state.SkipWithError("child failed");
      return;
    }
    state.SetIterationTime(seconds);
  }
  state.counters["baseline_MiB"] = baseline / 1024.0;
  state.counters["peak_MiB"] = peak / 1024.0;
  state.counters["step_MiB"] = (peak - baseline) / 1024.0;
  state.counters["cpu_s"] = cpu;
  state.counters["loss"] = loss;
  state.SetLabel(efficient ? "memory_efficient" : "naive_concat");
}

BENCHMARK(BM_DenseNet121TrainStepMemory)
    ->ArgNames({"efficient", "batch"})
    ->Args({0, 16})
    ->Args({1, 16})
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kSecond);

}  // namespace

int main(int argc, char** argv) {
  // Peak resident memory should count live tensors, not blocks the CPU block
  // cache keeps for reuse (engine/storage.cpp).
  setenv("TTQ_CPU_CACHE_MB", "0", 0);
  if (argc == 4 && std::strcmp(argv[1], kChildFlag) == 0)
    return run_child(std::atoi(argv[2]) != 0, std::atoi(argv[3]));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
