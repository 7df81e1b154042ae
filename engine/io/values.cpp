// load_value_problem (engine/io/values.h).
#include "engine/io/values.h"

#include <cmath>
#include <limits>
#include <sstream>

namespace ttq::io {

namespace {

// The first of n values that breaks the rule, described; "" when none.
template <class T>
std::string first_bad_value(const T* v, int64_t n, double lo, double hi, bool non_negative) {
  for (int64_t i = 0; i < n; ++i) {
    const double x = static_cast<double>(v[i]);
    const std::string at = " at element " + std::to_string(i);
    if (std::isnan(x)) return "holds NaN" + at;
    if (std::isinf(x)) return std::string("holds ") + (x > 0 ? "+Inf" : "-Inf") + at;
    if (x < lo || x > hi || (non_negative && x < 0)) {
      std::ostringstream os;
      os << "holds " << x << at
         << (x < lo || x > hi ? ", outside the range of the model's dtype" : ", below zero");
      return os.str();
    }
  }
  return "";
}

}  // namespace

std::string load_value_problem(const Tensor& src, DType slot, bool non_negative) {
  if (!src.defined()) return "is undefined";
  const DType t = src.dtype();
  const bool ok = is_floating(slot) ? (t == DType::F32 || t == DType::F64) : !is_floating(t);
  if (!ok) return std::string("is ") + dtype_name(t) + ", expected " + dtype_name(slot) + " values";
  double lo = -std::numeric_limits<double>::max(), hi = std::numeric_limits<double>::max();
  if (slot == DType::F32) {
    hi = std::numeric_limits<float>::max();
    lo = -hi;
  }
  const Tensor c = src.to(Device::cpu()).contiguous();
  switch (t) {
    case DType::F32: return first_bad_value(c.data<float>(), c.numel(), lo, hi, non_negative);
    case DType::F64: return first_bad_value(c.data<double>(), c.numel(), lo, hi, non_negative);
    default:
      if (!non_negative || t == DType::U8) return "";
      const Tensor d = c.to(DType::I64);
      return first_bad_value(d.data<int64_t>(), d.numel(), lo, hi, non_negative);
  }
}

}  // namespace ttq::io
