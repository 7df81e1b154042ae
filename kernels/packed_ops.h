// The small fused inference ops that surround the packed convolutions in a packed
// model (models/packed_model.cpp): BN (folded to a per-channel affine) + ReLU + max pool,
// BN + ReLU + global average pool, average pooling, a residual add (+ ReLU), a dense
// linear layer and the dense (not quantized) convolutions: first convs, classifiers.
// Each writes into a preallocated output (a channel slice of a wider buffer is fine)
// and allocates nothing, so a whole forward pass can be captured in a CUDA graph. CPU
// twins: kernels/packed_ops.cpp (they are also the reference: plain loops; the dense
// conv runs the engine's CPU conv); CUDA twins: kernels/packed_ops.cu. Tests:
// tests/test_packed_ops.cpp and tests/test_packed_model.cpp (against the engine's ops).
#pragma once

#include "engine/backend.h"
#include "engine/tensor.h"

#ifdef TTQ_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace ttq::kernels {

// Max pooling as PyTorch's max_pool2d (padding never wins, ceil_mode windows clipped;
// unlike PyTorch, a NaN in a window is not propagated).
// kernel 1, stride 1, pad 0 is no pooling.
struct MaxPoolSpec {
  int kernel = 1, stride = 1, pad = 0;
  bool ceil_mode = false;
};

// requires x F32 [n, c, h, w] with dense planes; scale, shift F32 [c] or undefined;
// y F32 [n, c, ho, wo] (pool_out_size) with dense planes, same device, not overlapping x.
// ensures y = maxpool(relu?(x * scale[c] + shift[c])).
void affine_maxpool_out(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu,
                        const MaxPoolSpec& pool, Tensor& y);
Shape affine_maxpool_output_shape(const Shape& x, const MaxPoolSpec& pool);

// requires x F32 [n, c, h, w] with dense planes; y F32 [n, c] contiguous.
// ensures y[n, c] = mean over (h, w) of relu?(x * scale[c] + shift[c]).
void affine_global_avgpool_out(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu,
                               Tensor& y);

// Average pooling as PyTorch's avg_pool2d(x, kernel, stride, pad, ceil_mode,
// count_include_pad): a window clipped to the padded input (ceil_mode's last window
// shrinks) divides by its padded size when count_include_pad, else by the number of
// input elements it covers. requires kernel >= 1, stride >= 1, 0 <= pad <= kernel / 2.
struct AvgPoolSpec {
  int kernel = 1, stride = 1, pad = 0;
  bool ceil_mode = false;
  bool count_include_pad = true;
};

// requires x F32 [n, c, h, w] with dense planes; y F32 [n, c, ho, wo] (pool_out_size) with
// dense planes, same device, not overlapping x (sample and channel strides free: a
// channel slice of a wider buffer works for both).
// ensures y = avg_pool2d(x) as AvgPoolSpec states (CPU: sums in double, as the engine's
// avg pool, bit for bit; CUDA: sums in float).
void avg_pool_out(const Tensor& x, const AvgPoolSpec& pool, Tensor& y);
Shape avg_pool_output_shape(const Shape& x, const AvgPoolSpec& pool);

// requires a, b, y F32 [n, c, h, w] of one shape, each with dense planes (sample and
// channel strides free), same device; y is a or b itself (in place) or overlaps neither.
// ensures y = relu?(a + b), one float addition per element (a residual connection).
void add_out(const Tensor& a, const Tensor& b, bool relu, Tensor& y);

// requires x F32 [n, ci, h, w], w F32 [co, ci/groups, kh, kw] contiguous, b F32 [co] or
// undefined, y F32 [n, co, ho, wo] (conv_out_size with p's stride, padding, dilation)
// on one device; x and y each sample a dense [C, H, W] block (a channel slice of a wider
// buffer works) not overlapping; p.groups divides ci and co.
// ensures y = conv2d(x, w, b, p) (engine/backend.h's Conv2dParams rule). CPU: the
// engine's BLAS conv; CUDA: a direct kernel with no workspace (cuDNN's shared workspace
// could move under a captured graph).
void dense_conv2d_out(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p, Tensor& y);
// Stride 1, zero padding `pad`, no dilation, one group.
void dense_conv2d_out(const Tensor& x, const Tensor& w, const Tensor& b, int pad, Tensor& y);

// requires x F32 [n, in] contiguous, w F32 [out, in], b F32 [out] or undefined, y F32
// [n, out] contiguous. ensures y = x w^T + b.
void linear_out(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y);

#ifdef TTQ_HAS_CUDA
// Raw CUDA twins (device pointers; strides in elements, planes dense; asynchronous).
void affine_maxpool_cuda(const float* x, int64_t x_sn, int64_t x_sc, int64_t n, int64_t c, int64_t h,
                         int64_t w, const float* scale, const float* shift, bool relu,
                         const MaxPoolSpec& pool, float* y, int64_t y_sn, int64_t y_sc, int64_t ho,
                         int64_t wo, cudaStream_t stream);
void affine_global_avgpool_cuda(const float* x, int64_t x_sn, int64_t x_sc, int64_t n, int64_t c, int64_t hw,
                                const float* scale, const float* shift, bool relu, float* y,
                                cudaStream_t stream);
void linear_cuda(const float* x, int64_t n, int64_t in, const float* w, const float* b, int64_t out, float* y,
                 cudaStream_t stream);
void avg_pool_cuda(const float* x, int64_t x_sn, int64_t x_sc, int64_t n, int64_t c, int64_t h, int64_t w,
                   const AvgPoolSpec& pool, float* y, int64_t y_sn, int64_t y_sc, int64_t ho, int64_t wo,
                   cudaStream_t stream);
// hw: elements per plane; a_*, b_*, y_*: sample and channel strides.
void add_cuda(const float* a, int64_t a_sn, int64_t a_sc, const float* b, int64_t b_sn, int64_t b_sc,
              bool relu, float* y, int64_t y_sn, int64_t y_sc, int64_t n, int64_t c, int64_t hw,
              cudaStream_t stream);
// x [n, ci, h, w] with sample / channel strides x_sn, x_sc; wgt [co, ci/groups, kh, kw]
// contiguous; y [n, co, ho, wo] with strides y_sn, y_sc; planes dense.
void dense_conv2d_cuda(const float* x, int64_t x_sn, int64_t x_sc, int64_t n, int64_t ci, int64_t h,
                       int64_t w, const float* wgt, const float* b, int64_t co, int64_t kh, int64_t kw,
                       const Conv2dParams& p, float* y, int64_t y_sn, int64_t y_sc, int64_t ho, int64_t wo,
                       cudaStream_t stream);
#endif

}  // namespace ttq::kernels
