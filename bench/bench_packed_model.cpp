// Whole-model inference on packed 2-bit weights (models/packed.h) against the
// engine's float model holding the same ternary values, eval mode, 3x56x56 input
// (torchvision's presets: 3x64x64, Tiny ImageNet's full image), 200 classes:
// batch-1 latency and batch-32 throughput (images/s), wall-clock time of forward()
// (input already on the model's device, logits copied back to the host).
//  - small_densenet, squeezenet: the seed's TTQ files (tests/fixtures/seed), packed in
//    memory with models::pack_tensors;
//  - densenet121, resnet18, tv_densenet121, squeezenet1_1: random weights made ternary
//    (threshold 0.05 * max|W| per layer).
// CPU: PackedModel (auto micro-kernel) vs models::Model::forward (BLAS convs), and
// PackedModel with int8 activations (packed_int8_cpu: ternary x int8 kernels,
// docs/int8.md; scales calibrated with percentile on 32 images drawn like the input,
// the logits checked within 10% of the float model's range, the error posted as
// rel_err).
// GPU (registered only when a device is present): PackedModel on the tensor cores
// with and without CUDA graphs, on the CUDA cores, and the float model (cuDNN fp32).
// Each packed run is checked against the float model's logits before it posts a
// number. The PyTorch side of the comparison is bench/peers/packed_infer_torch.py.
// Results: bench/RESULTS.md, "Packed 2-bit inference".
#include <benchmark/benchmark.h>

// GCC 12 reports a false -Wrestrict inside std::string concatenations (GCC PR 105329).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/io/safetensors.h"
#include "models/model.h"
#include "models/packed.h"

namespace ttq {
namespace {

const std::string kSeed = bench::seed_dir();

// The float weights of a model (ternary values in the quantized convs).
io::NamedTensors model_weights(const std::string& arch) {
  if (arch == "small_densenet" || arch == "squeezenet")
    return io::read_safetensors(kSeed + "/" + arch + "_ttq.safetensors").tensors();
  Generator gen(7);
  models::ModelPtr m = models::create(arch, {}, gen);
  std::map<std::string, bool> quant;
  for (auto& [name, conv] : m->quantizable_convs()) quant[name + ".weight"] = true;
  io::NamedTensors out;
  for (auto& [name, t] : m->state_dict()) {
    Tensor v = t.clone();
    if (quant.count(name)) {
      float* p = v.data<float>();
      float mx = 0;
      for (int64_t i = 0; i < v.numel(); ++i) mx = std::max(mx, std::fabs(p[i]));
      double sum = 0;
      int64_t cnt = 0;
      for (int64_t i = 0; i < v.numel(); ++i)
        if (std::fabs(p[i]) > 0.05f * mx) sum += std::fabs(p[i]), ++cnt;
      const float a = cnt ? float(sum / cnt) : 1.0f;
      for (int64_t i = 0; i < v.numel(); ++i) p[i] = p[i] > 0.05f * mx ? a : (p[i] < -0.05f * mx ? -a : 0.0f);
    }
    out.emplace_back(name, v);
  }
  return out;
}

// The seed's models take 56x56 crops; torchvision's presets the 64x64 images whole.
int64_t input_size(const std::string& arch) {
  return arch == "resnet18" || arch == "tv_densenet121" || arch == "squeezenet1_1" ? 64 : 56;
}

struct Prepared {
  models::PackedContent packed;
  models::PackedContent packed_int8;  // with calibrated activation scales
  io::NamedTensors weights;
};
const Prepared& prepared(const std::string& arch) {
  static std::map<std::string, std::unique_ptr<Prepared>> cache;
  auto& p = cache[arch];
  if (!p) {
    p = std::make_unique<Prepared>();
    p->weights = model_weights(arch);
    p->packed = models::pack_tensors(p->weights, {}, arch, arch);
    p->packed_int8 = p->packed;
    models::PackedRunOptions fo;
    fo.precision = models::Precision::Float;
    auto fm =
        models::PackedModel::from_tensors(p->packed.tensors, p->packed.metadata, "", Device::cpu(), arch, fo);
    Generator g(11);
    const int64_t s = input_size(arch);
    const Tensor calib = Tensor::uniform({32, 3, s, s}, g, -2, 2);
    models::add_activation_quant(
        p->packed_int8, models::calibrate_activations(*fm, calib, models::CalibMethod::Percentile, 16),
        "uniform", "bench");
  }
  return *p;
}

models::ModelPtr float_model(const std::string& arch, Device dev) {
  Generator gen(0);
  models::ModelPtr m = models::create(arch, {}, gen);
  models::load_weights(*m, prepared(arch).weights, arch);
  m->eval();
  m->to(dev);
  return m;
}

Tensor input(const std::string& arch, int64_t n, Device dev) {
  Generator g(3);
  const int64_t s = input_size(arch);
  return Tensor::uniform({n, 3, s, s}, g, -2, 2, DType::F32, dev);
}

double rel_error(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector<float>(), y = b.to_vector<float>();
  double m = 0, scale = 1e-30;
  for (size_t i = 0; i < x.size(); ++i) {
    m = std::max(m, std::fabs(double(x[i]) - double(y[i])));
    scale = std::max(scale, std::fabs(double(y[i])));
  }
  return std::isfinite(m) ? m / scale : INFINITY;
}

void set_rate(benchmark::State& state, int64_t n) {
  state.counters["images/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

Tensor float_forward(models::Model& m, const Tensor& x) {
  autograd::NoGradGuard ng;
  return m.forward(x).to(Device::cpu());
}

void bm_float(benchmark::State& state, std::string arch, int64_t n, Device dev) {
  auto m = float_model(arch, dev);
  const Tensor x = input(arch, n, dev);
  float_forward(*m, x);  // warm-up (cuDNN algorithm choice)
  for (auto _ : state) benchmark::DoNotOptimize(float_forward(*m, x).raw_data());
  set_rate(state, n);
}

void bm_packed(benchmark::State& state, std::string arch, int64_t n, Device dev, models::PackedRunOptions o,
               double tol) {
  const Prepared& p = prepared(arch);
  auto m = models::PackedModel::from_tensors(p.packed.tensors, p.packed.metadata, "", dev, arch, o);
  const Tensor x = input(arch, n, dev);
  const Tensor got = m->forward(x);
  for (int i = 0; i < 2; ++i) m->forward(x);  // CUDA: capture the graph
  auto fm = float_model(arch, dev);
  const double err = rel_error(got, float_forward(*fm, x));
  if (!(err < tol)) {
    state.SkipWithError(("packed logits disagree with the float model: " + std::to_string(err)).c_str());
    return;
  }
  fm.reset();
  for (auto _ : state) benchmark::DoNotOptimize(m->forward(x).raw_data());
  set_rate(state, n);
  state.counters["weight_MB"] = double(m->weight_bytes()) / 1e6;
}

void bm_packed_int8(benchmark::State& state, std::string arch, int64_t n) {
  const Prepared& p = prepared(arch);
  models::PackedRunOptions o;
  o.precision = models::Precision::Int8;
  auto m = models::PackedModel::from_tensors(p.packed_int8.tensors, p.packed_int8.metadata, "", Device::cpu(),
                                             arch, o);
  const Tensor x = input(arch, n, Device::cpu());
  const Tensor got = m->forward(x);
  auto fm = float_model(arch, Device::cpu());
  const double err = rel_error(got, float_forward(*fm, x));
  if (!(err < 0.1)) {
    state.SkipWithError(("int8 logits too far from the float model: " + std::to_string(err)).c_str());
    return;
  }
  fm.reset();
  for (auto _ : state) benchmark::DoNotOptimize(m->forward(x).raw_data());
  set_rate(state, n);
  state.counters["rel_err"] = err;
}

void register_all() {
  for (const char* arch :
       {"small_densenet", "squeezenet", "densenet121", "resnet18", "tv_densenet121", "squeezenet1_1"}) {
    for (int64_t n : {1, 32}) {
      const std::string base = std::string("/") + arch + "/n" + std::to_string(n);
      benchmark::RegisterBenchmark(("packed_cpu" + base).c_str(), bm_packed, arch, n, Device::cpu(),
                                   models::PackedRunOptions{}, 1e-4)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(0.5);
      benchmark::RegisterBenchmark(("packed_int8_cpu" + base).c_str(), bm_packed_int8, arch, n)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(0.5);
      benchmark::RegisterBenchmark(("float_cpu" + base).c_str(), bm_float, arch, n, Device::cpu())
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(0.5);
      // The AVX2 micro-kernel on a machine whose Auto pick is AVX-512.
      if (kernels::cpu_isa_auto() == kernels::CpuIsa::Avx512) {
        models::PackedRunOptions avx2;
        avx2.cpu_isa = kernels::CpuIsa::Avx2;
        benchmark::RegisterBenchmark(("packed_avx2_cpu" + base).c_str(), bm_packed, arch, n, Device::cpu(),
                                     avx2, 1e-4)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->MinTime(0.5);
      }
    }
  }
#ifdef TTQ_HAS_CUDA
  if (!cuda::available()) return;
  for (const char* arch :
       {"small_densenet", "squeezenet", "densenet121", "resnet18", "tv_densenet121", "squeezenet1_1"}) {
    for (int64_t n : {1, 32}) {
      const std::string base = std::string("/") + arch + "/n" + std::to_string(n);
      models::PackedRunOptions tc, tc_eager, simt;
      tc.cuda_path = kernels::CudaPath::TensorCore;
      tc_eager = tc;
      tc_eager.cuda_graph_max_batch = 0;
      simt.cuda_path = kernels::CudaPath::Simt;
      benchmark::RegisterBenchmark(("packed_tc_graph_cuda" + base).c_str(), bm_packed, arch, n,
                                   Device::cuda(0), tc, 2e-3)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("packed_tc_eager_cuda" + base).c_str(), bm_packed, arch, n,
                                   Device::cuda(0), tc_eager, 2e-3)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("packed_simt_graph_cuda" + base).c_str(), bm_packed, arch, n,
                                   Device::cuda(0), simt, 1e-4)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("float_cuda" + base).c_str(), bm_float, arch, n, Device::cuda(0))
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
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
