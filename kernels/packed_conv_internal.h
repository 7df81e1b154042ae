// Helpers shared by the CPU-side files of the packed convolution (kernels/packed_conv.h):
// the re-layouts (packed_layout.cpp), the reference (packed_conv_ref.cpp) and the fast
// CPU twin (packed_conv_cpu.cpp). Internal to kernels/.
#pragma once

#include <cstdint>

#include "engine/error.h"
#include "kernels/packed_conv.h"
#include "kernels/packed_format.h"

namespace ttq::kernels::detail {

// Code i of a canonical code matrix (packed_format.h).
inline uint8_t canonical_code(const uint8_t* canonical, int64_t i) {
  return packed::code_at(canonical[packed::byte_of(i)], i);
}

// Throws ttq::Error unless the shape is a valid conv and x and y are set (every CPU
// entry checks its arguments with this).
inline void check_args(const PackedConvArgs& a) {
  const PackedConvShape& s = a.shape;
  TTQ_CHECK(s.n >= 0 && s.ci >= 1 && s.h >= 1 && s.w >= 1 && s.co >= 1 && s.kh >= 1 && s.kw >= 1 &&
            s.stride >= 1 && s.pad >= 0)
      << "packed conv: bad shape";
  TTQ_CHECK(s.groups >= 1 && s.ci % s.groups == 0 && s.co % s.groups == 0)
      << "packed conv: " << s.groups << " groups do not divide " << s.ci << " input and " << s.co
      << " output channels";
  TTQ_CHECK(!s.pool2 || (s.h >= 2 && s.w >= 2)) << "packed conv: pool2 needs at least 2x2 input";
  TTQ_CHECK(s.ho() >= 1 && s.wo() >= 1) << "packed conv: empty output (kernel larger than the padded input)";
  TTQ_CHECK(a.x && a.y) << "packed conv: null x or y";
}

}  // namespace ttq::kernels::detail
