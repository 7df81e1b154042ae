// Tensor entries of the packed 2-bit convolution (kernels/packed_conv.h): argument
// checks and the raw operands of packed_conv2d / packed_conv2d_out, which run the CPU
// twin (kernels/packed_conv_cpu.cpp) or the CUDA twin (kernels/packed_conv.cu) on the
// weight's device, and packed_conv2d_ref through the reference
// (kernels/packed_conv_ref.cpp). Tests: tests/test_packed_conv.cpp; timing:
// bench/bench_packed_conv.cpp.
#include "kernels/packed_conv.h"

#include "engine/cuda/runtime.h"
#include "engine/error.h"
#include "kernels/tensor_args.h"

namespace ttq::kernels {

const char* cuda_path_name(CudaPath p) {
  switch (p) {
    case CudaPath::Auto: return "auto";
    case CudaPath::TensorCore: return "tensor_core";
    case CudaPath::Simt: return "simt";
  }
  return "?";
}

// ---- tensor entries -------------------------------------------------------------------

namespace {

using detail::dense_planes;
using detail::opt_ptr;

PackedConvArgs make_args(const Tensor& x, const PackedConvWeight& w, const PackedConvOptions& o, Tensor& y) {
  TTQ_CHECK(w.defined()) << "packed_conv2d: undefined weight";
  TTQ_CHECK(x.dim() == 4 && x.dtype() == DType::F32)
      << "packed_conv2d: x must be F32 [n, c, h, w], got " << x.str();
  TTQ_CHECK(x.size(1) == w.ci()) << "packed_conv2d: x has " << x.size(1) << " channels, the weight "
                                 << w.ci();
  TTQ_CHECK(x.device() == w.device() && y.device() == w.device())
      << "packed_conv2d: x, y and the weight must be on one device";
  TTQ_CHECK(dense_planes(x)) << "packed_conv2d: x planes must be dense";
  const Shape out = packed_conv_output_shape(x, w, o);
  TTQ_CHECK(y.shape() == out && y.dtype() == DType::F32 && dense_planes(y))
      << "packed_conv2d: y must be F32 " << shape_str(out) << " with dense planes, got " << y.str();
  PackedConvArgs a;
  a.shape.n = x.size(0);
  a.shape.ci = x.size(1);
  a.shape.h = x.size(2);
  a.shape.w = x.size(3);
  a.shape.co = w.co();
  a.shape.kh = w.kh();
  a.shape.kw = w.kw();
  a.shape.stride = o.stride;
  a.shape.pad = o.pad;
  a.shape.pool2 = o.pool2;
  a.shape.groups = w.groups();
  a.x = x.data<float>();
  a.x_sn = x.stride(0);
  a.x_sc = x.stride(1);
  a.y = y.data<float>();
  a.y_sn = y.stride(0);
  a.y_sc = y.stride(1);
  if (o.residual.defined()) {
    TTQ_CHECK(o.residual.shape() == out && o.residual.dtype() == DType::F32 && dense_planes(o.residual) &&
              o.residual.device() == w.device())
        << "packed_conv2d: residual must be F32 " << shape_str(out) << " with dense planes, got "
        << o.residual.str();
    a.residual = o.residual.data<float>();
    a.r_sn = o.residual.stride(0);
    a.r_sc = o.residual.stride(1);
  }
  a.pre = {opt_ptr(o.pre_scale, w.ci(), w.device(), "packed_conv2d: pre_scale"),
           opt_ptr(o.pre_shift, w.ci(), w.device(), "packed_conv2d: pre_shift"), o.pre_relu};
  a.post = {opt_ptr(o.post_scale, w.co(), w.device(), "packed_conv2d: post_scale"),
            opt_ptr(o.post_shift, w.co(), w.device(), "packed_conv2d: post_shift"), o.post_relu};
  a.wp = w.wp();
  a.wn = w.wn();
  return a;
}

}  // namespace

Shape packed_conv_output_shape(const Tensor& x, const PackedConvWeight& w, const PackedConvOptions& o) {
  TTQ_CHECK(x.dim() == 4) << "packed_conv2d: x must be 4-d, got " << x.str();
  PackedConvShape s;
  s.n = x.size(0);
  s.h = x.size(2);
  s.w = x.size(3);
  s.kh = w.kh();
  s.kw = w.kw();
  s.stride = o.stride;
  s.pad = o.pad;
  s.pool2 = o.pool2;
  TTQ_CHECK(o.stride >= 1 && o.pad >= 0)
      << "packed_conv2d: bad stride " << o.stride << " / padding " << o.pad;
  TTQ_CHECK(!o.pool2 || (s.h >= 2 && s.w >= 2)) << "packed_conv2d: pool2 needs at least 2x2 input";
  TTQ_CHECK(s.hs() + 2 * o.pad >= s.kh && s.ws() + 2 * o.pad >= s.kw)
      << "packed_conv2d: kernel " << s.kh << "x" << s.kw << " larger than the padded input";
  return {s.n, w.co(), s.ho(), s.wo()};
}

void packed_conv2d_out(const Tensor& x_in, const PackedConvWeight& w, const PackedConvOptions& o, Tensor& y) {
  const Tensor x = dense_planes(x_in) ? x_in : x_in.contiguous();
  const PackedConvArgs a = make_args(x, w, o, y);
  if (w.device().is_cpu()) {
    packed_conv_cpu(a, w.cpu_layouts(), w.cpu_lut().data(), o.cpu_isa);
    return;
  }
#ifdef TTQ_HAS_CUDA
  packed_conv_cuda(a, w.codes().data<uint8_t>(),
                   reinterpret_cast<const uint16_t*>(w.mma_words().data<uint8_t>()), o.cuda_path,
                   static_cast<cudaStream_t>(cuda::current_stream()));
#else
  TTQ_THROW() << "packed_conv2d: this build has no CUDA backend";
#endif
}

Tensor packed_conv2d(const Tensor& x, const PackedConvWeight& w, const PackedConvOptions& o) {
  Tensor y = Tensor::empty(packed_conv_output_shape(x, w, o), DType::F32, x.device());
  packed_conv2d_out(x, w, o, y);
  return y;
}

Tensor packed_conv2d_ref(const Tensor& x_in, const PackedConvWeight& w, const PackedConvOptions& o_in) {
  const Device cpu = Device::cpu();
  const Tensor x = x_in.to(cpu).contiguous();
  PackedConvOptions o = o_in;
  for (Tensor* t : {&o.pre_scale, &o.pre_shift, &o.post_scale, &o.post_shift, &o.residual})
    if (t->defined()) *t = t->to(cpu).contiguous();
  const Tensor codes = w.codes().to(cpu).contiguous();
  Tensor y = Tensor::empty(packed_conv_output_shape(x, w, o), DType::F32, cpu);
  // make_args checks devices against the weight's: describe a CPU-side twin of it.
  PackedConvArgs a;
  a.shape = {x.size(0), x.size(1), x.size(2), x.size(3), w.co(),    w.kh(),
             w.kw(),    o.stride,  o.pad,     o.pool2,   w.groups()};
  TTQ_CHECK(x.size(1) == w.ci()) << "packed_conv2d_ref: x has " << x.size(1) << " channels, the weight "
                                 << w.ci();
  a.x = x.data<float>();
  a.x_sn = x.stride(0);
  a.x_sc = x.stride(1);
  a.y = y.data<float>();
  a.y_sn = y.stride(0);
  a.y_sc = y.stride(1);
  if (o.residual.defined()) {
    TTQ_CHECK(o.residual.shape() == y.shape()) << "packed_conv2d_ref: residual shape";
    a.residual = o.residual.data<float>();
    a.r_sn = o.residual.stride(0);
    a.r_sc = o.residual.stride(1);
  }
  a.pre = {opt_ptr(o.pre_scale, w.ci(), cpu, "packed_conv2d: pre_scale"),
           opt_ptr(o.pre_shift, w.ci(), cpu, "packed_conv2d: pre_shift"), o.pre_relu};
  a.post = {opt_ptr(o.post_scale, w.co(), cpu, "packed_conv2d: post_scale"),
            opt_ptr(o.post_shift, w.co(), cpu, "packed_conv2d: post_shift"), o.post_relu};
  a.wp = w.wp();
  a.wn = w.wn();
  packed_conv_ref(a, codes.data<uint8_t>());
  return y;
}

}  // namespace ttq::kernels
