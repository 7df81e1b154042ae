// CPU conv2d training cost on the small DenseNet's conv shapes (batch 32):
// forward + backward data + backward filter through engine/cpu/conv.cpp,
// reported as GFLOP/s of wall time and per CPU-second of all threads
// (2*N*Co*(Ci/groups)*kh*kw*Ho*Wo per pass, three passes). A second list
// ("grouped/") times grouped and depthwise 3x3 layers of MobileNet / ResNeXt
// shapes (one GEMM per group).
// Each shape also runs under the other threading policy ("blas_threads":
// batch loop on one thread, OpenBLAS threading each GEMM) to back the choice
// made in engine/cpu/blas.h with a side-by-side number.
// Results: bench/RESULTS.md. Correctness: tests/test_backend_ops.cpp.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <ctime>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/cpu/blas.h"

namespace {

using ttq::Conv2dParams;
using ttq::Tensor;

struct Shape {
  int ci, co, k, hw;  // square kernel k, pad k/2, stride 1
  int groups = 1;
};

// Every distinct conv of the small DenseNet at 3x56x56 (docs/architecture.md, "Models").
std::vector<Shape> densenet_small_shapes() {
  std::vector<Shape> s{{3, 48, 3, 56}};
  for (int c = 48; c <= 132; c += 12) s.push_back({c, 48, 1, 28});
  for (int c = 72; c <= 204; c += 12) s.push_back({c, 48, 1, 14});
  for (int c = 108; c <= 216; c += 12) s.push_back({c, 48, 1, 7});
  for (int hw : {28, 14, 7}) s.push_back({48, 12, 3, hw});
  s.push_back({144, 72, 1, 28});
  s.push_back({216, 108, 1, 14});
  return s;
}

// Depthwise (MobileNet) and grouped (ResNeXt, 32 groups) 3x3 layers.
std::vector<Shape> grouped_shapes() {
  return {{32, 32, 3, 56, 32},
          {96, 96, 3, 28, 96},
          {192, 192, 3, 14, 192},
          {128, 128, 3, 28, 32},
          {256, 256, 3, 14, 32}};
}

double process_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

void conv_fwd_bwd(benchmark::State& state, Shape sh, bool blas_threads) {
  const int64_t n = 32;
  ttq::Generator gen(1);
  const Tensor x = Tensor::uniform({n, sh.ci, sh.hw, sh.hw}, gen, -1, 1);
  const Tensor w = Tensor::uniform({sh.co, sh.ci / sh.groups, sh.k, sh.k}, gen, -1, 1);
  const Tensor gy = Tensor::uniform({n, sh.co, sh.hw, sh.hw}, gen, -1, 1);
  Tensor y = Tensor::empty({n, sh.co, sh.hw, sh.hw}), gx = Tensor::empty(x.shape()),
         gw = Tensor::empty(w.shape());
  Tensor no_bias;
  const Conv2dParams p{1, 1, sh.k / 2, sh.k / 2, 1, 1, sh.groups};
  ttq::cpu::blas_init_threading();
  const int omp_threads = omp_get_max_threads();
  if (blas_threads) {
    omp_set_num_threads(1);
    openblas_set_num_threads(omp_threads);
  }
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    ttq::cpu::conv2d_forward(x, w, no_bias, p, y);
    ttq::cpu::conv2d_backward_data(gy, w, p, gx);
    ttq::cpu::conv2d_backward_filter(gy, x, p, gw, no_bias);
    benchmark::DoNotOptimize(y.data<float>());
    benchmark::DoNotOptimize(gx.data<float>());
    benchmark::DoNotOptimize(gw.data<float>());
  }
  if (blas_threads) {
    openblas_set_num_threads(1);
    omp_set_num_threads(omp_threads);
  }
  const double cpu_seconds = process_cpu_seconds() - cpu0;
  const double flops = 3.0 * 2.0 * n * sh.co * (sh.ci / sh.groups) * sh.k * sh.k * sh.hw * sh.hw;
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  // Per second of CPU time of all threads: the load-independent cost on a shared machine.
  state.counters["GFLOP/cpu_s"] = flops / 1e9 * static_cast<double>(state.iterations()) / cpu_seconds;
}

const bool registered = [] {
  for (const Shape& sh : densenet_small_shapes()) {
    const std::string name = "conv_fwd_bwd/" + std::to_string(sh.k) + "x" + std::to_string(sh.k) + "_" +
                             std::to_string(sh.ci) + "->" + std::to_string(sh.co) + "@" +
                             std::to_string(sh.hw);
    benchmark::RegisterBenchmark((name + "/engine").c_str(), conv_fwd_bwd, sh, false)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark((name + "/blas_threads").c_str(), conv_fwd_bwd, sh, true)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (const Shape& sh : grouped_shapes()) {
    const std::string name = "grouped/3x3_" + std::to_string(sh.ci) + "->" + std::to_string(sh.co) + "_g" +
                             std::to_string(sh.groups) + "@" + std::to_string(sh.hw);
    benchmark::RegisterBenchmark((name + "/engine").c_str(), conv_fwd_bwd, sh, false)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
