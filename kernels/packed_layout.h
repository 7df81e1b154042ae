// Load-time layouts of packed 2-bit conv weights (docs/packed-layout.md): the
// canonical codes of a [co, k] matrix re-laid out for the CPU micro-kernels
// (CpuCodeLayout, with the code table cpu_code_lut) and for the tensor-core kernel
// (MmaCodeLayout), and back. Defined in kernels/packed_layout.cpp; read by the CPU
// twin (kernels/packed_conv_cpu.cpp) and the CUDA twin (kernels/packed_conv.cu).
// Tests: the round trips of tests/test_packed_conv.cpp.
#pragma once

#include <cstdint>
#include <vector>

namespace ttq::kernels {

// CPU layout of a [co, k] code matrix (k = ci*kh*kw): rows in blocks of 4 (the
// micro-kernel's register block), each block keeping, for every k where one of its
// four codes is non-zero, one byte holding the four codes (row 4b+r in bits 2r..2r+1)
// and a bit in `mask`. A block's all-zero columns are skipped by the kernel and take
// no code byte: at most 2 bits per weight plus 1/4 bit of mask.
struct CpuCodeLayout {
  int64_t co = 0, k = 0;
  int64_t blocks = 0;          // ceil(co / 4); rows past co hold code 0
  int64_t mask_words = 0;      // ceil(k / 64)
  std::vector<uint64_t> mask;  // [blocks][mask_words], bit k%64 of word k/64
  std::vector<int64_t> start;  // [blocks + 1]: block b's bytes are codes[start[b], start[b+1])
  std::vector<uint8_t> codes;  // in increasing k within each block, then one padding byte 0
};
// requires canonical holds ceil(co*k/4) bytes in the layout of packed_format.h.
CpuCodeLayout relayout_cpu(const uint8_t* canonical, int64_t co, int64_t k);
// The inverse: writes ceil(co*k/4) canonical bytes (padding codes 0).
void relayout_cpu_to_canonical(const CpuCodeLayout& layout, uint8_t* canonical);
// A grouped layer: requires groups >= 1 divides co. ensures element g is
// relayout_cpu of rows [g*co/groups, (g+1)*co/groups) of the [co, k] matrix.
std::vector<CpuCodeLayout> relayout_cpu_groups(const uint8_t* canonical, int64_t co, int64_t k,
                                               int64_t groups);
// ensures the canonical bytes of rows [row0, row0 + rows) of a [*, k] code matrix (a
// group's own canonical codes; padding codes 0).
std::vector<uint8_t> canonical_rows(const uint8_t* canonical, int64_t row0, int64_t rows, int64_t k);

// Tensor-core layout: the A operand of mma.m16n8k16 in fragment order. Rows are
// padded to 16 (m-tiles), k to 16 (k-steps); for m-tile mt and k-step ks, lane L
// (g = L/4, t = L%4) owns one uint16 at index (mt * ksteps + ks) * 32 + L holding
// the codes of (row g, k 2t..2t+1), (row g+8, k 2t..2t+1), (row g, k 2t+8..2t+9),
// (row g+8, k 2t+8..2t+9), 2 bits each, in that order from bit 0: exactly the
// registers a0..a3 of the instruction, so decoding is a few bit operations.
// A grouped layer (groups > 1) lays out each group's co/groups rows on their own, one
// group after another: mtiles = ceil(co/groups / 16) per group, and group g's words
// start at g * mtiles * ksteps * 32.
struct MmaCodeLayout {
  int64_t co = 0, k = 0;  // co: all rows of the layer
  int64_t groups = 1;
  int64_t mtiles = 0, ksteps = 0;  // per group
  std::vector<uint16_t> words;     // [groups][mtiles][ksteps][32]
  int64_t group_words() const { return mtiles * ksteps * 32; }
};
// requires groups >= 1 divides co.
MmaCodeLayout relayout_mma(const uint8_t* canonical, int64_t co, int64_t k, int64_t groups = 1);
void relayout_mma_to_canonical(const MmaCodeLayout& layout, uint8_t* canonical);

// lut[byte * 4 + r] = value of code r of `byte`: +wp, -wn or 0 (code 3: 0).
std::vector<float> cpu_code_lut(float wp, float wn);

}  // namespace ttq::kernels
