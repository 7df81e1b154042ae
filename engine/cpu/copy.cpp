// CPU copy (any strides, dtype conversion) and fill. Views that share a dense
// inner block (a channel slice of an NCHW buffer: concat, narrow) copy block by
// block with memcpy. CUDA twin: engine/cuda/copy.cu. Tested through
// tests/test_tensor.cpp and the CONCAT / NARROW cases of tests/test_backend_ops.cpp.
#include <algorithm>
#include <cstring>

#include "engine/backend.h"
#include "engine/cpu/parallel.h"
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

// Index of the first dimension from which `t` is dense to the end (size-1 dims ignored).
size_t dense_suffix(const Tensor& t) {
  int64_t expected = 1;
  size_t k = t.shape().size();
  while (k > 0) {
    const size_t d = k - 1;
    if (t.shape()[d] != 1 && t.strides()[d] != expected) break;
    expected *= t.shape()[d];
    k = d;
  }
  return k;
}

// Same-dtype copy of views whose trailing dimensions are dense in both: one
// memcpy per inner block. Returns false when the shared block is too small to pay.
bool copy_blocks(const Tensor& src, Tensor& dst) {
  const size_t k = std::max(dense_suffix(src), dense_suffix(dst));
  const Shape& shape = src.shape();
  int64_t inner = 1;
  for (size_t d = k; d < shape.size(); ++d) inner *= shape[d];
  if (inner < 16) return false;
  const Shape outer(shape.begin(), shape.begin() + k);
  const std::vector<int64_t> so(src.strides().begin(), src.strides().begin() + k);
  const std::vector<int64_t> dso(dst.strides().begin(), dst.strides().begin() + k);
  const int64_t blocks = shape_numel(outer);
  std::vector<int64_t> src_off(blocks), dst_off(blocks);
  for_each_offset(outer, so, [&](int64_t i, int64_t o) { src_off[i] = o; });
  for_each_offset(outer, dso, [&](int64_t i, int64_t o) { dst_off[i] = o; });
  const size_t esize = dtype_size(src.dtype());
  const char* s = static_cast<const char*>(src.raw_data());
  char* d = static_cast<char*>(dst.raw_data());
#pragma omp parallel for schedule(static) if (blocks > 1 && blocks * inner >= kParallelElements)
  for (int64_t b = 0; b < blocks; ++b) {
    std::memcpy(d + dst_off[b] * esize, s + src_off[b] * esize, static_cast<size_t>(inner) * esize);
  }
  return true;
}

}  // namespace

void copy(const Tensor& src, Tensor& dst) {
  TTQ_CHECK(src.shape() == dst.shape())
      << "copy: shapes " << shape_str(src.shape()) << " and " << shape_str(dst.shape()) << " differ";
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    if (src.raw_data() != dst.raw_data()) std::memmove(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  if (src.dtype() == dst.dtype() && src.numel() > 0 && src.storage() != dst.storage() &&
      copy_blocks(src, dst)) {
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
        for_each_offset(src.shape(), src.strides(),
                        [&](int64_t i, int64_t o) { d[i] = static_cast<D>(s[o]); });
      } else if (src.is_contiguous()) {
        for_each_offset(dst.shape(), dst.strides(),
                        [&](int64_t i, int64_t o) { d[o] = static_cast<D>(s[i]); });
      } else {
        std::vector<int64_t> soff(src.numel());
        for_each_offset(src.shape(), src.strides(), [&](int64_t i, int64_t o) { soff[i] = o; });
        for_each_offset(dst.shape(), dst.strides(),
                        [&](int64_t i, int64_t o) { d[o] = static_cast<D>(s[soff[i]]); });
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
