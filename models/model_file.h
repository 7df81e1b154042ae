// A model from a weights file: a checkpoint, a TTQ checkpoint or a plain
// import (safetensors), built with the architecture its metadata names.
// Tests: tests/test_seed_parity.cpp, tests/test_infer_images.cpp.
#pragma once

#include <string>

#include "engine/device.h"
#include "engine/io/safetensors.h"
#include "models/model.h"

namespace ttq::models {

// A weights file's tensors and metadata: a safetensors file as it is, or an ONNX
// model (path ending in .onnx) imported (models/onnx.h) with its graph
// registered and metadata "model", "model_graph" and "model_config" made up.
struct WeightsSource {
  io::NamedTensors tensors;
  io::Metadata metadata;
};
WeightsSource read_weights_source(const std::string& path);
bool is_onnx_path(const std::string& path);
std::string meta_value(const io::Metadata& meta, const std::string& key);  // "" when absent

// Reads `path` (safetensors or .onnx) and builds the model it holds, in eval mode, on `device`.
// The architecture is the metadata's "model" value, else `arch` (a mismatch of
// the two is an error); in_channels and num_classes come from the weights. A
// training checkpoint's optimizer / scheduler state and TTQ training state
// (latent weights, scales) are skipped; packed models are refused (they run
// through models/packed.h). Every defect is one ttq::InputError line naming the file.
ModelPtr load_model_file(const std::string& path, const std::string& arch, Device device);
// The same from a file's content already read or parsed (a file held in memory:
// io::parse_safetensors); messages name `source`.
ModelPtr load_model_tensors(const WeightsSource& st, const std::string& arch, Device device,
                            const std::string& source);

}  // namespace ttq::models
