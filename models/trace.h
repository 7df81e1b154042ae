// Layer tracing for model summaries: model code runs each leaf layer through
// models::call(), which records the layer and its input / output shapes while
// a TraceScope is active on the thread (and costs one branch otherwise).
// Used by models/summary.cpp; tested in tests/test_models.cpp.
#pragma once

#include <vector>

#include "engine/nn/module.h"

namespace ttq::models {

struct LayerTrace {
  const nn::Module* module = nullptr;
  Shape input;
  Shape output;
};

// Records every models::call() on this thread while alive. Not nestable.
class TraceScope {
 public:
  TraceScope();
  ~TraceScope();
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;
  const std::vector<LayerTrace>& layers() const { return m_layers; }

 private:
  std::vector<LayerTrace> m_layers;
};

// m.forward(x), recorded when a TraceScope is active.
Tensor call(nn::Module& m, const Tensor& x);
// Records a layer applied outside call() (e.g. inside a fused path).
void trace_layer(const nn::Module& m, const Shape& input, const Shape& output);

}  // namespace ttq::models
