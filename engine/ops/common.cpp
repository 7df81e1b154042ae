// Output allocation, poisoning and argument checks shared by engine/ops/*.cpp.
#include "engine/ops/common.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace ttq::ops {

namespace {
std::atomic<bool>& poison_flag() {
  // Also on when the environment sets TTQ_POISON_OUTPUTS=1 (debugging a backend).
  static std::atomic<bool> flag{[] {
    const char* e = std::getenv("TTQ_POISON_OUTPUTS");
    return e != nullptr && e[0] == '1';
  }()};
  return flag;
}
}  // namespace

void set_poison_outputs(bool on) { poison_flag().store(on); }
bool poison_outputs() { return poison_flag().load(); }

}  // namespace ttq::ops

namespace ttq::ops::detail {

Tensor new_output(const Shape& shape, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  if (poison_outputs() && t.numel() > 0) {
    switch (dtype) {
      case DType::F32:
      case DType::F64: TTQ_BACKEND(device, fill)(t, NAN); break;
      case DType::U8: TTQ_BACKEND(device, fill)(t, 0xAB); break;
      case DType::I32:
      case DType::I64: TTQ_BACKEND(device, fill)(t, -0x5453); break;
      default: break;
    }
  }
  return t;
}

std::string describe(const char* name, const Tensor& t) {
  std::ostringstream os;
  os << name << " " << (t.defined() ? shape_str(t.shape()) : std::string("(undefined)"));
  return os.str();
}

void check_floating(const char* op, const char* name, const Tensor& t) {
  TTQ_CHECK(t.defined()) << op << ": " << name << " is undefined";
  TTQ_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64)
      << op << ": " << describe(name, t) << " is " << dtype_name(t.dtype()) << ", expected F32 or F64";
}

void check_operand(const char* op, const char* name, const Tensor& t, const char* like_name,
                   const Tensor& like) {
  if (!t.defined()) return;
  TTQ_CHECK(t.device() == like.device())
      << op << ": " << describe(name, t) << " is on " << t.device().str() << ", " << describe(like_name, like)
      << " on " << like.device().str();
  TTQ_CHECK(t.dtype() == like.dtype())
      << op << ": " << describe(name, t) << " is " << dtype_name(t.dtype()) << ", "
      << describe(like_name, like) << " is " << dtype_name(like.dtype());
}

Tensor dense_nchw(const Tensor& x) {
  if (x.is_contiguous()) return x;
  const bool sample_dense = x.dim() == 4 && x.stride(3) == 1 && x.stride(2) == x.size(3) &&
                            x.stride(1) == x.size(2) * x.size(3) && x.stride(0) >= x.size(1) * x.stride(1);
  if (x.device().is_cpu() && sample_dense) return x;
  return x.contiguous();
}

Tensor broadcast_scalar(const Tensor& g, const Shape& shape) {
  TTQ_CHECK(g.numel() == 1) << "broadcast_scalar: " << shape_str(g.shape()) << " is not a scalar";
  return g.as_strided(shape, std::vector<int64_t>(shape.size(), 0), g.offset());
}

Tensor broadcast_column(const Tensor& col, int64_t c) {
  TTQ_CHECK(col.dim() == 2 && col.size(1) == 1) << "broadcast_column: " << shape_str(col.shape());
  return col.as_strided({col.size(0), c}, {col.stride(0), 0}, col.offset());
}

}  // namespace ttq::ops::detail
