// Front end of the pooling ops: max_pool2d, avg_pool2d, global_avg_pool2d.
// Backward rules:
//   max: gx[argmax of each window] += gy (the backend's saved I32 indices)
//   avg: gx[window] += gy / divisor (the backend recomputes PyTorch's divisors)
//   global avg: the avg rule with one window covering the plane.
// Tested by the MAX_POOL2D / AVG_POOL2D / GLOBAL_AVG_POOL2D cases of tests/test_backend_ops.cpp.
#include "engine/ops/common.h"

namespace ttq::ops {

using detail::check_floating;
using detail::describe;
using detail::new_output;

namespace {

Pool2dParams make_params(const char* op, const Tensor& x, int kernel, int stride, int padding, bool ceil_mode,
                         bool count_include_pad) {
  check_floating(op, "x", x);
  TTQ_CHECK(x.dim() == 4) << op << ": " << describe("x", x) << " must be 4-d (NCHW)";
  TTQ_CHECK(kernel >= 1 && stride >= 1 && padding >= 0)
      << op << ": kernel " << kernel << ", stride " << stride << ", padding " << padding << " invalid";
  TTQ_CHECK(2 * padding <= kernel) << op << ": padding " << padding << " exceeds half the kernel " << kernel;
  Pool2dParams p;
  p.kernel_h = p.kernel_w = kernel;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = padding;
  p.ceil_mode = ceil_mode;
  p.count_include_pad = count_include_pad;
  return p;
}

Shape out_shape(const char* op, const Tensor& x, const Pool2dParams& p) {
  const int64_t ho = pool_out_size(x.size(2), p.kernel_h, p.stride_h, p.pad_h, p.ceil_mode);
  const int64_t wo = pool_out_size(x.size(3), p.kernel_w, p.stride_w, p.pad_w, p.ceil_mode);
  TTQ_CHECK(ho > 0 && wo > 0) << op << ": kernel " << p.kernel_h << " does not fit " << describe("x", x);
  return {x.size(0), x.size(1), ho, wo};
}

Tensor avg_pool_with(const char* name, const Tensor& x, const Pool2dParams& p, const Shape& yshape) {
  const Tensor xd = detail::dense_nchw(x);
  Tensor y = new_output(yshape, x.dtype(), x.device());
  TTQ_OP_BACKEND(x, avg_pool2d_forward)(xd, p, y);
  if (autograd::any_requires_grad({&x})) {
    autograd::record(name, {&x}, {&y}, [x_shape = x.shape(), p](const std::vector<Tensor>& g) {
      const Tensor gy = g[0].contiguous();
      Tensor gx = new_output(x_shape, gy.dtype(), gy.device());
      TTQ_OP_BACKEND(gy, avg_pool2d_backward)(gy, p, gx);
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}

}  // namespace

Tensor max_pool2d(const Tensor& x, int kernel, int stride, int padding, bool ceil_mode) {
  const Pool2dParams p = make_params("max_pool2d", x, kernel, stride, padding, ceil_mode, true);
  const Shape ys = out_shape("max_pool2d", x, p);
  const Tensor xd = detail::dense_nchw(x);
  Tensor y = new_output(ys, x.dtype(), x.device());
  Tensor indices = new_output(ys, DType::I32, x.device());
  TTQ_OP_BACKEND(x, max_pool2d_forward)(xd, p, y, indices);
  if (autograd::any_requires_grad({&x})) {
    autograd::record("max_pool2d", {&x}, {&y}, [x_shape = x.shape(), indices](const std::vector<Tensor>& g) {
      const Tensor gy = g[0].contiguous();
      Tensor gx = new_output(x_shape, gy.dtype(), gy.device());
      TTQ_OP_BACKEND(gy, max_pool2d_backward)(gy, indices, gx);
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}

Tensor avg_pool2d(const Tensor& x, int kernel, int stride, int padding, bool ceil_mode,
                  bool count_include_pad) {
  const Pool2dParams p = make_params("avg_pool2d", x, kernel, stride, padding, ceil_mode, count_include_pad);
  return avg_pool_with("avg_pool2d", x, p, out_shape("avg_pool2d", x, p));
}

Tensor global_avg_pool2d(const Tensor& x) {
  check_floating("global_avg_pool2d", "x", x);
  TTQ_CHECK(x.dim() == 4 && x.size(2) > 0 && x.size(3) > 0)
      << "global_avg_pool2d: " << describe("x", x) << " must be 4-d (NCHW) with a non-empty plane";
  Pool2dParams p;
  p.kernel_h = p.stride_h = static_cast<int>(x.size(2));
  p.kernel_w = p.stride_w = static_cast<int>(x.size(3));
  p.pad_h = p.pad_w = 0;
  Tensor y4 = avg_pool_with("global_avg_pool2d", x, p, {x.size(0), x.size(1), 1, 1});
  return reshape(y4, {x.size(0), x.size(1)});
}

}  // namespace ttq::ops
