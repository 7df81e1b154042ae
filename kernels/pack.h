// Packing and unpacking of the canonical 2-bit layout (kernels/packed_format.h,
// docs/packed-layout.md): codes (one U8 per element, values 0/1/2) <-> packed
// bytes (4 codes each), code counts, and decoding to {+Wp, 0, -Wn}.
// CPU twins here (kernels/pack.cpp), CUDA twins in kernels/pack.cu; tests:
// tests/test_pack.cpp.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

#ifdef TTQ_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace ttq::kernels {

// Numbers of each code among the first n codes (padding excluded).
struct CodeCounts {
  int64_t zero = 0, pos = 0, neg = 0, invalid = 0;
};

// ---- raw functions (codes: n bytes, packed: ceil(n/4) bytes, values: n floats) ----

// requires codes in {0, 1, 2, 3} (higher bits are masked off).
// ensures packed in the canonical layout, padding codes 0.
void pack_codes_ref(const uint8_t* codes, int64_t n, uint8_t* packed);
void pack_codes_cpu(const uint8_t* codes, int64_t n, uint8_t* packed);
// ensures codes[i] = code of element i (3 passes through: validate with counts).
void unpack_codes_cpu(const uint8_t* packed, int64_t n, uint8_t* codes);
CodeCounts count_codes_cpu(const uint8_t* packed, int64_t n);
// values[i] = +wp, 0 or -wn by code (code 3 gives 0).
void decode_packed_cpu(const uint8_t* packed, int64_t n, float wp, float wn, float* values);

#ifdef TTQ_HAS_CUDA
void pack_codes_cuda(const uint8_t* codes, int64_t n, uint8_t* packed, cudaStream_t stream);
void unpack_codes_cuda(const uint8_t* packed, int64_t n, uint8_t* codes, cudaStream_t stream);
// counts: 4 int64 on the device (zero, pos, neg, invalid), overwritten.
void count_codes_cuda(const uint8_t* packed, int64_t n, int64_t* counts, cudaStream_t stream);
// wp, wn: device scalars.
void decode_packed_cuda(const uint8_t* packed, int64_t n, const float* wp, const float* wn, float* values,
                        cudaStream_t stream);
#endif

// ---- tensor entries (any device; U8 tensors, any shape for codes) ----

// requires codes U8. ensures [ceil(numel/4)] U8 packed bytes on the same device.
Tensor pack_codes(const Tensor& codes);
// requires packed U8 with ceil(numel(shape)/4) elements. ensures U8 codes of `shape`.
Tensor unpack_codes(const Tensor& packed, const Shape& shape);
// requires packed U8 with at least ceil(n/4) elements. Synchronises on CUDA.
CodeCounts count_codes(const Tensor& packed, int64_t n);
// requires packed U8 with ceil(numel(shape)/4) elements, wp / wn F32 one element
// each on the same device. ensures F32 values of `shape` in {+wp, 0, -wn}.
Tensor decode_packed(const Tensor& packed, const Shape& shape, const Tensor& wp, const Tensor& wn);

}  // namespace ttq::kernels
