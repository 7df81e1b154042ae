// Scale and latent gradients of the ternary weight: the naive reference, the
// fast CPU twin and the tensor entry. CUDA twin: kernels/scale_grad.cu; tests:
// tests/test_scale_grad.cpp.
#include "kernels/scale_grad.h"

#include <algorithm>
#include <string>
#include <vector>

#include "engine/cuda/runtime.h"

namespace ttq::kernels {

const char* wn_grad_mode_name(WnGradMode m) { return m == WnGradMode::Seed ? "seed" : "exact"; }

WnGradMode parse_wn_grad_mode(std::string_view s) {
  if (s == "exact") return WnGradMode::Exact;
  if (s == "seed") return WnGradMode::Seed;
  TTQ_INPUT_ERROR() << "--wn-grad: expected 'exact' or 'seed', got '" << std::string(s) << "'";
}

// ---- reference ----------------------------------------------------------------

void scale_grad_ref(const float* g, const float* w, int64_t n, float delta, float wp, float wn,
                    WnGradMode mode, float* gw, double* gwp, double* gwn) {
  double sum_p = 0.0, sum_n = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    float scale;
    if (w[i] > delta) {
      sum_p += g[i];
      scale = wp;
    } else if (w[i] < -delta) {
      sum_n += g[i];
      scale = wn;
    } else {
      scale = 1.0f;
    }
    if (gw != nullptr) gw[i] = scale * g[i];
  }
  *gwp = sum_p;
  *gwn = mode == WnGradMode::Exact ? -sum_n : sum_n;
}

// ---- fast CPU twin --------------------------------------------------------------

namespace {
constexpr int64_t kParallelMin = int64_t(1) << 15;
constexpr int64_t kTile = 4096;

// Compiled for AVX2 and for the x86-64-v2 baseline; the loader picks one (ifunc).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TTQ_TILE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define TTQ_TILE_CLONES
#endif

TTQ_TILE_CLONES void tile_latent_grad(const float* __restrict g, const float* __restrict w, int64_t len,
                                      float delta, float wp, float wn, float* __restrict gw) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const float a = w[i];
    gw[i] = (a > delta ? wp : (a < -delta ? wn : 1.0f)) * g[i];
  }
}

// Sums of G over P and N of a tile, in double. The selects run in float and
// feed kLanes independent double accumulators per set: one vector accumulator
// would leave the loop bound by the add latency, and a select on the converted
// value does not vectorise. The combination order is fixed.
constexpr int kLanes = 16;
TTQ_TILE_CLONES void tile_sums(const float* __restrict g, const float* __restrict w, int64_t len, float delta,
                               double* sum_p, double* sum_n) {
  double ap[kLanes] = {}, an[kLanes] = {};
  const int64_t full = len / kLanes * kLanes;
  for (int64_t i = 0; i < full; i += kLanes) {
    float tp[kLanes], tn[kLanes];
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      const float a = w[i + k], gi = g[i + k];
      tp[k] = a > delta ? gi : 0.0f;
      tn[k] = a < -delta ? gi : 0.0f;
    }
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      ap[k] += static_cast<double>(tp[k]);
      an[k] += static_cast<double>(tn[k]);
    }
  }
  for (int64_t i = full; i < len; ++i) {
    ap[i - full] += static_cast<double>(w[i] > delta ? g[i] : 0.0f);
    an[i - full] += static_cast<double>(w[i] < -delta ? g[i] : 0.0f);
  }
  double sp = 0.0, sn = 0.0;
  for (int k = 0; k < kLanes; ++k) {
    sp += ap[k];
    sn += an[k];
  }
  *sum_p = sp;
  *sum_n = sn;
}
}  // namespace

void scale_grad_cpu(const float* g, const float* w, int64_t n, float delta, float wp, float wn,
                    WnGradMode mode, float* gw, double* gwp, double* gwn) {
  const int64_t ntiles = (n + kTile - 1) / kTile;
  // Per-tile partial sums, combined in tile order below: the result does not
  // depend on the thread count. Small layers keep them on the stack and skip
  // the OpenMP region, whose start-up costs more than their whole pass.
  constexpr int64_t kStackTiles = kParallelMin / kTile + 1;
  double stack_p[kStackTiles], stack_n[kStackTiles];
  std::vector<double> heap_p, heap_n;
  double* part_p = stack_p;
  double* part_n = stack_n;
  auto tile_pass = [&](int64_t tile) {
    const int64_t b = tile * kTile, len = std::min(kTile, n - b);
    if (gw != nullptr) tile_latent_grad(g + b, w + b, len, delta, wp, wn, gw + b);
    tile_sums(g + b, w + b, len, delta, &part_p[tile], &part_n[tile]);
  };
  if (n <= kParallelMin) {
    for (int64_t tile = 0; tile < ntiles; ++tile) tile_pass(tile);
  } else {
    heap_p.resize(static_cast<size_t>(ntiles));
    heap_n.resize(static_cast<size_t>(ntiles));
    part_p = heap_p.data();
    part_n = heap_n.data();
#pragma omp parallel for schedule(static)
    for (int64_t tile = 0; tile < ntiles; ++tile) tile_pass(tile);
  }
  double sum_p = 0.0, sum_n = 0.0;
  for (int64_t tile = 0; tile < ntiles; ++tile) {
    sum_p += part_p[tile];
    sum_n += part_n[tile];
  }
  *gwp = sum_p;
  *gwn = mode == WnGradMode::Exact ? -sum_n : sum_n;
}

// ---- tensor entry ---------------------------------------------------------------

ScaleGrad scale_grad(const Tensor& grad, const Tensor& latent, const Tensor& delta, const Tensor& wp,
                     const Tensor& wn, WnGradMode mode) {
  TTQ_CHECK(grad.defined() && latent.defined() && delta.defined() && wp.defined() && wn.defined())
      << "scale_grad: undefined input";
  check_same_shape(grad, latent, "scale_grad");
  for (const Tensor* t : {&grad, &latent, &delta, &wp, &wn}) check_dtype(*t, DType::F32, "scale_grad");
  TTQ_CHECK(delta.numel() == 1 && wp.numel() == 1 && wn.numel() == 1)
      << "scale_grad: delta, wp and wn must hold one element each, got " << shape_str(delta.shape()) << ", "
      << shape_str(wp.shape()) << ", " << shape_str(wn.shape());
  for (const Tensor* t : {&latent, &delta, &wp, &wn}) check_same_device(grad, *t, "scale_grad");

  const Device dev = grad.device();
  const Tensor g = grad.contiguous(), w = latent.contiguous();
  const int64_t n = g.numel();
  ScaleGrad r;
  r.latent = Tensor::empty(latent.shape(), DType::F32, dev);
  r.wp = Tensor::empty(wp.shape(), DType::F32, dev);
  r.wn = Tensor::empty(wn.shape(), DType::F32, dev);
  if (dev.is_cpu()) {
    double gwp = 0.0, gwn = 0.0;
    scale_grad_cpu(g.data<float>(), w.data<float>(), n, delta.data<float>()[0], wp.data<float>()[0],
                   wn.data<float>()[0], mode, r.latent.data<float>(), &gwp, &gwn);
    r.wp.data<float>()[0] = static_cast<float>(gwp);
    r.wn.data<float>()[0] = static_cast<float>(gwn);
    return r;
  }
#ifdef TTQ_HAS_CUDA
  Tensor workspace = Tensor::empty({static_cast<int64_t>(scale_grad_cuda_workspace(n))}, DType::U8, dev);
  scale_grad_cuda(g.data<float>(), w.data<float>(), n, delta.data<float>(), wp.data<float>(),
                  wn.data<float>(), mode, r.latent.data<float>(), r.wp.data<float>(), r.wn.data<float>(),
                  workspace.raw_data(), static_cast<cudaStream_t>(cuda::current_stream()));
  return r;
#else
  TTQ_THROW() << "scale_grad: this build has no CUDA backend";
#endif
}

}  // namespace ttq::kernels
