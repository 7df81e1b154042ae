// Ternarize and scale_grad (kernels/ternarize.h, kernels/scale_grad.h) on the
// real quantized weight tensors of the three models, in GB/s next to a copy of
// the same bytes measured in the same run: std::memcpy on the CPU, a
// device-to-device cudaMemcpyAsync on the GPU (GPU benchmarks are registered
// only when a device is present). Results: bench/RESULTS.md, "TTQ kernels".
//
// Bytes counted (the minimum traffic): ternarize reads W and writes Wq, 8 B per
// element (it reads W twice, max-abs then the fused pass; the second read comes
// from cache for all but the largest layers); scale_grad reads G and W and
// writes dL/dW, 12 B per element. The copy moves the same byte count (read +
// written), so the ratio copy_time / kernel_time is the fraction of copy
// bandwidth the kernel reaches.
//
// "all" runs every quantized layer of a model in sequence (one TTQ step's work);
// the per-shape runs cover each distinct layer shape once. Every kernel is
// checked against its reference on the shape before it posts a number.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/cuda/runtime.h"
#include "kernels/scale_grad.h"
#include "kernels/ternarize.h"
#include "models/model.h"

#ifdef TTQ_HAS_CUDA
#include <cuda_runtime.h>

#include "engine/cuda/check.h"
#endif

namespace ttq {
namespace {

struct LayerSet {
  std::string label;
  std::vector<int64_t> sizes;  // elements of each weight tensor
  int64_t total() const {
    int64_t s = 0;
    for (int64_t n : sizes) s += n;
    return s;
  }
};

// The quantized layers of the three models (input 3x56x56, 200 classes).
std::vector<LayerSet> layer_sets() {
  std::vector<LayerSet> out;
  std::map<std::string, int64_t> shapes;  // distinct shapes over all models, by name
  for (const char* arch : {"small_densenet", "squeezenet", "densenet121"}) {
    Generator gen(1);
    models::ModelPtr m = models::create(arch, {}, gen);
    LayerSet all{std::string(arch) + "/all", {}};
    for (auto& [name, conv] : m->quantizable_convs()) {
      const Shape& s = conv->weight().shape();
      all.sizes.push_back(shape_numel(s));
      std::string label;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i > 0) label.push_back('x');
        label.append(std::to_string(s[i]));
      }
      shapes.emplace(label, shape_numel(s));
    }
    out.push_back(all);
  }
  for (auto& [label, n] : shapes) out.push_back({"layer/" + label, {n}});
  return out;
}

// Host buffers for one layer set, filled with seeded values in [-1, 1).
struct HostData {
  std::vector<std::vector<float>> w, g, out;
  explicit HostData(const LayerSet& set) {
    Generator gen(7);
    for (int64_t n : set.sizes) {
      std::vector<float> a(static_cast<size_t>(n)), b(a.size()), c(a.size());
      for (size_t i = 0; i < a.size(); ++i) {
        a[i] = static_cast<float>(2 * gen.uniform() - 1);
        b[i] = static_cast<float>(2 * gen.uniform() - 1);
      }
      w.push_back(std::move(a));
      g.push_back(std::move(b));
      out.push_back(std::move(c));
    }
  }
};

constexpr float kT = 0.05f;

// ---- CPU ----------------------------------------------------------------------------

void bm_ternarize_cpu(benchmark::State& state, const LayerSet& set) {
  HostData d(set);
  for (size_t l = 0; l < set.sizes.size(); ++l) {  // validate before timing
    std::vector<float> ref(d.w[l].size());
    kernels::ternarize_ref(d.w[l].data(), set.sizes[l], kT, 1.1f, 0.9f, ref.data(), nullptr, nullptr,
                           nullptr);
    kernels::ternarize_cpu(d.w[l].data(), set.sizes[l], kT, 1.1f, 0.9f, d.out[l].data(), nullptr, nullptr,
                           nullptr);
    if (std::memcmp(ref.data(), d.out[l].data(), ref.size() * 4) != 0) {
      state.SkipWithError("ternarize_cpu differs from ternarize_ref");
      return;
    }
  }
  for (auto _ : state) {
    for (size_t l = 0; l < set.sizes.size(); ++l) {
      float delta = kernels::ternarize_cpu(d.w[l].data(), set.sizes[l], kT, 1.1f, 0.9f, d.out[l].data(),
                                           nullptr, nullptr, nullptr);
      benchmark::DoNotOptimize(delta);
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 8 * set.total());
}

void bm_scale_grad_cpu(benchmark::State& state, const LayerSet& set) {
  HostData d(set);
  std::vector<float> deltas;
  for (size_t l = 0; l < set.sizes.size(); ++l) {
    const int64_t n = set.sizes[l];
    deltas.push_back(kernels::ternarize_delta_ref(d.w[l].data(), n, kT));
    std::vector<float> ref(d.w[l].size());
    double p0, n0, p1, n1;
    kernels::scale_grad_ref(d.g[l].data(), d.w[l].data(), n, deltas[l], 1.1f, 0.9f,
                            kernels::WnGradMode::Exact, ref.data(), &p0, &n0);
    kernels::scale_grad_cpu(d.g[l].data(), d.w[l].data(), n, deltas[l], 1.1f, 0.9f,
                            kernels::WnGradMode::Exact, d.out[l].data(), &p1, &n1);
    if (std::memcmp(ref.data(), d.out[l].data(), ref.size() * 4) != 0 ||
        std::fabs(p0 - p1) > 1e-9 * (1 + std::fabs(p0)) || std::fabs(n0 - n1) > 1e-9 * (1 + std::fabs(n0))) {
      state.SkipWithError("scale_grad_cpu differs from scale_grad_ref");
      return;
    }
  }
  for (auto _ : state) {
    for (size_t l = 0; l < set.sizes.size(); ++l) {
      double gp, gn;
      kernels::scale_grad_cpu(d.g[l].data(), d.w[l].data(), set.sizes[l], deltas[l], 1.1f, 0.9f,
                              kernels::WnGradMode::Exact, d.out[l].data(), &gp, &gn);
      benchmark::DoNotOptimize(gp);
      benchmark::DoNotOptimize(gn);
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 12 * set.total());
}

// memcpy moving `bytes_per_element` bytes (read + written) per weight element.
void bm_memcpy_cpu(benchmark::State& state, const LayerSet& set, int bytes_per_element) {
  std::vector<std::vector<char>> src, dst;
  for (int64_t n : set.sizes) {
    const size_t b = static_cast<size_t>(n) * bytes_per_element / 2;
    src.emplace_back(b, 1);
    dst.emplace_back(b, 0);
  }
  for (auto _ : state) {
    for (size_t l = 0; l < src.size(); ++l) std::memcpy(dst[l].data(), src[l].data(), src[l].size());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * bytes_per_element * set.total());
}

// ---- GPU ----------------------------------------------------------------------------

#ifdef TTQ_HAS_CUDA

// Device buffers for one layer set plus an L2 flush buffer (larger than any L2).
struct DeviceData {
  std::vector<Tensor> w, g, out, ws, delta;
  Tensor wp, wn, gwp, gwn, flush;
  explicit DeviceData(const LayerSet& set) {
    const Device dev = Device::cuda(0);
    HostData h(set);
    for (size_t l = 0; l < set.sizes.size(); ++l) {
      const int64_t n = set.sizes[l];
      w.push_back(Tensor::from_vector(h.w[l], {n}, dev));
      g.push_back(Tensor::from_vector(h.g[l], {n}, dev));
      out.push_back(Tensor::empty({n}, DType::F32, dev));
      const size_t bytes =
          std::max(kernels::ternarize_cuda_workspace(n), kernels::scale_grad_cuda_workspace(n));
      ws.push_back(Tensor::empty({static_cast<int64_t>(bytes)}, DType::U8, dev));
      delta.push_back(Tensor::empty({1}, DType::F32, dev));
    }
    wp = Tensor::full({1}, 1.1, DType::F32, dev);
    wn = Tensor::full({1}, 0.9, DType::F32, dev);
    gwp = Tensor::empty({1}, DType::F32, dev);
    gwn = Tensor::empty({1}, DType::F32, dev);
    flush = Tensor::empty({256 << 20}, DType::U8, dev);
  }
};

cudaStream_t stream() { return static_cast<cudaStream_t>(cuda::current_stream()); }

// Times `body` with CUDA events, L2 flushed before each iteration.
template <class F>
void timed_loop(benchmark::State& state, DeviceData& d, F&& body) {
  cudaEvent_t start, stop;
  TTQ_CUDA_CHECK(cudaEventCreate(&start));
  TTQ_CUDA_CHECK(cudaEventCreate(&stop));
  body();  // warm-up
  for (auto _ : state) {
    TTQ_CUDA_CHECK(cudaMemsetAsync(d.flush.raw_data(), 0, d.flush.nbytes(), stream()));
    TTQ_CUDA_CHECK(cudaEventRecord(start, stream()));
    body();
    TTQ_CUDA_CHECK(cudaEventRecord(stop, stream()));
    TTQ_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    TTQ_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms * 1e-3);
  }
  TTQ_CUDA_CHECK(cudaEventDestroy(start));
  TTQ_CUDA_CHECK(cudaEventDestroy(stop));
}

void bm_ternarize_cuda(benchmark::State& state, const LayerSet& set) {
  DeviceData d(set);
  auto body = [&] {
    for (size_t l = 0; l < set.sizes.size(); ++l)
      kernels::ternarize_cuda(d.w[l].data<float>(), set.sizes[l], kT, d.wp.data<float>(), d.wn.data<float>(),
                              d.out[l].data<float>(), nullptr, nullptr, d.delta[l].data<float>(), nullptr,
                              d.ws[l].raw_data(), stream());
  };
  body();
  for (size_t l = 0; l < set.sizes.size(); ++l) {  // validate against the CPU twin
    std::vector<float> w = d.w[l].to_vector<float>(), ref(w.size());
    kernels::ternarize_cpu(w.data(), set.sizes[l], kT, 1.1f, 0.9f, ref.data(), nullptr, nullptr, nullptr);
    if (d.out[l].to_vector<float>() != ref) {
      state.SkipWithError("ternarize_cuda differs from ternarize_cpu");
      return;
    }
  }
  timed_loop(state, d, body);
  state.SetBytesProcessed(state.iterations() * 8 * set.total());
}

void bm_scale_grad_cuda(benchmark::State& state, const LayerSet& set) {
  DeviceData d(set);
  for (size_t l = 0; l < set.sizes.size(); ++l)  // deltas on the device
    kernels::ternarize_cuda(d.w[l].data<float>(), set.sizes[l], kT, d.wp.data<float>(), d.wn.data<float>(),
                            d.out[l].data<float>(), nullptr, nullptr, d.delta[l].data<float>(), nullptr,
                            d.ws[l].raw_data(), stream());
  auto body = [&] {
    for (size_t l = 0; l < set.sizes.size(); ++l)
      kernels::scale_grad_cuda(d.g[l].data<float>(), d.w[l].data<float>(), set.sizes[l],
                               d.delta[l].data<float>(), d.wp.data<float>(), d.wn.data<float>(),
                               kernels::WnGradMode::Exact, d.out[l].data<float>(), d.gwp.data<float>(),
                               d.gwn.data<float>(), d.ws[l].raw_data(), stream());
  };
  body();
  for (size_t l = 0; l < set.sizes.size(); ++l) {
    std::vector<float> w = d.w[l].to_vector<float>(), g = d.g[l].to_vector<float>(), ref(w.size());
    double p, q;
    const float delta = static_cast<float>(d.delta[l].item());
    kernels::scale_grad_cpu(g.data(), w.data(), set.sizes[l], delta, 1.1f, 0.9f, kernels::WnGradMode::Exact,
                            ref.data(), &p, &q);
    if (d.out[l].to_vector<float>() != ref) {
      state.SkipWithError("scale_grad_cuda differs from scale_grad_cpu");
      return;
    }
  }
  body();  // the last layer's sums
  timed_loop(state, d, body);
  state.SetBytesProcessed(state.iterations() * 12 * set.total());
}

void bm_copy_cuda(benchmark::State& state, const LayerSet& set, int bytes_per_element) {
  DeviceData d(set);
  std::vector<Tensor> src, dst;
  for (int64_t n : set.sizes) {
    const int64_t b = n * bytes_per_element / 2;
    src.push_back(Tensor::zeros({b}, DType::U8, Device::cuda(0)));
    dst.push_back(Tensor::empty({b}, DType::U8, Device::cuda(0)));
  }
  auto body = [&] {
    for (size_t l = 0; l < src.size(); ++l)
      TTQ_CUDA_CHECK(cudaMemcpyAsync(dst[l].raw_data(), src[l].raw_data(), src[l].nbytes(),
                                     cudaMemcpyDeviceToDevice, stream()));
  };
  timed_loop(state, d, body);
  state.SetBytesProcessed(state.iterations() * bytes_per_element * set.total());
}

#endif  // TTQ_HAS_CUDA

void register_all() {
  static const std::vector<LayerSet> sets = layer_sets();
  for (const LayerSet& s : sets) {
    const double min_time = s.label.find("/all") != std::string::npos ? 0.2 : 0.05;
    benchmark::RegisterBenchmark(("ternarize_cpu/" + s.label).c_str(), bm_ternarize_cpu, s)
        ->MinTime(min_time);
    benchmark::RegisterBenchmark(("memcpy8_cpu/" + s.label).c_str(), bm_memcpy_cpu, s, 8)->MinTime(min_time);
    benchmark::RegisterBenchmark(("scale_grad_cpu/" + s.label).c_str(), bm_scale_grad_cpu, s)
        ->MinTime(min_time);
    benchmark::RegisterBenchmark(("memcpy12_cpu/" + s.label).c_str(), bm_memcpy_cpu, s, 12)
        ->MinTime(min_time);
  }
#ifdef TTQ_HAS_CUDA
  if (!cuda::available()) return;
  for (const LayerSet& s : sets) {
    benchmark::RegisterBenchmark(("ternarize_cuda/" + s.label).c_str(), bm_ternarize_cuda, s)
        ->UseManualTime();
    benchmark::RegisterBenchmark(("copy8_cuda/" + s.label).c_str(), bm_copy_cuda, s, 8)->UseManualTime();
    benchmark::RegisterBenchmark(("scale_grad_cuda/" + s.label).c_str(), bm_scale_grad_cuda, s)
        ->UseManualTime();
    benchmark::RegisterBenchmark(("copy12_cuda/" + s.label).c_str(), bm_copy_cuda, s, 12)->UseManualTime();
  }
#endif
}

}  // namespace
}  // namespace ttq

int main(int argc, char** argv) {
  ttq::register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
