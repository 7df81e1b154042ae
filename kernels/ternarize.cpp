// Threshold ternarization: the naive reference, the fast CPU twin and the
// tensor entry. The CUDA twin is kernels/ternarize.cu; tests in
// tests/test_ternarize.cpp.
#include "kernels/ternarize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/cuda/runtime.h"
#include "kernels/packed_format.h"

namespace ttq::kernels {

// ---- reference ----------------------------------------------------------------

float ternarize_delta_ref(const float* w, int64_t n, float t) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    float a = std::fabs(w[i]);
    if (a > m) m = a;
  }
  return t * m;
}

float ternarize_ref(const float* w, int64_t n, float t, float wp, float wn, float* wq, uint8_t* codes,
                    uint8_t* packed, TernaryCounts* counts) {
  const float delta = ternarize_delta_ref(w, n, t);
  TernaryCounts c;
  if (packed != nullptr) std::memset(packed, 0, static_cast<size_t>((n + 3) / 4));
  for (int64_t i = 0; i < n; ++i) {
    uint8_t code;
    float value;
    if (w[i] > delta) {
      code = 1;
      value = wp;
      c.pos++;
    } else if (w[i] < -delta) {
      code = 2;
      value = -wn;
      c.neg++;
    } else {
      code = 0;
      value = 0.0f;
      c.zero++;
    }
    if (wq != nullptr) wq[i] = value;
    if (codes != nullptr) codes[i] = code;
    if (packed != nullptr) packed[i / 4] = static_cast<uint8_t>(packed[i / 4] | (code << (2 * (i % 4))));
  }
  if (counts != nullptr) *counts = c;
  return delta;
}

// ---- fast CPU twin --------------------------------------------------------------

namespace {
constexpr int64_t kParallelMin = int64_t(1) << 15;  // below this, threads cost more than they save
constexpr int64_t kTile = 2048;                     // 8 KiB of W: the passes over a tile run from L1
static_assert(kTile % packed::kCodesPerByte == 0, "packed bytes never straddle tiles");

// The tile loops are compiled twice, for AVX2 and for the x86-64-v2 baseline;
// the loader picks one (ifunc). Each is a plain loop the compiler vectorises.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TTQ_TILE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define TTQ_TILE_CLONES
#endif

TTQ_TILE_CLONES float tile_max_abs(const float* __restrict w, int64_t len) {
  float m = 0.0f;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < len; ++j) m = std::max(m, std::fabs(w[j]));
  return m;
}

TTQ_TILE_CLONES void tile_wq(const float* __restrict w, int64_t len, float delta, float wp, float wn,
                             float* __restrict wq) {
  const float neg = -wn;
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const float a = w[j];
    wq[j] = a > delta ? wp : (a < -delta ? neg : 0.0f);
  }
}

// |P| and |N| of a tile (int32: a tile is far below 2^31 elements).
TTQ_TILE_CLONES void tile_counts(const float* __restrict w, int64_t len, float delta, int32_t* np,
                                 int32_t* nn) {
  int32_t p = 0, q = 0;
#pragma omp simd reduction(+ : p, q)
  for (int64_t j = 0; j < len; ++j) {
    p += w[j] > delta;
    q += w[j] < -delta;
  }
  *np = p;
  *nn = q;
}

TTQ_TILE_CLONES void tile_codes(const float* __restrict w, int64_t len, float delta,
                                uint8_t* __restrict codes) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) codes[j] = packed::code_of(w[j], delta);
}
}  // namespace

float max_abs_cpu(const float* w, int64_t n) {
  const int64_t ntiles = (n + kTile - 1) / kTile;
  float m = 0.0f;
  if (n <= kParallelMin) {  // no OpenMP region: its start-up costs more than a small layer
    for (int64_t tile = 0; tile < ntiles; ++tile)
      m = std::max(m, tile_max_abs(w + tile * kTile, std::min(kTile, n - tile * kTile)));
    return m;
  }
#pragma omp parallel for reduction(max : m) schedule(static)
  for (int64_t tile = 0; tile < ntiles; ++tile)
    m = std::max(m, tile_max_abs(w + tile * kTile, std::min(kTile, n - tile * kTile)));
  return m;
}

namespace {
// The fused pass over one tile; returns |P| and |N| when counting.
inline void ternarize_tile(const float* w, int64_t n, int64_t tile, float delta, float wp, float wn,
                           float* wq, uint8_t* codes, uint8_t* packed, bool count, int64_t& np, int64_t& nn) {
  const int64_t b = tile * kTile;
  const int64_t len = std::min(kTile, n - b);
  if (wq != nullptr) tile_wq(w + b, len, delta, wp, wn, wq + b);
  if (count) {
    int32_t p = 0, q = 0;
    tile_counts(w + b, len, delta, &p, &q);
    np += p;
    nn += q;
  }
  if (codes == nullptr && packed == nullptr) return;
  alignas(64) uint8_t local[kTile];
  uint8_t* c = codes != nullptr ? codes + b : local;
  tile_codes(w + b, len, delta, c);
  if (packed == nullptr) return;
  uint8_t* out = packed + b / packed::kCodesPerByte;
  const int64_t full = len / 4;
  for (int64_t k = 0; k < full; ++k)
    out[k] = packed::pack4(c[4 * k], c[4 * k + 1], c[4 * k + 2], c[4 * k + 3]);
  if (len % 4 != 0) {  // the last byte of the tensor: padding codes are 0
    uint8_t last[4] = {0, 0, 0, 0};
    for (int64_t j = 4 * full; j < len; ++j) last[j - 4 * full] = c[j];
    out[full] = packed::pack4(last[0], last[1], last[2], last[3]);
  }
}
}  // namespace

float ternarize_cpu(const float* w, int64_t n, float t, float wp, float wn, float* wq, uint8_t* codes,
                    uint8_t* packed, TernaryCounts* counts) {
  // Max is exact whatever the order, so delta has the same bits as the reference.
  const float delta = t * max_abs_cpu(w, n);
  const int64_t ntiles = (n + kTile - 1) / kTile;
  const bool count = counts != nullptr;
  int64_t np = 0, nn = 0;
  if (n <= kParallelMin) {
    for (int64_t tile = 0; tile < ntiles; ++tile)
      ternarize_tile(w, n, tile, delta, wp, wn, wq, codes, packed, count, np, nn);
  } else {
#pragma omp parallel for reduction(+ : np, nn) schedule(static)
    for (int64_t tile = 0; tile < ntiles; ++tile)
      ternarize_tile(w, n, tile, delta, wp, wn, wq, codes, packed, count, np, nn);
  }
  if (counts != nullptr) {
    counts->pos = np;
    counts->neg = nn;
    counts->zero = n - np - nn;
  }
  return delta;
}

// ---- tensor entry ---------------------------------------------------------------

TernarizeResult ternarize(const Tensor& latent, double t, const Tensor& wp, const Tensor& wn,
                          TernarizeOutputs outputs) {
  TTQ_CHECK(latent.defined() && wp.defined() && wn.defined()) << "ternarize: undefined input";
  check_dtype(latent, DType::F32, "ternarize latent");
  check_dtype(wp, DType::F32, "ternarize wp");
  check_dtype(wn, DType::F32, "ternarize wn");
  TTQ_CHECK(wp.numel() == 1 && wn.numel() == 1) << "ternarize: wp and wn must hold one element, got "
                                                << shape_str(wp.shape()) << " and " << shape_str(wn.shape());
  check_same_device(latent, wp, "ternarize");
  check_same_device(latent, wn, "ternarize");
  TTQ_CHECK(t >= 0.0 && t <= 1.0) << "ternarize: threshold factor t = " << t << " outside [0, 1]";

  const Device dev = latent.device();
  const Tensor w = latent.contiguous();
  const int64_t n = w.numel();
  TernarizeResult r;
  if (outputs.wq) r.wq = Tensor::empty(latent.shape(), DType::F32, dev);
  if (outputs.codes) r.codes = Tensor::empty(latent.shape(), DType::U8, dev);
  if (outputs.packed) r.packed = Tensor::empty({packed::packed_bytes(n)}, DType::U8, dev);
  r.delta = Tensor::empty({1}, DType::F32, dev);
  const float tf = static_cast<float>(t);
  float* wq_p = outputs.wq ? r.wq.data<float>() : nullptr;
  uint8_t* codes_p = outputs.codes ? r.codes.data<uint8_t>() : nullptr;
  uint8_t* packed_p = outputs.packed ? r.packed.data<uint8_t>() : nullptr;

  if (dev.is_cpu()) {
    TernaryCounts c;
    r.delta.data<float>()[0] = ternarize_cpu(w.data<float>(), n, tf, wp.data<float>()[0], wn.data<float>()[0],
                                             wq_p, codes_p, packed_p, &c);
    if (outputs.counts) r.counts = Tensor::from_vector<int64_t>({c.pos, c.neg, c.zero}, {3});
    return r;
  }
#ifdef TTQ_HAS_CUDA
  if (outputs.counts) r.counts = Tensor::empty({3}, DType::I64, dev);
  Tensor workspace = Tensor::empty({static_cast<int64_t>(ternarize_cuda_workspace(n))}, DType::U8, dev);
  ternarize_cuda(w.data<float>(), n, tf, wp.data<float>(), wn.data<float>(), wq_p, codes_p, packed_p,
                 r.delta.data<float>(), outputs.counts ? r.counts.data<int64_t>() : nullptr,
                 workspace.raw_data(), static_cast<cudaStream_t>(cuda::current_stream()));
  return r;
#else
  TTQ_THROW() << "ternarize: this build has no CUDA backend";
#endif
}

TernaryCounts counts_of(const TernarizeResult& r) {
  TTQ_CHECK(r.counts.defined()) << "counts_of: counts were not requested";
  std::vector<int64_t> v = r.counts.to_vector<int64_t>();
  TernaryCounts c;
  c.pos = v[0];
  c.neg = v[1];
  c.zero = v[2];
  return c;
}

void clamp_min_(Tensor& x, float lo) {
  TTQ_CHECK(x.defined()) << "clamp_min_: undefined tensor";
  check_dtype(x, DType::F32, "clamp_min_");
  TTQ_CHECK(x.is_contiguous()) << "clamp_min_: " << x.str() << " is not contiguous";
  const int64_t n = x.numel();
  if (x.device().is_cpu()) {
    float* p = x.data<float>();
    // fmax returns lo for NaN, so a diverged scale is reset rather than kept.
    for (int64_t i = 0; i < n; ++i) p[i] = std::fmax(p[i], lo);
    return;
  }
#ifdef TTQ_HAS_CUDA
  clamp_min_cuda(x.data<float>(), n, lo, static_cast<cudaStream_t>(cuda::current_stream()));
#else
  TTQ_THROW() << "clamp_min_: this build has no CUDA backend";
#endif
}

}  // namespace ttq::kernels
