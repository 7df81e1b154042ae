// Gradients of the ternary weight Wq = ternarize(W; delta, Wp, Wn) (docs/ttq.md,
// "Backward"), given G = dL/dWq, in one fused pass:
//   dL/dWp = sum_P G,  dL/dWn = -sum_N G (exact) or +sum_N G (seed),
//   dL/dW  = Wp*G on P, Wn*G on N, G on Z,   P = {W > delta}, N = {W < -delta}.
// Layers: scale_grad_ref -> scale_grad_cpu / scale_grad_cuda (kernels/scale_grad.cu)
// -> the tensor entry scale_grad(). Tests: tests/test_scale_grad.cpp.
#pragma once

#include <cstdint>
#include <string_view>

#include "engine/tensor.h"

#ifdef TTQ_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace ttq::kernels {

// Sign of dL/dWn: `Exact` is the true derivative of Wq = -Wn on N; `Seed`
// reproduces the seed's code and the paper's eq. 7 (+sum_N G).
enum class WnGradMode : uint8_t { Exact, Seed };
const char* wn_grad_mode_name(WnGradMode m);  // "exact" / "seed"
// Throws ttq::InputError naming the flag value on anything else.
WnGradMode parse_wn_grad_mode(std::string_view s);

// ---- raw CPU functions (g, w, gw: n elements) ----

// The reference. Sums in double, element order. gw may be null.
void scale_grad_ref(const float* g, const float* w, int64_t n, float delta, float wp, float wn,
                    WnGradMode mode, float* gw, double* gwp, double* gwn);

// Fast CPU twin (OpenMP). Sums in double over fixed tiles, combined in tile order,
// so the result does not depend on the number of threads.
void scale_grad_cpu(const float* g, const float* w, int64_t n, float delta, float wp, float wn,
                    WnGradMode mode, float* gw, double* gwp, double* gwn);

#ifdef TTQ_HAS_CUDA
size_t scale_grad_cuda_workspace(int64_t n);
// CUDA twin; delta, wp, wn are device scalars, gwp / gwn receive one float each.
// Fixed-order reductions: float within a block, double across blocks; no atomics.
void scale_grad_cuda(const float* g, const float* w, int64_t n, const float* delta, const float* wp,
                     const float* wn, WnGradMode mode, float* gw, float* gwp, float* gwn, void* workspace,
                     cudaStream_t stream);
#endif

// ---- tensor entry ----

struct ScaleGrad {
  Tensor latent;  // dL/dW, the shape of W, F32
  Tensor wp;      // dL/dWp, the shape of wp (one element), F32
  Tensor wn;      // dL/dWn, the shape of wn (one element), F32
};

// requires grad and latent F32 with equal shapes (any strides); delta, wp, wn F32
// with one element each; all on one device.
// ensures the three gradients above on that device; no autograd.
ScaleGrad scale_grad(const Tensor& grad, const Tensor& latent, const Tensor& delta, const Tensor& wp,
                     const Tensor& wn, WnGradMode mode);

}  // namespace ttq::kernels
