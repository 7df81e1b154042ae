// Multi-tensor fused optimiser updates for CUDA: one launch updates every
// parameter of a group (the per-tensor sgd_step / adam_step of backend.h
// launch once per tensor, which dominates for models with hundreds of small
// BN and bias tensors). Same math, element for element, as the per-tensor
// kernels in optim.cu; tested against them by tests/test_cuda_train_step.cpp.
#pragma once

#ifdef TTQ_HAS_CUDA
#include <vector>

#include "engine/tensor.h"

namespace ttq::cuda {

// requires params[i], grads[i], momentum_bufs[i] (when momentum != 0) contiguous
// F32 tensors of equal size on one CUDA device; momentum_bufs may be empty when
// momentum == 0.
// ensures for each i the update of backend.h's sgd_step with the same arguments.
void sgd_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                    const std::vector<Tensor>& momentum_bufs, double lr, double momentum, double weight_decay,
                    bool nesterov, bool first_step);

// requires as above for params, grads, exp_avgs, exp_avg_sqs; step >= 1.
// ensures for each i the update of backend.h's adam_step with the same arguments.
void adam_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                     const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs, double lr,
                     double beta1, double beta2, double eps, double weight_decay, int64_t step);

}  // namespace ttq::cuda
#endif  // TTQ_HAS_CUDA
