// ttq_pack --out FILE.onnx: a trained model as an ONNX file. The input may be a
// full-precision or TTQ checkpoint (the TTQ layers' ternary values), plain
// weights, an ONNX file, or a packed 2-bit file (its codes expanded to
// {-Wn, 0, +Wp} floats). The ONNX model runs in eval mode (BN running statistics,
// no dropout) under the state-dict names (models/onnx.h, export_onnx).
// Tests: tests/test_onnx.cpp.
#pragma once

#include <cstdint>
#include <string>

namespace ttq::models {

struct ExportReport {
  std::string arch;
  int64_t tensors = 0;
  int64_t input_size = 0;  // the exported input is [N, C, input_size, input_size]
  int64_t output_file_bytes = 0;
};
// Reads `in` (architecture from its metadata or `arch_flag`) and writes `out`
// atomically. Errors: one ttq::InputError line naming the file.
ExportReport export_onnx_file(const std::string& in, const std::string& out, const std::string& arch_flag);

}  // namespace ttq::models
