// The packed 2-bit convolution (kernels/packed_conv.h) against the dense path on
// every distinct quantized conv shape of the three models (input 3x56x56), at
// batch 1 and batch 32:
//  - CPU: packed_conv_cpu (AVX2 or scalar micro-kernel) vs the engine's BLAS conv
//    (cpu::conv2d_forward: im2col + OpenBLAS), same OpenMP threads;
//  - GPU (registered only when a device is present): the tensor-core and CUDA-core
//    packed kernels vs cuDNN fp32 (the engine's cuda::conv2d_forward, FMA math) and
//    cuDNN fp16 (half tensors, tensor-op math, fastest algorithm found), CUDA-event
//    time with L2 flushed before each iteration.
// Weights: random codes with the model's zero fraction (38% / 64%). Every packed
// version is checked against the dense conv on its shape before it posts a number.
// The *_bnrelu_cpu pair adds the BN + ReLU that precedes every quantized conv of these
// models: fused into the packed conv's prologue vs the float model's three passes.
// Counters: GFLOP/s = 2 * N * Co * Ci * kh * kw * Ho * Wo / time. Results and
// ratios: bench/RESULTS.md, "Packed 2-bit inference".
#include <benchmark/benchmark.h>

// GCC 12 reports a false -Wrestrict inside std::string concatenations (GCC PR 105329).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "engine/backend.h"
#include "engine/cpu/blas.h"
#include "engine/cuda/runtime.h"
#include "kernels/pack.h"
#include "kernels/packed_conv.h"

#ifdef TTQ_HAS_CUDA
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "engine/cuda/check.h"
#include "engine/cuda/context.h"
#endif

namespace ttq {
namespace {

struct ConvShape {
  std::string models;  // which models have it
  int64_t ci, co, k, hw;
  std::string name() const {
    return std::to_string(k) + "x" + std::to_string(k) + "_" + std::to_string(ci) + "->" +
           std::to_string(co) + "@" + std::to_string(hw);
  }
  double flops(int64_t n) const { return 2.0 * n * co * ci * k * k * hw * hw; }
};

// Every distinct quantized conv (stride 1, pad k/2) of the three models at 3x56x56.
std::vector<ConvShape> conv_shapes() {
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, std::string> seen;
  std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>> order;
  auto add = [&](const std::string& model, int64_t ci, int64_t co, int64_t k, int64_t hw) {
    const auto key = std::make_tuple(ci, co, k, hw);
    if (!seen.count(key)) order.push_back(key);
    std::string& m = seen[key];
    if (m.find(model) != std::string::npos) return;
    if (!m.empty()) m += '+';
    m += model;
  };
  auto densenet = [&](const std::string& model, int64_t c, int64_t growth, const std::vector<int>& blocks,
                      int64_t hw) {
    for (size_t b = 0; b < blocks.size(); ++b) {
      for (int j = 0; j < blocks[b]; ++j) add(model, c + j * growth, 4 * growth, 1, hw);
      add(model, 4 * growth, growth, 3, hw);
      c += blocks[b] * growth;
      if (b + 1 < blocks.size()) {
        add(model, c, c / 2, 1, hw);
        c /= 2;
        hw /= 2;
      }
    }
  };
  densenet("small_densenet", 48, 12, {8, 12, 10}, 28);
  struct Fire {
    int64_t in, s, e, hw;
  };
  for (const Fire& f :
       {Fire{64, 16, 64, 28}, Fire{128, 16, 64, 28}, Fire{128, 32, 128, 14}, Fire{256, 32, 128, 14},
        Fire{256, 48, 192, 7}, Fire{384, 48, 192, 7}, Fire{384, 64, 256, 7}, Fire{512, 64, 256, 7}}) {
    add("squeezenet", f.in, f.s, 1, f.hw);
    add("squeezenet", f.s, f.e, 1, f.hw);
    add("squeezenet", f.s, f.e, 3, f.hw);
  }
  densenet("densenet121", 64, 32, {6, 12, 24, 16}, 56);
  std::vector<ConvShape> out;
  for (const auto& key : order) {
    const auto [ci, co, k, hw] = key;
    out.push_back({seen[key], ci, co, k, hw});
  }
  return out;
}

// The zero fraction of the model's trained TTQ weights (tests/fixtures/seed/README.md:
// small DenseNet 38.2%, SqueezeNet 64.1%; DenseNet-121 has no trained file: 38%).
double zero_fraction(const ConvShape& s) { return s.models.rfind("squeezenet", 0) == 0 ? 0.641 : 0.382; }

kernels::PackedConvWeight random_weight(const ConvShape& s, Device dev) {
  Generator g(s.ci * 131 + s.co * 7 + s.k);
  const double zf = zero_fraction(s);
  const int64_t n = s.co * s.ci * s.k * s.k;
  Tensor codes = Tensor::empty({n}, DType::U8);
  uint8_t* c = codes.data<uint8_t>();
  for (int64_t i = 0; i < n; ++i) c[i] = g.uniform() < zf ? 0 : static_cast<uint8_t>(1 + g.below(2));
  return kernels::PackedConvWeight::from_codes(kernels::pack_codes(codes), {s.co, s.ci, s.k, s.k}, 1.02f,
                                               0.97f, dev);
}

Tensor input(const ConvShape& s, int64_t n, Device dev = Device::cpu()) {
  Generator g(99);
  return Tensor::uniform({n, s.ci, s.hw, s.hw}, g, -1, 1, DType::F32, dev);
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

void set_flops(benchmark::State& state, const ConvShape& s, int64_t n) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(s.flops(n) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- CPU ----------------------------------------------------------------------------

Tensor dense_cpu(const ConvShape& s, const Tensor& x, const Tensor& w) {
  Tensor y = Tensor::empty({x.size(0), s.co, s.hw, s.hw});
  Tensor no_bias;
  cpu::conv2d_forward(x, w, no_bias, Conv2dParams{1, 1, int(s.k / 2), int(s.k / 2)}, y);
  return y;
}

void bm_packed_cpu(benchmark::State& state, ConvShape s, int64_t n, kernels::CpuIsa isa) {
  if (!kernels::cpu_isa_supported(isa)) {
    state.SkipWithError("this CPU cannot run the micro-kernel");
    return;
  }
  const kernels::PackedConvWeight w = random_weight(s, Device::cpu());
  const Tensor x = input(s, n);
  kernels::PackedConvOptions o;
  o.pad = static_cast<int>(s.k / 2);
  o.cpu_isa = isa;
  Tensor y = Tensor::empty({n, s.co, s.hw, s.hw});
  kernels::packed_conv2d_out(x, w, o, y);
  if (rel_error(y, dense_cpu(s, x, w.decode())) > 1e-5) {
    state.SkipWithError("packed conv disagrees with the dense conv");
    return;
  }
  for (auto _ : state) {
    kernels::packed_conv2d_out(x, w, o, y);
    benchmark::DoNotOptimize(y.data<float>());
  }
  set_flops(state, s, n);
}

// BN (eval) + ReLU before the conv: scale / shift per input channel.
struct BnRelu {
  Tensor weight, bias, mean, var, scale, shift;
  explicit BnRelu(int64_t c) {
    Generator g(c);
    weight = Tensor::uniform({c}, g, 0.5, 1.5);
    bias = Tensor::uniform({c}, g, -0.5, 0.5);
    mean = Tensor::uniform({c}, g, -0.5, 0.5);
    var = Tensor::uniform({c}, g, 0.5, 2.0);
    scale = Tensor::empty({c});
    shift = Tensor::empty({c});
    for (int64_t i = 0; i < c; ++i) {
      const double sc = weight.data<float>()[i] / std::sqrt(double(var.data<float>()[i]) + 1e-5);
      scale.data<float>()[i] = float(sc);
      shift.data<float>()[i] = float(bias.data<float>()[i] - mean.data<float>()[i] * sc);
    }
  }
};

void bm_packed_bnrelu_cpu(benchmark::State& state, ConvShape s, int64_t n) {
  const kernels::PackedConvWeight w = random_weight(s, Device::cpu());
  const Tensor x = input(s, n);
  const BnRelu bn(s.ci);
  kernels::PackedConvOptions o;
  o.pad = static_cast<int>(s.k / 2);
  o.pre_scale = bn.scale;
  o.pre_shift = bn.shift;
  o.pre_relu = true;
  Tensor y = Tensor::empty({n, s.co, s.hw, s.hw});
  for (auto _ : state) {
    kernels::packed_conv2d_out(x, w, o, y);
    benchmark::DoNotOptimize(y.data<float>());
  }
  set_flops(state, s, n);
}

void bm_dense_bnrelu_cpu(benchmark::State& state, ConvShape s, int64_t n) {
  cpu::blas_init_threading();
  const Tensor w = random_weight(s, Device::cpu()).decode();
  const Tensor x = input(s, n);
  const BnRelu bn(s.ci);
  Tensor t = Tensor::empty(x.shape()), r = Tensor::empty(x.shape());
  Tensor y = Tensor::empty({n, s.co, s.hw, s.hw});
  Tensor no_bias;
  const Conv2dParams p{1, 1, int(s.k / 2), int(s.k / 2)};
  for (auto _ : state) {
    cpu::batch_norm_forward_eval(x, bn.weight, bn.bias, bn.mean, bn.var, 1e-5, t);
    cpu::relu_forward(t, r);
    cpu::conv2d_forward(r, w, no_bias, p, y);
    benchmark::DoNotOptimize(y.data<float>());
  }
  set_flops(state, s, n);
}

void bm_dense_cpu(benchmark::State& state, ConvShape s, int64_t n) {
  cpu::blas_init_threading();
  const Tensor w = random_weight(s, Device::cpu()).decode();
  const Tensor x = input(s, n);
  Tensor y = Tensor::empty({n, s.co, s.hw, s.hw});
  Tensor no_bias;
  const Conv2dParams p{1, 1, int(s.k / 2), int(s.k / 2)};
  for (auto _ : state) {
    cpu::conv2d_forward(x, w, no_bias, p, y);
    benchmark::DoNotOptimize(y.data<float>());
  }
  set_flops(state, s, n);
}

// ---- GPU ----------------------------------------------------------------------------

#ifdef TTQ_HAS_CUDA
cudaStream_t stream() { return static_cast<cudaStream_t>(cuda::current_stream()); }

// Times `body` with CUDA events, L2 flushed before each iteration.
template <class F>
void timed_loop(benchmark::State& state, F&& body) {
  static Tensor flush = Tensor::empty({256 << 20}, DType::U8, Device::cuda(0));
  cudaEvent_t start, stop;
  TTQ_CUDA_CHECK(cudaEventCreate(&start));
  TTQ_CUDA_CHECK(cudaEventCreate(&stop));
  body();  // warm-up
  for (auto _ : state) {
    TTQ_CUDA_CHECK(cudaMemsetAsync(flush.raw_data(), 0, flush.nbytes(), stream()));
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

void bm_packed_cuda(benchmark::State& state, ConvShape s, int64_t n, kernels::CudaPath path) {
  if (path == kernels::CudaPath::TensorCore && !kernels::packed_conv_tensor_cores_supported()) {
    state.SkipWithError("no tensor-core support");
    return;
  }
  const Device dev = Device::cuda(0);
  const kernels::PackedConvWeight w = random_weight(s, dev);
  const Tensor xc = input(s, n);
  const Tensor x = xc.to(dev);
  kernels::PackedConvOptions o;
  o.pad = static_cast<int>(s.k / 2);
  o.cuda_path = path;
  Tensor y = Tensor::empty({n, s.co, s.hw, s.hw}, DType::F32, dev);
  kernels::packed_conv2d_out(x, w, o, y);
  const double tol = path == kernels::CudaPath::TensorCore ? 3e-3 : 1e-5;
  if (rel_error(y.to(Device::cpu()), dense_cpu(s, xc, w.decode().to(Device::cpu()))) > tol) {
    state.SkipWithError("packed CUDA conv disagrees with the dense conv");
    return;
  }
  timed_loop(state, [&] { kernels::packed_conv2d_out(x, w, o, y); });
  set_flops(state, s, n);
}

void bm_cudnn_fp32(benchmark::State& state, ConvShape s, int64_t n) {
  const Device dev = Device::cuda(0);
  const Tensor w = random_weight(s, Device::cpu()).decode().to(dev);
  const Tensor x = input(s, n, dev);
  Tensor y = Tensor::empty({n, s.co, s.hw, s.hw}, DType::F32, dev);
  Tensor no_bias;
  const Conv2dParams p{1, 1, int(s.k / 2), int(s.k / 2)};
  timed_loop(state, [&] { cuda::conv2d_forward(x, w, no_bias, p, y); });
  set_flops(state, s, n);
}

// cuDNN with half tensors (NCHW), fp32 accumulation, tensor-op math; the fastest
// algorithm cudnnFind reports.
void bm_cudnn_fp16(benchmark::State& state, ConvShape s, int64_t n) {
  const Device dev = Device::cuda(0);
  cuda::DeviceGuard guard(dev);
  auto to_half = [&](const Tensor& t) {
    const std::vector<float> v = t.to_vector<float>();
    std::vector<__half> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = __float2half(v[i]);
    Tensor out = Tensor::empty(t.shape(), DType::F16, dev);
    cuda::memcpy(out.raw_data(), h.data(), h.size() * 2, cuda::CopyKind::HostToDevice);
    return out;
  };
  const Tensor w = to_half(random_weight(s, Device::cpu()).decode());
  const Tensor x = to_half(input(s, n));
  Tensor y = Tensor::empty({n, s.co, s.hw, s.hw}, DType::F16, dev);
  cudnnHandle_t h = cuda::cudnn_handle();
  cudnnTensorDescriptor_t xd, yd;
  cudnnFilterDescriptor_t wd;
  cudnnConvolutionDescriptor_t cd;
  TTQ_CUDNN_CHECK(cudnnCreateTensorDescriptor(&xd));
  TTQ_CUDNN_CHECK(cudnnCreateTensorDescriptor(&yd));
  TTQ_CUDNN_CHECK(cudnnCreateFilterDescriptor(&wd));
  TTQ_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&cd));
  TTQ_CUDNN_CHECK(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_HALF, int(n), int(s.ci),
                                             int(s.hw), int(s.hw)));
  TTQ_CUDNN_CHECK(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_HALF, int(n), int(s.co),
                                             int(s.hw), int(s.hw)));
  TTQ_CUDNN_CHECK(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_HALF, CUDNN_TENSOR_NCHW, int(s.co), int(s.ci),
                                             int(s.k), int(s.k)));
  TTQ_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(cd, int(s.k / 2), int(s.k / 2), 1, 1, 1, 1,
                                                  CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  TTQ_CUDNN_CHECK(cudnnSetConvolutionMathType(cd, CUDNN_TENSOR_OP_MATH));
  const size_t ws_bytes = size_t(256) << 20;
  void* ws = cuda::workspace(ws_bytes);
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int found = 0;
  TTQ_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, xd, x.raw_data(), wd, w.raw_data(), cd, yd,
                                                         y.raw_data(), CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                         &found, perf, ws, ws_bytes));
  int pick = -1;
  for (int i = 0; i < found && pick < 0; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= ws_bytes) pick = i;
  if (pick < 0) {
    state.SkipWithError("cuDNN found no fp16 algorithm");
  } else {
    TTQ_CUDNN_CHECK(cudnnSetConvolutionMathType(cd, perf[pick].mathType));
    const float one = 1, zero = 0;
    timed_loop(state, [&] {
      TTQ_CUDNN_CHECK(cudnnConvolutionForward(h, &one, xd, x.raw_data(), wd, w.raw_data(), cd,
                                              perf[pick].algo, ws, perf[pick].memory, &zero, yd,
                                              y.raw_data()));
    });
    state.SetLabel("algo " + std::to_string(int(perf[pick].algo)));
    set_flops(state, s, n);
  }
  cudnnDestroyTensorDescriptor(xd);
  cudnnDestroyTensorDescriptor(yd);
  cudnnDestroyFilterDescriptor(wd);
  cudnnDestroyConvolutionDescriptor(cd);
}
#endif  // TTQ_HAS_CUDA

void register_all() {
  static const std::vector<ConvShape> shapes = conv_shapes();
  for (int64_t n : {1, 32}) {
    for (const ConvShape& s : shapes) {
      const std::string base = "/" + s.name() + "/n" + std::to_string(n) + "/" + s.models;
      benchmark::RegisterBenchmark(("packed_cpu" + base).c_str(), bm_packed_cpu, s, n, kernels::CpuIsa::Auto)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("dense_cpu" + base).c_str(), bm_dense_cpu, s, n)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      // Each micro-kernel by name (packed_cpu is the one Auto picks).
      benchmark::RegisterBenchmark(("packed_avx2_cpu" + base).c_str(), bm_packed_cpu, s, n,
                                   kernels::CpuIsa::Avx2)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      if (n == 1) {
        benchmark::RegisterBenchmark(("packed_scalar_cpu" + base).c_str(), bm_packed_cpu, s, n,
                                     kernels::CpuIsa::Scalar)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
      }
      benchmark::RegisterBenchmark(("packed_bnrelu_cpu" + base).c_str(), bm_packed_bnrelu_cpu, s, n)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("dense_bnrelu_cpu" + base).c_str(), bm_dense_bnrelu_cpu, s, n)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
  }
#ifdef TTQ_HAS_CUDA
  if (!cuda::available()) return;
  for (int64_t n : {1, 32}) {
    for (const ConvShape& s : shapes) {
      const std::string base = "/" + s.name() + "/n" + std::to_string(n) + "/" + s.models;
      benchmark::RegisterBenchmark(("packed_tc_cuda" + base).c_str(), bm_packed_cuda, s, n,
                                   kernels::CudaPath::TensorCore)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(("packed_simt_cuda" + base).c_str(), bm_packed_cuda, s, n,
                                   kernels::CudaPath::Simt)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(("cudnn_fp32_cuda" + base).c_str(), bm_cudnn_fp32, s, n)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(("cudnn_fp16_cuda" + base).c_str(), bm_cudnn_fp16, s, n)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
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
