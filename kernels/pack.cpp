// 2-bit pack / unpack on the CPU and the tensor entries. CUDA twins:
// kernels/pack.cu; layout: kernels/packed_format.h; tests: tests/test_pack.cpp.
#include "kernels/pack.h"

#include <algorithm>
#include <vector>

#include "engine/cuda/runtime.h"
#include "kernels/packed_format.h"

namespace ttq::kernels {

namespace {
constexpr int64_t kParallelMin = int64_t(1) << 16;
}

void pack_codes_ref(const uint8_t* codes, int64_t n, uint8_t* packed) {
  for (int64_t j = 0; j < packed::packed_bytes(n); ++j) packed[j] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t c = codes[i] & 3u;
    packed[i / 4] = static_cast<uint8_t>(packed[i / 4] | (c << (2 * (i % 4))));
  }
}

void pack_codes_cpu(const uint8_t* codes, int64_t n, uint8_t* packed) {
  const int64_t full = n / 4;
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t j = 0; j < full; ++j)
    packed[j] = packed::pack4(codes[4 * j], codes[4 * j + 1], codes[4 * j + 2], codes[4 * j + 3]);
  if (n % 4 != 0) {
    uint8_t c[4] = {0, 0, 0, 0};
    for (int64_t i = 4 * full; i < n; ++i) c[i - 4 * full] = codes[i];
    packed[full] = packed::pack4(c[0], c[1], c[2], c[3]);
  }
}

void unpack_codes_cpu(const uint8_t* packed, int64_t n, uint8_t* codes) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) codes[i] = packed::code_at(packed[packed::byte_of(i)], i);
}

CodeCounts count_codes_cpu(const uint8_t* packed, int64_t n) {
  int64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
#pragma omp parallel for simd reduction(+ : c0, c1, c2, c3) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t c = packed::code_at(packed[packed::byte_of(i)], i);
    c0 += c == 0;
    c1 += c == 1;
    c2 += c == 2;
    c3 += c == 3;
  }
  CodeCounts r;
  r.zero = c0;
  r.pos = c1;
  r.neg = c2;
  r.invalid = c3;
  return r;
}

void decode_packed_cpu(const uint8_t* packed, int64_t n, float wp, float wn, float* values) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i)
    values[i] = packed::value_of(packed::code_at(packed[packed::byte_of(i)], i), wp, wn);
}

// ---- tensor entries ---------------------------------------------------------------

namespace {
void check_packed(const Tensor& packed, int64_t n, const char* what) {
  TTQ_CHECK(packed.defined()) << what << ": undefined packed tensor";
  check_dtype(packed, DType::U8, what);
  TTQ_CHECK(packed.numel() >= packed::packed_bytes(n))
      << what << ": " << packed.numel() << " packed bytes cannot hold " << n << " codes";
}
#ifdef TTQ_HAS_CUDA
cudaStream_t stream() { return static_cast<cudaStream_t>(cuda::current_stream()); }
#endif
}  // namespace

Tensor pack_codes(const Tensor& codes) {
  TTQ_CHECK(codes.defined()) << "pack_codes: undefined input";
  check_dtype(codes, DType::U8, "pack_codes");
  const Tensor c = codes.contiguous();
  const int64_t n = c.numel();
  Tensor out = Tensor::empty({packed::packed_bytes(n)}, DType::U8, c.device());
  if (c.device().is_cpu()) {
    pack_codes_cpu(c.data<uint8_t>(), n, out.data<uint8_t>());
    return out;
  }
#ifdef TTQ_HAS_CUDA
  pack_codes_cuda(c.data<uint8_t>(), n, out.data<uint8_t>(), stream());
  return out;
#else
  TTQ_THROW() << "pack_codes: this build has no CUDA backend";
#endif
}

Tensor unpack_codes(const Tensor& packed, const Shape& shape) {
  const int64_t n = shape_numel(shape);
  check_packed(packed, n, "unpack_codes");
  TTQ_CHECK(packed.numel() == packed::packed_bytes(n))
      << "unpack_codes: " << packed.numel() << " packed bytes for shape " << shape_str(shape) << " (expected "
      << packed::packed_bytes(n) << ")";
  const Tensor p = packed.contiguous();
  Tensor out = Tensor::empty(shape, DType::U8, p.device());
  if (p.device().is_cpu()) {
    unpack_codes_cpu(p.data<uint8_t>(), n, out.data<uint8_t>());
    return out;
  }
#ifdef TTQ_HAS_CUDA
  unpack_codes_cuda(p.data<uint8_t>(), n, out.data<uint8_t>(), stream());
  return out;
#else
  TTQ_THROW() << "unpack_codes: this build has no CUDA backend";
#endif
}

CodeCounts count_codes(const Tensor& packed, int64_t n) {
  check_packed(packed, n, "count_codes");
  const Tensor p = packed.contiguous();
  if (p.device().is_cpu()) return count_codes_cpu(p.data<uint8_t>(), n);
#ifdef TTQ_HAS_CUDA
  Tensor counts = Tensor::empty({4}, DType::I64, p.device());
  count_codes_cuda(p.data<uint8_t>(), n, counts.data<int64_t>(), stream());
  std::vector<int64_t> v = counts.to_vector<int64_t>();
  CodeCounts r;
  r.zero = v[0];
  r.pos = v[1];
  r.neg = v[2];
  r.invalid = v[3];
  return r;
#else
  TTQ_THROW() << "count_codes: this build has no CUDA backend";
#endif
}

Tensor decode_packed(const Tensor& packed, const Shape& shape, const Tensor& wp, const Tensor& wn) {
  const int64_t n = shape_numel(shape);
  check_packed(packed, n, "decode_packed");
  check_dtype(wp, DType::F32, "decode_packed wp");
  check_dtype(wn, DType::F32, "decode_packed wn");
  TTQ_CHECK(wp.numel() == 1 && wn.numel() == 1) << "decode_packed: wp and wn must hold one element each";
  check_same_device(packed, wp, "decode_packed");
  check_same_device(packed, wn, "decode_packed");
  const Tensor p = packed.contiguous();
  Tensor out = Tensor::empty(shape, DType::F32, p.device());
  if (p.device().is_cpu()) {
    decode_packed_cpu(p.data<uint8_t>(), n, wp.data<float>()[0], wn.data<float>()[0], out.data<float>());
    return out;
  }
#ifdef TTQ_HAS_CUDA
  decode_packed_cuda(p.data<uint8_t>(), n, wp.data<float>(), wn.data<float>(), out.data<float>(), stream());
  return out;
#else
  TTQ_THROW() << "decode_packed: this build has no CUDA backend";
#endif
}

}  // namespace ttq::kernels
