// The small fused inference ops that surround the packed convolutions in a packed
// model (models/packed.cpp): BN (folded to a per-channel affine) + ReLU + max pool,
// BN + ReLU + global average pool, a dense linear layer and the dense (not quantized)
// convolutions: the first conv and SqueezeNet's classifier. Each writes into a
// preallocated output (a channel slice of a wider buffer is fine) and allocates
// nothing, so a whole forward pass can be captured in a CUDA graph. CPU twins:
// kernels/packed_ops.cpp (they are also the reference: plain loops); CUDA twins:
// kernels/packed_ops.cu. Tests: tests/test_packed_model.cpp (against the engine's ops).
#pragma once

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

// requires x F32 [n, ci, h, w] contiguous, w F32 [co, ci, k, k] contiguous, b F32 [co] or
// undefined, y F32 [n, co, ho, wo] contiguous (stride 1, zero padding `pad`).
// ensures y = conv2d(x, w) + b. CPU: the engine's BLAS conv; CUDA: a direct kernel
// with no workspace (cuDNN's shared workspace could move under a captured graph).
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
void dense_conv2d_cuda(const float* x, int64_t n, int64_t ci, int64_t h, int64_t w, const float* wgt,
                       const float* b, int64_t co, int64_t k, int pad, float* y, int64_t ho, int64_t wo,
                       cudaStream_t stream);
#endif

}  // namespace ttq::kernels
