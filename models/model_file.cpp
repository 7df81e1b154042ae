// A model from a weights file (models/model_file.h).
#include "models/model_file.h"

#include <nlohmann/json.hpp>

#include "engine/io/safetensors.h"
#include "models/graph_io.h"
#include "models/onnx.h"
#include "models/packed_internal.h"

namespace ttq::models {

std::string meta_value(const io::Metadata& meta, const std::string& key) {
  auto it = meta.find(key);
  return it == meta.end() ? "" : it->second;
}

bool is_onnx_path(const std::string& path) {
  return path.size() > 5 && path.compare(path.size() - 5, 5, ".onnx") == 0;
}

WeightsSource read_weights_source(const std::string& path) {
  WeightsSource w;
  if (is_onnx_path(path)) {
    OnnxImport im = import_onnx_file(path);
    const std::string arch = register_graph(im.graph, path);
    describe_arch(w.metadata, arch);
    nlohmann::json j;
    j["in_channels"] = im.config.in_channels;
    j["input_size"] = im.config.input_size;
    j["num_classes"] = im.config.num_classes;
    w.metadata["model_config"] = j.dump();
    w.tensors = std::move(im.tensors);
    return w;
  }
  io::SafeTensors st = io::read_safetensors(path);
  w.tensors = st.tensors();
  w.metadata = st.metadata();
  return w;
}

ModelPtr load_model_file(const std::string& path, const std::string& arch_flag, Device device) {
  return load_model_tensors(read_weights_source(path), arch_flag, device, path);
}

ModelPtr load_model_tensors(const WeightsSource& st, const std::string& arch_flag, Device device,
                            const std::string& path) {
  TTQ_INPUT_CHECK(meta_value(st.metadata, "format") != "ttq-packed-2bit")
      << path << ": a packed model (format ttq-packed-2bit) has no float layers to build";
  const std::string arch = detail::resolve_arch(st.metadata, arch_flag, path);
  ModelConfig config = detail::config_of(arch, st.tensors, st.metadata, path);
  Generator gen(0);
  ModelPtr model = create(arch, config, gen);
  LoadOptions options;
  options.ignore_ttq_state = true;
  options.ignore_optimizer_state = true;
  load_weights(*model, st.tensors, path, options);
  model->eval();
  model->to(device);
  return model;
}

}  // namespace ttq::models
