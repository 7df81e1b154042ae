// CPU-only fused BatchNorm2d (training) + ReLU over a channel concatenation
// that is never materialised: the memory-efficient dense layer of
// models/densenet.cpp reads its input feature maps in place through these.
// Defined in engine/cpu/batchnorm.cpp with the same row kernels as
// batch_norm_forward_train / relu_forward / relu_backward / batch_norm_backward,
// so the results are bit-identical to that unfused sequence on a concatenated
// copy (tests/test_models.cpp: MemoryEfficientDenseLayerMatchesNaive*).
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace ttq::cpu {

// x = concat(parts, dim 1); every part is [N, C_i, H, W] with dense samples (any
// batch stride), same N, H, W and dtype; sum C_i = C.
// requires: weight, bias, running stats, save_* are contiguous [C]; z contiguous [N, C, H, W].
// ensures:  z = relu(batch_norm_train(x)) exactly as batch_norm_forward_train then
//           relu_forward; running stats updated once; save_mean / save_invstd as
//           batch_norm_forward_train; save_scale[c] = the per-channel multiplier the
//           forward used (weight * invstd rounded once), for batch_norm_relu_recompute.
void batch_norm_relu_forward_train(const std::vector<Tensor>& parts, const Tensor& weight, const Tensor& bias,
                                   Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                   Tensor& z, Tensor& save_mean, Tensor& save_invstd, Tensor& save_scale);

// ensures: z bit-identical to what batch_norm_relu_forward_train wrote for the same
//          parts, from its save_mean / save_scale and the same bias (no statistics pass).
void batch_norm_relu_recompute(const std::vector<Tensor>& parts, const Tensor& save_mean,
                               const Tensor& save_scale, const Tensor& bias, Tensor& z);

// Backward of z = relu(batch_norm_train(concat(parts))) given gz and z:
// g = gz where z > 0 (else 0), then batch_norm_backward(g, x, ...).
// requires: gz, z contiguous [N, C, H, W]; gparts[i] contiguous with the shape of parts[i].
// ensures:  gparts[i] = the channels of dL/dx belonging to part i; gweight, gbias [C].
void batch_norm_relu_backward(const Tensor& gz, const Tensor& z, const std::vector<Tensor>& parts,
                              const Tensor& weight, const Tensor& save_mean, const Tensor& save_invstd,
                              std::vector<Tensor>& gparts, Tensor& gweight, Tensor& gbias);

}  // namespace ttq::cpu
