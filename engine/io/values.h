// The check every loader of stored values applies before copying them into a
// model or an optimizer (nn::Module::load_state_dict, packed models, optimizer
// state, TTQ scales): dtype, finiteness, sign. Tests: tests/test_models.cpp,
// tests/test_packed_model.cpp, tests/test_optim.cpp.
#pragma once

#include <string>

#include "engine/tensor.h"

namespace ttq::io {

// Why `src` cannot be loaded into a tensor of dtype `slot`, or "" when it can.
// A floating slot takes F32 and F64 values (F64 rounds to nearest, as PyTorch's
// copy_ does), each finite and inside the slot's range; an integer tensor there
// means the file is not what the model expects, and F16 / BF16 are refused too
// (the engine does not convert them). An integer slot takes integer tensors.
// With `non_negative` a value below zero is refused (a running variance, Adam's
// second moment: their square roots are taken).
// Examples: "holds NaN at element 17", "is I64, expected F32 values".
std::string load_value_problem(const Tensor& src, DType slot, bool non_negative = false);

}  // namespace ttq::io
