// ONNX in and out: a CNN exported by torch.onnx (opsets 9 to 21) read onto a
// models::Graph with its weights under parameter names, and a graph with its
// weights written back as an ONNX model that onnxruntime and PyTorch load. Built on
// Debian's ONNX protobuf classes (libonnx-dev) when CMake finds them
// (TTQ_HAS_ONNX); without them every entry throws an InputError saying so.
// Supported operators: onnx_supported_ops(). docs/formats.md, "ONNX".
// Tests: tests/test_onnx.cpp (hand-made models, errors, round trips),
// tests/test_onnx_torchvision.cpp (torchvision networks against PyTorch);
// fuzzing: fuzz/fuzz_onnx.cpp.
#pragma once

#include <cstdint>
#include <string>

#include "engine/io/safetensors.h"
#include "models/graph.h"
#include "models/model.h"

namespace ttq::models {

// True when this build reads and writes ONNX.
bool onnx_available();
// The operators the importer maps, for messages and --help.
std::string onnx_supported_ops();

struct OnnxImport {
  Graph graph{"onnx", 1};
  // Parameters and BN statistics under the graph's state-dict names
  // ("<module>.weight", ...), F32 on the CPU, in Graph::state_shapes() order.
  io::NamedTensors tensors;
  // in_channels and num_classes from the graph, input_size the input's height.
  ModelConfig config;
  int64_t input_h = 0, input_w = 0;  // the input's spatial size (0 when symbolic)
};

// Reads an ONNX model. The architecture is named "onnx:<file stem>" (import_onnx_file)
// or `arch`. Module names come from the initializers' names where they are
// PyTorch parameter names ("layer1.0.conv1.weight" -> "layer1.0.conv1"), else from
// the node's scope ("/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1"), else
// "<op>_<k>". Every defect (not protobuf, an unsupported operator or attribute,
// a cycle, a missing or misshapen initializer, dims beyond the limits, external
// data) is one ttq::InputError naming `source` and, where there is one, the node
// and its operator. Nothing outside the bytes is read.
OnnxImport import_onnx(const void* data, size_t size, const std::string& source, const std::string& arch);
OnnxImport import_onnx_file(const std::string& path);

// The bytes of an ONNX model (opset 13, IR version 7) computing `g` in eval mode
// with `tensors` (a state dict of g: F32 under g's names; extra names ignored) as
// initializers under the same names. Input "input" [N, C, h, w] (N symbolic),
// output "logits" [N, classes]. Throws ttq::InputError when a tensor is missing
// or misshapen.
std::string export_onnx(const Graph& g, const io::NamedTensors& tensors, int64_t h, int64_t w);
// The same, written atomically to `path`.
void write_onnx_file(const std::string& path, const Graph& g, const io::NamedTensors& tensors, int64_t h,
                     int64_t w);

}  // namespace ttq::models
