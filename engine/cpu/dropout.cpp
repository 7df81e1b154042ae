// CPU inverted dropout. The mask comes from the counter-based generator in
// engine/rng.h (element i draws uniform_f32(seed, offset + i)), so the CUDA
// twin produces the same mask. Reference: the DROPOUT cases and the dropout
// statistics test of tests/test_backend_ops.cpp.
#include "engine/backend.h"
#include "engine/rng.h"

namespace ttq::cpu {

namespace {
// p == 1 drops everything; the scale is then irrelevant and kept finite.
inline double keep_scale(double p) { return p < 1.0 ? 1.0 / (1.0 - p) : 0.0; }
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
#pragma omp parallel for simd if (n > (1 << 14))
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t keep = rng::uniform_f32(seed, offset + static_cast<uint64_t>(i)) >= pf ? 1 : 0;
      mp[i] = keep;
      yp[i] = keep ? xp[i] * scale : T(0);
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
    for (int64_t i = 0; i < n; ++i) o[i] = mp[i] ? gp[i] * scale : T(0);
  });
}

}  // namespace ttq::cpu
