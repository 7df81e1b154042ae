// Front end of the shape ops, done with views and copies. Backward rules:
//   concat:  gx_i = g.narrow(dim, offset_i, size_i)
//   reshape / flatten: gx = g reshaped to x's shape
//   narrow:  gx = zeros with g copied into the narrowed window
// Tested by the CONCAT / RESHAPE / FLATTEN / NARROW cases of tests/test_backend_ops.cpp.
#include "engine/ops/common.h"

namespace ttq::ops {

using detail::check_operand;
using detail::describe;
using detail::new_output;

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  TTQ_CHECK(!xs.empty()) << "concat: no tensors";
  const Tensor& x0 = xs[0];
  TTQ_CHECK(x0.defined()) << "concat: tensor 0 is undefined";
  const int64_t nd = x0.dim();
  const int64_t d = dim < 0 ? dim + nd : dim;
  TTQ_CHECK(d >= 0 && d < nd) << "concat: dimension " << dim << " out of range for " << describe("x0", x0);
  Shape shape = x0.shape();
  shape[d] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    TTQ_CHECK(x.defined()) << "concat: tensor " << i << " is undefined";
    check_operand("concat", "x_i", x, "x0", x0);
    bool ok = x.dim() == nd;
    for (int64_t j = 0; ok && j < nd; ++j) ok = j == d || x.size(j) == x0.size(j);
    TTQ_CHECK(ok) << "concat along " << d << ": shapes " << shape_str(x0.shape()) << " and "
                  << shape_str(x.shape()) << " (tensor " << i << ") differ outside that dimension";
    shape[d] += x.size(d);
  }
  Tensor y = new_output(shape, x0.dtype(), x0.device());
  std::vector<int64_t> offsets;
  int64_t off = 0;
  for (const Tensor& x : xs) {
    offsets.push_back(off);
    Tensor window = y.narrow(d, off, x.size(d));
    TTQ_OP_BACKEND(x, copy)(x, window);
    off += x.size(d);
  }
  if (autograd::any_requires_grad(xs)) {
    std::vector<const Tensor*> inputs;
    std::vector<bool> need;
    std::vector<int64_t> sizes;
    for (const Tensor& x : xs) {
      inputs.push_back(&x);
      need.push_back(x.requires_grad());
      sizes.push_back(x.size(d));
    }
    autograd::record("concat", inputs, {&y}, [d, offsets, sizes, need](const std::vector<Tensor>& g) {
      std::vector<Tensor> gx(need.size());
      for (size_t i = 0; i < need.size(); ++i) {
        if (!need[i]) continue;
        const Tensor window = g[0].narrow(d, offsets[i], sizes[i]);
        gx[i] = new_output(window.shape(), window.dtype(), window.device());
        TTQ_OP_BACKEND(window, copy)(window, gx[i]);
      }
      return gx;
    });
  }
  return y;
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  TTQ_CHECK(x.defined()) << "reshape: undefined tensor";
  Tensor y = x.reshape(shape);  // a view when the strides allow, else a copy
  if (autograd::any_requires_grad({&x})) {
    autograd::record("reshape", {&x}, {&y}, [x_shape = x.shape()](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{g[0].reshape(x_shape)};
    });
  }
  return y;
}

Tensor flatten(const Tensor& x) {
  TTQ_CHECK(x.defined() && x.dim() >= 1) << "flatten: " << describe("x", x) << " needs a batch dimension";
  int64_t rest = 1;
  for (int64_t j = 1; j < x.dim(); ++j) rest *= x.size(j);
  return reshape(x, {x.size(0), rest});
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  TTQ_CHECK(x.defined()) << "narrow: undefined tensor";
  Tensor y = x.narrow(dim, start, length);
  if (autograd::any_requires_grad({&x})) {
    const int64_t d = dim < 0 ? dim + x.dim() : dim;
    autograd::record("narrow", {&x}, {&y},
                     [x_shape = x.shape(), d, start, length](const std::vector<Tensor>& g) {
                       Tensor gx = new_output(x_shape, g[0].dtype(), g[0].device());
                       TTQ_OP_BACKEND(gx, fill)(gx, 0.0);
                       Tensor window = gx.narrow(d, start, length);
                       TTQ_OP_BACKEND(gx, copy)(g[0], window);
                       return std::vector<Tensor>{gx};
                     });
  }
  return y;
}

}  // namespace ttq::ops
