// Layer tracing for summaries (see models/trace.h).
#include "models/trace.h"

namespace ttq::models {

namespace {
thread_local std::vector<LayerTrace>* g_trace = nullptr;
}  // namespace

TraceScope::TraceScope() {
  TTQ_CHECK(g_trace == nullptr) << "TraceScope is not nestable";
  g_trace = &m_layers;
}

TraceScope::~TraceScope() { g_trace = nullptr; }

Tensor call(nn::Module& m, const Tensor& x) {
  Tensor y = m.forward(x);
  if (g_trace != nullptr) g_trace->push_back({&m, x.shape(), y.shape()});
  return y;
}

void trace_layer(const nn::Module& m, const Shape& input, const Shape& output) {
  if (g_trace != nullptr) g_trace->push_back({&m, input, output});
}

}  // namespace ttq::models
