// ONNX export of a model file (see models/export.h). Tests: tests/test_onnx.cpp.
#include "models/export.h"

#include <filesystem>

#include "engine/io/write_file.h"
#include "kernels/pack.h"
#include "models/model_file.h"
#include "models/onnx.h"
#include "models/packed.h"
#include "models/packed_internal.h"

namespace ttq::models {

ExportReport export_onnx_file(const std::string& in, const std::string& out, const std::string& arch_flag) {
  TTQ_INPUT_CHECK(!io::same_file(in, out)) << "--out " << out << " is the --in file; export to another file";
  TTQ_INPUT_CHECK(onnx_available()) << "--out " << out
                                    << ": this build writes no ONNX (libonnx-dev was not found when it was "
                                       "configured)";
  ExportReport r;
  Graph graph("?", 1);
  io::NamedTensors tensors;
  int64_t size = 0;
  if (is_packed_file(in)) {
    const io::SafeTensors st = io::read_safetensors(in);
    // Validates the whole file (codes, scales, names) the way inference does.
    auto packed = PackedModel::from_tensors(st.tensors(), st.metadata(), arch_flag, Device::cpu(), in);
    graph = build_graph(packed->arch(), packed->config());
    size = packed->config().input_size;
    std::map<std::string, Tensor> file(st.tensors().begin(), st.tensors().end());
    const std::set<std::string> q = detail::quantizable_names(graph);
    for (const auto& [name, shape] : graph.state_shapes()) {
      const std::string layer = detail::layer_of(name, ".weight", q);
      if (layer.empty()) {
        tensors.emplace_back(name, file.at(name));
      } else {
        tensors.emplace_back(name, kernels::decode_packed(file.at(layer + ".codes"), shape,
                                                          file.at(layer + ".wp"), file.at(layer + ".wn")));
      }
    }
  } else {
    // Checkpoints (TTQ: the ternary values), weights, ONNX files: the float model.
    ModelPtr model = load_model_file(in, arch_flag, Device::cpu());
    graph = model->graph();
    size = model->config().input_size;
    tensors = model->state_dict();
  }
  write_onnx_file(out, graph, tensors, size, size);
  r.arch = graph.arch();
  r.tensors = static_cast<int64_t>(tensors.size());
  r.input_size = size;
  std::error_code ec;
  r.output_file_bytes = static_cast<int64_t>(std::filesystem::file_size(out, ec));
  return r;
}

}  // namespace ttq::models
