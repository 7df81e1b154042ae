// CPU copy (any strides, dtype conversion) and fill.
#include <cstring>

#include "engine/backend.h"
#include "engine/cpu/strided.h"

namespace ttq::cpu {

namespace {

template <class F>
void dispatch_any(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::U8: f(uint8_t{}); break;
    case DType::I32: f(int32_t{}); break;
    case DType::I64: f(int64_t{}); break;
    default: TTQ_THROW() << "CPU copy/fill: unsupported dtype " << dtype_name(t);
  }
}

}  // namespace

void copy(const Tensor& src, Tensor& dst) {
  TTQ_CHECK(src.shape() == dst.shape()) << "copy: shapes " << shape_str(src.shape()) << " and "
                                        << shape_str(dst.shape()) << " differ";
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    if (src.raw_data() != dst.raw_data()) std::memmove(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  if ((src.dtype() == DType::F16 || src.dtype() == DType::BF16) && src.dtype() == dst.dtype()) {
    // Raw 2-byte copy.
    auto* d = static_cast<uint16_t*>(dst.storage()->data()) + dst.offset();
    auto* s = static_cast<const uint16_t*>(src.storage()->data()) + src.offset();
    std::vector<int64_t> soff(src.numel());
    for_each_offset(src.shape(), src.strides(), [&](int64_t i, int64_t o) { soff[i] = o; });
    for_each_offset(dst.shape(), dst.strides(), [&](int64_t i, int64_t o) { d[o] = s[soff[i]]; });
    return;
  }
  dispatch_any(src.dtype(), [&](auto s0) {
    using S = decltype(s0);
    dispatch_any(dst.dtype(), [&](auto d0) {
      using D = decltype(d0);
      const S* s = src.data<S>();
      D* d = dst.data<D>();
      if (src.is_contiguous() && dst.is_contiguous()) {
        const int64_t n = src.numel();
#pragma omp parallel for if (n > (1 << 16))
        for (int64_t i = 0; i < n; ++i) d[i] = static_cast<D>(s[i]);
      } else if (dst.is_contiguous()) {
        for_each_offset(src.shape(), src.strides(), [&](int64_t i, int64_t o) { d[i] = static_cast<D>(s[o]); });
      } else if (src.is_contiguous()) {
        for_each_offset(dst.shape(), dst.strides(), [&](int64_t i, int64_t o) { d[o] = static_cast<D>(s[i]); });
      } else {
        std::vector<int64_t> soff(src.numel());
        for_each_offset(src.shape(), src.strides(), [&](int64_t i, int64_t o) { soff[i] = o; });
        for_each_offset(dst.shape(), dst.strides(), [&](int64_t i, int64_t o) { d[o] = static_cast<D>(s[soff[i]]); });
      }
    });
  });
}

void fill(Tensor& t, double value) {
  dispatch_any(t.dtype(), [&](auto z) {
    using T = decltype(z);
    T* d = t.data<T>();
    const T v = static_cast<T>(value);
    if (t.is_contiguous()) {
      const int64_t n = t.numel();
#pragma omp parallel for if (n > (1 << 16))
      for (int64_t i = 0; i < n; ++i) d[i] = v;
    } else {
      for_each_offset(t.shape(), t.strides(), [&](int64_t, int64_t o) { d[o] = v; });
    }
  });
}

}  // namespace ttq::cpu
