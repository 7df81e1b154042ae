// Helpers shared by the CPU-side files of the packed convolution (kernels/packed_conv.h):
// the re-layouts (packed_layout.cpp), the reference (packed_conv_ref.cpp) and the fast
// CPU twin (packed_conv_cpu.cpp). Internal to kernels/.
#pragma once

#include <cstdint>

#include "kernels/packed_format.h"

namespace ttq::kernels::detail {

// Code i of a canonical code matrix (packed_format.h).
inline uint8_t canonical_code(const uint8_t* canonical, int64_t i) {
  return packed::code_at(canonical[packed::byte_of(i)], i);
}

}  // namespace ttq::kernels::detail
