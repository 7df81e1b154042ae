// Element types of tensors. f32 is the working type, f64 serves gradient checks,
// u8 / i32 / i64 hold codes, indices and labels; f16 / bf16 are storage types for
// tensor-core paths (no CPU arithmetic on them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/error.h"

namespace ttq {

enum class DType : uint8_t { F32, F64, F16, BF16, U8, I32, I64 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::U8: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

// Names as safetensors spells them.
constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::U8: return "U8";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

// Returns false when `name` is not a known dtype.
inline bool dtype_from_name(std::string_view name, DType* out) {
  for (DType t : {DType::F32, DType::F64, DType::F16, DType::BF16, DType::U8, DType::I32, DType::I64}) {
    if (name == dtype_name(t)) {
      *out = t;
      return true;
    }
  }
  return false;
}

constexpr bool is_floating(DType t) {
  return t == DType::F32 || t == DType::F64 || t == DType::F16 || t == DType::BF16;
}

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::F32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::F64;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::U8;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::I32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::I64;
}

}  // namespace ttq

namespace ttq {

// Calls f(scalar{}) with scalar = float or double according to `dt`; other
// dtypes throw. Usage (a pragma may appear inside the lambda, unlike a macro):
//   dispatch_float(x.dtype(), "relu", [&](auto tag) { using T = decltype(tag); ... });
template <class F>
decltype(auto) dispatch_float(DType dt, const char* name, F&& f) {
  switch (dt) {
    case DType::F32: return f(float{});
    case DType::F64: return f(double{});
    default: break;
  }
  TTQ_THROW() << name << ": unsupported dtype " << dtype_name(dt) << " (expected F32 or F64)";
}

}  // namespace ttq
