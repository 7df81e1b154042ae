// The differentiable ternary weight: Wq = ternarize(latent; t, Wp, Wn) in the
// forward pass (kernels/ternarize.h), and in the backward pass dL/dlatent,
// dL/dWp, dL/dWn from kernels/scale_grad.h in one fused pass.
// Tests: tests/test_ttq_layer.cpp (finite differences of a conv net's loss).
#pragma once

#include "engine/tensor.h"
#include "kernels/scale_grad.h"

namespace ttq::kernels {

// requires latent F32 (any shape), wp and wn F32 with one element each (the
// learnable scales, kept > 0 by the caller), all on one device; 0 <= t <= 1.
// ensures Wq of latent's shape with Wq = +Wp on {W > delta}, -Wn on {W < -delta},
// 0 elsewhere, delta = float(t) * max|W|. When grad mode is on and any input
// requires a gradient, records the backward (docs/ttq.md, "Backward"):
//   dL/dW = Wp*G on P, Wn*G on N, G on Z;  dL/dWp = sum_P G;
//   dL/dWn = -sum_N G (Exact) or +sum_N G (Seed).
// delta is held by the recorded node, so the backward uses the forward's sets.
Tensor ternary_weight(const Tensor& latent, const Tensor& wp, const Tensor& wn, double t,
                      WnGradMode mode = WnGradMode::Exact);

}  // namespace ttq::kernels
