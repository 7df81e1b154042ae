// libFuzzer target for the ONNX front end (models/onnx.h): protobuf parsing,
// initializer checks, the topological sort and every operator's attribute checks.
// Any input must either import or throw ttq::InputError; anything else (a crash,
// a sanitizer report, ttq::Error or another exception) is a bug. An imported
// graph must survive its JSON description (models/graph_io.h) unchanged and infer
// shapes for its own input size. Build: -DTTQ_FUZZ=ON with clang++ (see
// fuzz/CMakeLists.txt); run: fuzz_onnx -max_total_time=60 CORPUS.
#include "models/graph_io.h"
#include "models/onnx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ttq::models::OnnxImport im;
  try {
    im = ttq::models::import_onnx(data, size, "fuzz.onnx", "onnx:fuzz");
  } catch (const ttq::InputError&) {
    return 0;
  }
  const std::string json = ttq::models::graph_to_json(im.graph);
  if (ttq::models::graph_to_json(ttq::models::graph_from_json(json, "round-trip")) != json) __builtin_trap();
  const int64_t h = im.input_h ? im.input_h : 224, w = im.input_w ? im.input_w : 224;
  (void)im.graph.infer_shapes({1, im.graph.in_channels(), h, w});
  return 0;
}
