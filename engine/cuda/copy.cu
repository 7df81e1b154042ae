// CUDA copy (any strides, dtype conversion; a same-dtype contiguous copy is one
// cudaMemcpyAsync) and fill. CPU twin: engine/cpu/copy.cpp; tested against it by
// tests/test_backend_ops.cpp.
//
// Every kernel is a functor over the flat row-major index run by
// launch_elementwise(); views are read through StridedIndex when any operand
// is not contiguous, through the identity otherwise.
#include "engine/backend.h"
#include "engine/cuda/launch.cuh"

namespace ttq::cuda {

namespace {

template <class T, class IX>
struct Fill {
  T* p;
  T v;
  IX pi;
  __device__ void operator()(int64_t i) const { p[pi(i)] = v; }
};

template <class S, class D, class IX>
struct Convert {
  const S* s;
  D* d;
  IX si, di;
  __device__ void operator()(int64_t i) const { d[di(i)] = static_cast<D>(s[si(i)]); }
};

template <class F>
void dispatch_any(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::U8: f(uint8_t{}); break;
    case DType::I32: f(int32_t{}); break;
    case DType::I64: f(int64_t{}); break;
    default: TTQ_THROW() << what << ": unsupported dtype " << dtype_name(t);
  }
}

// Raw 2-byte elements (F16 / BF16 copies between equal dtypes).
const uint16_t* ptr16(const Tensor& t) {
  return static_cast<const uint16_t*>(t.storage()->data()) + t.offset();
}

}  // namespace

// ---- backend entries -------------------------------------------------------------

void fill(Tensor& t, double value) {
  if (t.numel() == 0) return;
  DeviceGuard g(t);
  dispatch_any(t.dtype(), "cuda::fill", [&](auto tag) {
    using T = decltype(tag);
    const T v = static_cast<T>(value);
    if (t.is_contiguous()) {
      launch_elementwise(t.numel(), stream(), Fill<T, ContiguousIndex>{t.data<T>(), v, {}});
    } else {
      launch_elementwise(t.numel(), stream(), Fill<T, StridedIndex>{t.data<T>(), v, index_of(t)});
    }
  });
}

void copy(const Tensor& src, Tensor& dst) {
  TTQ_CHECK(src.shape() == dst.shape())
      << "cuda::copy: shapes " << shape_str(src.shape()) << " and " << shape_str(dst.shape()) << " differ";
  if (dst.numel() == 0) return;
  DeviceGuard g(dst);
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    if (src.raw_data() != dst.raw_data())
      TTQ_CUDA_CHECK(
          cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(), cudaMemcpyDeviceToDevice, stream()));
    return;
  }
  if ((src.dtype() == DType::F16 || src.dtype() == DType::BF16) && src.dtype() == dst.dtype()) {
    auto* d = static_cast<uint16_t*>(dst.storage()->data()) + dst.offset();
    launch_elementwise(
        dst.numel(), stream(),
        Convert<uint16_t, uint16_t, StridedIndex>{ptr16(src), d, index_of(src), index_of(dst)});
    return;
  }
  dispatch_any(src.dtype(), "cuda::copy", [&](auto s0) {
    using S = decltype(s0);
    dispatch_any(dst.dtype(), "cuda::copy", [&](auto d0) {
      using D = decltype(d0);
      if (src.is_contiguous() && dst.is_contiguous()) {
        launch_elementwise(dst.numel(), stream(),
                           Convert<S, D, ContiguousIndex>{src.data<S>(), dst.data<D>(), {}, {}});
      } else {
        launch_elementwise(
            dst.numel(), stream(),
            Convert<S, D, StridedIndex>{src.data<S>(), dst.data<D>(), index_of(src), index_of(dst)});
      }
    });
  });
}

}  // namespace ttq::cuda
