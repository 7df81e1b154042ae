// CPU inverted dropout. The mask comes from the counter-based generator in
// engine/rng.h (element i draws uniform_f32(seed, offset + i)), so the CUDA
// twin (engine/cuda/dropout.cu) produces the same mask. Reference: the DROPOUT cases and the dropout
// statistics test of tests/test_backend_ops.cpp.
#include <algorithm>
#include <type_traits>

#include "engine/backend.h"
#include "engine/rng.h"

namespace ttq::cpu {

namespace {
// p == 1 drops everything; the scale is then irrelevant and kept finite.
inline double keep_scale(double p) { return p < 1.0 ? 1.0 / (1.0 - p) : 0.0; }

// The mask costs three 64-bit multiplies per element (SplitMix64 twice): only
// AVX-512DQ has a vector 64-bit multiply, so the float path carries an
// x86-64-v4 clone beside the AVX2 and baseline ones (integer math: same bits).
template <class T>
inline __attribute__((always_inline)) void dropout_block(const T* x, int64_t n, uint64_t seed,
                                                         uint64_t offset, float pf, T scale, T* y,
                                                         uint8_t* mask) {
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t keep = rng::uniform_f32(seed, offset + static_cast<uint64_t>(i)) >= pf ? 1 : 0;
    const T v = x[i];  // loaded unconditionally so the select if-converts
    mask[i] = keep;
    y[i] = keep ? v * scale : T(0);
  }
}

__attribute__((target_clones("arch=x86-64-v4", "avx2", "default"))) void dropout_block_f32(
    const float* x, int64_t n, uint64_t seed, uint64_t offset, float pf, float scale, float* y,
    uint8_t* mask) {
  dropout_block(x, n, seed, offset, pf, scale, y, mask);
}

template <class T>
void dropout_rows(const T* x, int64_t n, uint64_t seed, uint64_t offset, float pf, T scale, T* y,
                  uint8_t* mask) {
  if constexpr (std::is_same_v<T, float>) {
    dropout_block_f32(x, n, seed, offset, pf, scale, y, mask);
  } else {
    dropout_block(x, n, seed, offset, pf, scale, y, mask);
  }
}
}  // namespace

void dropout_forward(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y, Tensor& mask) {
  TTQ_CHECK(mask.dtype() == DType::U8 && mask.is_contiguous() && y.is_contiguous())
      << "dropout_forward: contiguous y and U8 mask expected";
  const Tensor xc = x.contiguous();
  const float pf = static_cast<float>(p);
  dispatch_float(x.dtype(), "dropout_forward", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = xc.data<T>();
    T* yp = y.data<T>();
    uint8_t* mp = mask.data<uint8_t>();
    const T scale = static_cast<T>(keep_scale(p));
    const int64_t n = y.numel();
    constexpr int64_t kBlock = 1 << 13;
    const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n > (1 << 14))
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * kBlock, len = std::min(kBlock, n - i0);
      dropout_rows(xp + i0, len, seed, offset + static_cast<uint64_t>(i0), pf, scale, yp + i0, mp + i0);
    }
  });
}

void dropout_backward(const Tensor& gy, const Tensor& mask, double p, Tensor& gx) {
  const Tensor gc = gy.contiguous(), mc = mask.contiguous();
  dispatch_float(gy.dtype(), "dropout_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = gc.data<T>();
    const uint8_t* mp = mc.data<uint8_t>();
    T* o = gx.data<T>();
    const T scale = static_cast<T>(keep_scale(p));
    const int64_t n = gx.numel();
#pragma omp parallel for simd if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) {
      const T g = gp[i];
      o[i] = mp[i] ? g * scale : T(0);
    }
  });
}

}  // namespace ttq::cpu
