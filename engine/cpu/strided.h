// Iteration over strided CPU views: calls f(i, offset) for each element in
// row-major order of `shape`, offset = sum(index[d] * strides[d]).
#pragma once

#include <cstdint>
#include <vector>

namespace ttq::cpu {

template <class F>
void for_each_offset(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides, F&& f) {
  const size_t nd = shape.size();
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  if (n == 0) return;
  if (nd == 0) {
    f(int64_t(0), int64_t(0));
    return;
  }
  std::vector<int64_t> idx(nd, 0);
  int64_t off = 0;
  const int64_t inner = shape[nd - 1], inner_stride = strides[nd - 1];
  for (int64_t i = 0; i < n; i += inner) {
    for (int64_t j = 0; j < inner; ++j) f(i + j, off + j * inner_stride);
    // advance all but the innermost dimension
    for (int64_t d = static_cast<int64_t>(nd) - 2; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= (shape[d] - 1) * strides[d];
      idx[d] = 0;
    }
  }
}

}  // namespace ttq::cpu
