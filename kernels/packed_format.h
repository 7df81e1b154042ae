// The canonical 2-bit ternary weight layout (docs/packed-layout.md), written down
// once and shared by C++ and CUDA code. Packers and unpackers: kernels/pack.h;
// round-trip tests: tests/test_pack.cpp.
//
// A quantized weight [Cout, Cin, kh, kw] is flattened row-major to n elements.
// Element i is stored in bits 2*(i%4) .. 2*(i%4)+1 of byte i/4, so a layer takes
// ceil(n/4) bytes; unused codes of the last byte are 0. Code 0 = 0, 1 = +1
// (value +Wp), 2 = -1 (value -Wn); 3 is invalid. The layout does not depend on
// the instruction set; a kernel that wants another order repacks at load time.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TTQ_PACK_HD __host__ __device__ __forceinline__
#else
#define TTQ_PACK_HD inline
#endif

namespace ttq::kernels::packed {

enum Code : uint8_t { kZero = 0, kPos = 1, kNeg = 2, kInvalid = 3 };

constexpr int kBitsPerCode = 2;
constexpr int kCodesPerByte = 8 / kBitsPerCode;
constexpr uint8_t kCodeMask = (1u << kBitsPerCode) - 1;

static_assert(kCodesPerByte == 4, "the canonical layout holds 4 codes per byte");
static_assert(kCodeMask == 3, "2-bit codes");
static_assert((kPos | kNeg) == kInvalid, "code 3 is the only invalid pattern");
static_assert(kZero == 0, "zero-filled buffers must decode to zero weights");

// Bytes needed for n codes.
constexpr TTQ_PACK_HD int64_t packed_bytes(int64_t n) { return (n + kCodesPerByte - 1) / kCodesPerByte; }
// Byte and bit position of element i.
constexpr TTQ_PACK_HD int64_t byte_of(int64_t i) { return i / kCodesPerByte; }
constexpr TTQ_PACK_HD int shift_of(int64_t i) { return static_cast<int>(i % kCodesPerByte) * kBitsPerCode; }

// The code of element i within its byte.
constexpr TTQ_PACK_HD uint8_t code_at(uint8_t byte, int64_t i) {
  return static_cast<uint8_t>((byte >> shift_of(i)) & kCodeMask);
}
// One byte from four codes (elements 4j .. 4j+3).
constexpr TTQ_PACK_HD uint8_t pack4(uint8_t c0, uint8_t c1, uint8_t c2, uint8_t c3) {
  return static_cast<uint8_t>((c0 & kCodeMask) | ((c1 & kCodeMask) << 2) | ((c2 & kCodeMask) << 4) |
                              ((c3 & kCodeMask) << 6));
}

// Code of a latent weight against the threshold delta (docs/ttq.md):
// P = {w > delta} -> 1, N = {w < -delta} -> 2, otherwise 0. Branch-free.
constexpr TTQ_PACK_HD uint8_t code_of(float w, float delta) {
  return static_cast<uint8_t>(static_cast<uint8_t>(w > delta) | (static_cast<uint8_t>(w < -delta) << 1));
}
// Value of a code: +wp, -wn or 0 (code 3 decodes to 0; validate before use).
constexpr TTQ_PACK_HD float value_of(uint8_t code, float wp, float wn) {
  return code == kPos ? wp : (code == kNeg ? -wn : 0.0f);
}

static_assert(packed_bytes(0) == 0 && packed_bytes(1) == 1 && packed_bytes(4) == 1 && packed_bytes(5) == 2);
static_assert(pack4(kPos, kNeg, kZero, kPos) == 0b01'00'10'01);
static_assert(code_at(0b01'00'10'01, 0) == kPos && code_at(0b01'00'10'01, 1) == kNeg &&
              code_at(0b01'00'10'01, 2) == kZero && code_at(0b01'00'10'01, 7) == kPos);
static_assert(code_of(0.5f, 0.25f) == kPos && code_of(-0.5f, 0.25f) == kNeg &&
              code_of(0.25f, 0.25f) == kZero && code_of(-0.25f, 0.25f) == kZero);

}  // namespace ttq::kernels::packed
