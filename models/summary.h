// Model summaries: every node of the model's graph with its output shape,
// parameter count and FLOPs for a given input size (shape inference only, no
// forward pass). Used by `ttq_infer --summary`. Tests: tests/test_models.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/model.h"

namespace ttq::models {

struct SummaryRow {
  std::string name;  // dotted module name
  std::string type;  // "Conv2d(3, 48, kernel_size=3, ...)"
  Shape output;
  int64_t params = 0;  // the layer's own parameters
  int64_t flops = 0;   // forward FLOPs for the whole input batch
};

struct Summary {
  std::string arch;
  Shape input, output;
  std::vector<SummaryRow> rows;  // in execution order
  int64_t params = 0;            // all parameters of the model
  int64_t flops = 0;             // sum over rows
  std::string text() const;      // a table, one row per line, and totals
};

// FLOP convention: a multiply-add counts 2 (conv, linear); BN in eval 2 per
// output element, ReLU 1 per output element, pooling 1 per input element,
// add 1 per output element, dropout and concatenation 0.
// requires input = [N, in_channels, H, W] accepted by model.check_input.
Summary summarize(Model& model, const Shape& input);

// Parses "CxHxW" (e.g. "3x56x56"); throws ttq::InputError naming `flag`.
Shape parse_chw(const std::string& text, const std::string& flag);

}  // namespace ttq::models
