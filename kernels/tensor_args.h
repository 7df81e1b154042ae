// Argument checks shared by the packed kernels' tensor entries (packed_conv.cpp,
// packed_ops.cpp). Internal to kernels/.
#pragma once

#include <cstdint>

#include "engine/error.h"
#include "engine/tensor.h"

namespace ttq::kernels::detail {

// Each [H, W] plane of a 4-D tensor is dense (rows contiguous, planes unpadded);
// samples and channels may be strided (a channel slice of a wider buffer).
inline bool dense_planes(const Tensor& t) {
  return t.dim() == 4 && (t.size(3) <= 1 || t.stride(3) == 1) && (t.size(2) <= 1 || t.stride(2) == t.size(3));
}

// Each sample of a 4-D tensor is a dense [C, H, W] block (the engine's CPU conv reads and
// writes such operands); the sample stride is free (a channel slice of a wider buffer).
inline bool dense_samples(const Tensor& t) {
  return t.dim() == 4 && t.stride(3) == 1 && t.stride(2) == t.size(3) && t.stride(1) == t.size(2) * t.size(3);
}

// The data of an optional per-channel vector: nullptr when undefined, else it must be
// contiguous F32 [n] on `dev` (an Error naming `what` otherwise).
inline const float* opt_ptr(const Tensor& t, int64_t n, Device dev, const char* what) {
  if (!t.defined()) return nullptr;
  TTQ_CHECK(t.dtype() == DType::F32 && t.numel() == n && t.is_contiguous() && t.device() == dev)
      << what << ": contiguous F32 [" << n << "] on " << dev.str() << " expected, got " << t.str();
  return t.data<float>();
}

}  // namespace ttq::kernels::detail
