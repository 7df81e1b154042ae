// Internal helpers of the op front end (engine/ops/*.cpp): output allocation
// (optionally poisoned so that an output a backend forgets to write shows as
// NaN), argument checks whose messages name the shapes involved, and views
// used by the composite backward rules. Not part of the public API.
#pragma once

#include <initializer_list>
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops/ops.h"

namespace ttq::ops::detail {

// Uninitialised output of an op; NaN-filled (floats) or 0xAB-patterned
// (integers) when output poisoning is on (ops::set_poison_outputs).
Tensor new_output(const Shape& shape, DType dtype, Device device);

// "conv2d: x [2, 3, 7, 7]" style operand description.
std::string describe(const char* name, const Tensor& t);

// `t` is a floating tensor on `like`'s device with `like`'s dtype (skipped when undefined).
void check_operand(const char* op, const char* name, const Tensor& t, const char* like_name,
                   const Tensor& like);
void check_floating(const char* op, const char* name, const Tensor& t);

// An NCHW operand as the backend wants it: contiguous, except that on the CPU a
// tensor whose samples are each dense (a channel slice of a wider buffer) is
// passed as is, without a copy.
Tensor dense_nchw(const Tensor& x);

// g (numel 1) seen as `shape` with all strides 0, for copies that broadcast it.
Tensor broadcast_scalar(const Tensor& g, const Shape& shape);
// col [N,1] seen as [N,C] (stride 0 along C).
Tensor broadcast_column(const Tensor& col, int64_t c);

// The backend function of the tensor's device.
#define TTQ_OP_BACKEND(t, fn) TTQ_BACKEND((t).device(), fn)

}  // namespace ttq::ops::detail
