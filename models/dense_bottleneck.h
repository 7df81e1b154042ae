// The memory-efficient dense bottleneck: conv1x1(relu(batch_norm_train(concat(features))))
// saving only the feature maps and the BN statistics (Pleiss et al. 2017), used
// by models::Model for every Concat -> BatchNorm2d -> ReLU -> 1x1 Conv2d chain in
// training. Tests: tests/test_models.cpp (bit-identical to the unfused chain).
#pragma once

#include <vector>

#include "engine/nn/layers.h"

namespace ttq::models {

Tensor dense_bottleneck(const std::vector<Tensor>& features, nn::BatchNorm2d& norm, nn::Conv2d& conv);

}  // namespace ttq::models
