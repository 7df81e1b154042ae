// The W2A8 convolution (kernels/int8_conv.h) against the float packed 2-bit conv
// (kernels/packed_conv.h, packed_conv2d_out) on real layer shapes of the seed models
// (stride 1, pad k/2), batch 1 and 32, one run side by side, same OpenMP threads:
//   float/<shape>/<n>       packed_conv2d_out, F32 in, F32 out, BN affine epilogue;
//   int8_f32/<shape>/<n>    ternary_int8_conv_cpu, int8 in, F32 out (dequantize + the
//                           same affine), the micro-kernel Auto picks;
//   int8_i8/<shape>/<n>     the same with int8 out (requantized: what an int8 network
//                           hands its next layer);
//   int8_f32_<isa>/...      the other micro-kernels this CPU runs, for the record.
// Before timing, the int8 result is checked against the float packed conv on the
// dequantized input (relative error < 1e-5). Counter: GFLOP/s = 2 * N * Co * Ci * k * k
// * H * W / time. Results: docs/int8.md.
#include <benchmark/benchmark.h>

// GCC 12 reports a false -Wrestrict inside std::string concatenations (GCC PR 105329).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "kernels/int8_conv.h"
#include "kernels/pack.h"
#include "kernels/packed_conv.h"

namespace ttq {
namespace {

struct ConvShape {
  std::string model;
  int64_t ci, co, k, hw;
  double zero_fraction;  // of the model's trained TTQ weights (tests/fixtures/seed/README.md)
  std::string name() const {
    return model + "_" + std::to_string(k) + "x" + std::to_string(k) + "_" + std::to_string(ci) + "->" +
           std::to_string(co) + "@" + std::to_string(hw);
  }
  double flops(int64_t n) const { return 2.0 * n * co * ci * k * k * hw * hw; }
};

const std::vector<ConvShape> kShapes = {
    {"densenet_bottleneck", 96, 48, 1, 28, 0.382},   // block 1, layer 5: 1x1 conv
    {"densenet_bottleneck", 168, 48, 1, 14, 0.382},  // block 2, layer 9
    {"densenet_growth", 48, 12, 3, 28, 0.382},       // every 3x3 conv of block 1
    {"densenet_growth", 48, 12, 3, 14, 0.382},       // block 2
    {"squeezenet_expand3x3", 16, 64, 3, 28, 0.641},  // fire 2 / 3
    {"squeezenet_expand3x3", 32, 128, 3, 14, 0.641}  // fire 4 / 5
};

struct Layer {
  kernels::PackedConvWeight packed;
  kernels::Int8ConvWeight int8;
  Tensor xq, xf;  // int8 bytes and their dequantized values
  Tensor scale, shift;
  kernels::Int8Quant x_quant{0.02f, -128}, y_quant{0.05f, 0};
};

Layer make_layer(const ConvShape& s, int64_t n) {
  Layer l;
  Generator g(s.ci * 131 + s.co * 7 + s.k);
  const int64_t numel = s.co * s.ci * s.k * s.k;
  Tensor codes = Tensor::empty({numel}, DType::U8);
  uint8_t* c = codes.data<uint8_t>();
  for (int64_t i = 0; i < numel; ++i)
    c[i] = g.uniform() < s.zero_fraction ? 0 : static_cast<uint8_t>(1 + g.below(2));
  l.packed = kernels::PackedConvWeight::from_codes(kernels::pack_codes(codes), {s.co, s.ci, s.k, s.k}, 1.02f,
                                                   0.97f, Device::cpu());
  l.int8 = kernels::Int8ConvWeight::from_packed(l.packed, Device::cpu());
  l.xq = Tensor::empty({n, s.ci, s.hw, s.hw}, DType::U8);
  uint8_t* x = l.xq.data<uint8_t>();
  for (int64_t i = 0; i < l.xq.numel(); ++i) x[i] = static_cast<uint8_t>(g.below(256));
  l.xf = kernels::dequantize_int8(l.xq, l.x_quant);
  l.scale = Tensor::uniform({s.co}, g, 0.5, 1.5);
  l.shift = Tensor::uniform({s.co}, g, -0.5, 0.5);
  return l;
}

kernels::Int8ConvArgs int8_args(const ConvShape& s, int64_t n, const Layer& l) {
  kernels::Int8ConvArgs a;
  a.shape = {n, s.ci, s.hw, s.hw, s.co, s.k, s.k, 1, static_cast<int>(s.k / 2), 1};
  a.x = reinterpret_cast<const int8_t*>(l.xq.data<uint8_t>());
  a.x_sn = s.ci * s.hw * s.hw;
  a.x_sc = s.hw * s.hw;
  a.x_quant = l.x_quant;
  a.wp = l.int8.wp();
  a.wn = l.int8.wn();
  a.y_sn = s.co * s.hw * s.hw;
  a.y_sc = s.hw * s.hw;
  a.post = {l.scale.data<float>(), l.shift.data<float>(), true};
  a.y_quant = l.y_quant;
  return a;
}

kernels::PackedConvOptions float_options(const ConvShape& s, const Layer& l) {
  kernels::PackedConvOptions o;
  o.pad = static_cast<int>(s.k / 2);
  o.post_scale = l.scale;
  o.post_shift = l.shift;
  o.post_relu = true;
  return o;
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

void bm_float(benchmark::State& state, ConvShape s, int64_t n) {
  const Layer l = make_layer(s, n);
  const kernels::PackedConvOptions o = float_options(s, l);
  Tensor y = Tensor::empty({n, s.co, s.hw, s.hw});
  for (auto _ : state) {
    kernels::packed_conv2d_out(l.xf, l.packed, o, y);
    benchmark::DoNotOptimize(y.data<float>());
  }
  set_flops(state, s, n);
}

void bm_int8(benchmark::State& state, ConvShape s, int64_t n, kernels::Int8Out out, kernels::Int8Isa isa) {
  if (!kernels::int8_isa_supported(isa)) {
    state.SkipWithError("this CPU cannot run the micro-kernel");
    return;
  }
  const Layer l = make_layer(s, n);
  kernels::Int8ConvArgs a = int8_args(s, n, l);
  Tensor y = Tensor::empty({n, s.co, s.hw, s.hw});
  Tensor yq = Tensor::empty({n, s.co, s.hw, s.hw}, DType::U8);
  a.out = kernels::Int8Out::F32;
  a.y = y.data<float>();
  kernels::ternary_int8_conv_cpu(a, l.int8.layout(), isa);
  if (rel_error(y, kernels::packed_conv2d(l.xf, l.packed, float_options(s, l))) > 1e-5) {
    state.SkipWithError("the int8 conv disagrees with the float packed conv");
    return;
  }
  a.out = out;
  a.yq = reinterpret_cast<int8_t*>(yq.data<uint8_t>());
  for (auto _ : state) {
    kernels::ternary_int8_conv_cpu(a, l.int8.layout(), isa);
    benchmark::DoNotOptimize(y.data<float>());
    benchmark::DoNotOptimize(yq.data<uint8_t>());
  }
  set_flops(state, s, n);
}

const int kRegistered = [] {
  using kernels::Int8Isa;
  using kernels::Int8Out;
  for (const ConvShape& s : kShapes) {
    for (int64_t n : {1, 32}) {
      const std::string tail = s.name() + "/" + std::to_string(n);
      benchmark::RegisterBenchmark(("float/" + tail).c_str(), bm_float, s, n)->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(("int8_f32/" + tail).c_str(), bm_int8, s, n, Int8Out::F32, Int8Isa::Auto)
          ->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(("int8_i8/" + tail).c_str(), bm_int8, s, n, Int8Out::Int8, Int8Isa::Auto)
          ->Unit(benchmark::kMicrosecond);
      for (Int8Isa isa : {Int8Isa::AvxVnni, Int8Isa::Avx2}) {
        if (isa == kernels::int8_isa_auto() || !kernels::int8_isa_supported(isa)) continue;
        benchmark::RegisterBenchmark(
            ("int8_f32_" + std::string(kernels::int8_isa_name(isa)) + "/" + tail).c_str(), bm_int8, s, n,
            Int8Out::F32, isa)
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  return 0;
}();

}  // namespace
}  // namespace ttq

BENCHMARK_MAIN();
