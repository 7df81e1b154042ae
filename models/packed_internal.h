// What packing (models/pack.cpp), the packed runner (models/packed_model.cpp) and
// model files (models/model_file.cpp) share: resolving a file's architecture and
// config, and which tensors belong to quantized layers. Not part of the public API.
#pragma once

#include <set>
#include <string>

#include "engine/io/safetensors.h"
#include "models/model.h"

namespace ttq::models::detail {

bool starts_with(const std::string& s, const std::string& p);
bool ends_with(const std::string& s, const std::string& p);
// The architecture of a file: its metadata's "model", else `flag`; a mismatch or
// an unknown name is an InputError naming `source`. `flag` may be a path to an
// .onnx file (models/graph_io.h, resolve_model).
std::string resolve_arch(const std::string& from_file, const std::string& flag, const std::string& source);
// The same with the file's whole metadata: a "model_graph" in it is registered first.
std::string resolve_arch(const io::Metadata& meta, const std::string& flag, const std::string& source);
// The config the weights imply, with input_size from a "model_config" entry when present.
ModelConfig config_of(const std::string& arch, const io::NamedTensors& tensors, const io::Metadata& meta,
                      const std::string& source);
// Module names of the graph's quantizable convolutions.
std::set<std::string> quantizable_names(const Graph& g);
// "<layer>.suffix" -> "<layer>" when <layer> is in `layers`, else "".
std::string layer_of(const std::string& name, const std::string& suffix, const std::set<std::string>& layers);

}  // namespace ttq::models::detail
