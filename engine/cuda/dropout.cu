// CUDA inverted dropout. The mask comes from the counter-based generator of
// engine/rng.h, the same draw as the CPU twin's (engine/cpu/dropout.cpp), so both
// produce the same mask; tested against it by the DROPOUT cases of
// tests/test_backend_ops.cpp.
//
// Every kernel is a functor over the flat row-major index run by
// launch_elementwise(); views are read through StridedIndex when any operand
// is not contiguous, through the identity otherwise.
#include "engine/backend.h"
#include "engine/cuda/launch.cuh"
#include "engine/rng.h"

namespace ttq::cuda {

namespace {

// mask[i] = uniform(seed, offset + i) >= p, the same draw as the CPU's (engine/rng.h).
template <class T, class M, class IX>
struct DropoutForward {
  const T* x;
  T* y;
  M* mask;
  float p;
  T scale;
  uint64_t seed, offset;
  IX xi, yi, mi;
  __device__ void operator()(int64_t i) const {
    const bool keep = rng::uniform_f32(seed, offset + static_cast<uint64_t>(i)) >= p;
    mask[mi(i)] = keep ? M(1) : M(0);
    y[yi(i)] = keep ? x[xi(i)] * scale : T(0);
  }
};

template <class T, class M, class IX>
struct DropoutBackward {
  const T* gy;
  const M* mask;
  T* gx;
  T scale;
  IX gyi, mi, gxi;
  __device__ void operator()(int64_t i) const {
    gx[gxi(i)] = mask[mi(i)] != M(0) ? gy[gyi(i)] * scale : T(0);
  }
};

}  // namespace

// ---- backend entries -------------------------------------------------------------

void dropout_forward(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y, Tensor& mask) {
  DeviceGuard g(x);
  TTQ_CHECK(mask.dtype() == x.dtype() || mask.dtype() == DType::U8)
      << "cuda::dropout_forward: mask dtype " << dtype_name(mask.dtype());
  dispatch_float(x.dtype(), "cuda::dropout_forward", [&](auto tag) {
    using T = decltype(tag);
    // p >= 1 drops everything; the select above avoids 0 * inf.
    const T scale = p < 1 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    const float pf = static_cast<float>(p);
    auto run = [&](auto mtag) {
      using M = decltype(mtag);
      if (all_contiguous({&x, &y, &mask})) {
        launch_elementwise(
            y.numel(), stream(),
            DropoutForward<T, M, ContiguousIndex>{
                x.data<T>(), y.data<T>(), mask.data<M>(), pf, scale, seed, offset, {}, {}, {}});
      } else {
        launch_elementwise(
            y.numel(), stream(),
            DropoutForward<T, M, StridedIndex>{x.data<T>(), y.data<T>(), mask.data<M>(), pf, scale, seed,
                                               offset, index_of(x), index_of(y), index_of(mask)});
      }
    };
    if (mask.dtype() == DType::U8) {
      run(uint8_t{});
    } else {
      run(T{});
    }
  });
}

void dropout_backward(const Tensor& gy, const Tensor& mask, double p, Tensor& gx) {
  DeviceGuard g(gy);
  TTQ_CHECK(mask.dtype() == gy.dtype() || mask.dtype() == DType::U8)
      << "cuda::dropout_backward: mask dtype " << dtype_name(mask.dtype());
  dispatch_float(gy.dtype(), "cuda::dropout_backward", [&](auto tag) {
    using T = decltype(tag);
    const T scale = p < 1 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    auto run = [&](auto mtag) {
      using M = decltype(mtag);
      if (all_contiguous({&gy, &mask, &gx})) {
        launch_elementwise(gx.numel(), stream(),
                           DropoutBackward<T, M, ContiguousIndex>{
                               gy.data<T>(), mask.data<M>(), gx.data<T>(), scale, {}, {}, {}});
      } else {
        launch_elementwise(
            gx.numel(), stream(),
            DropoutBackward<T, M, StridedIndex>{gy.data<T>(), mask.data<M>(), gx.data<T>(), scale,
                                                index_of(gy), index_of(mask), index_of(gx)});
      }
    };
    if (mask.dtype() == DType::U8) {
      run(uint8_t{});
    } else {
      run(T{});
    }
  });
}

}  // namespace ttq::cuda
