// The packed runner's insides, shared by its compiler (models/packed_compiler.cpp:
// a graph and an input shape in, a plan out) and the runner (models/packed_model.cpp:
// loading, running plans, CUDA graphs). Not part of the public API (models/packed.h).
#pragma once

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/cuda/runtime.h"
#include "kernels/int8_conv.h"
#include "kernels/packed_conv.h"
#include "models/graph.h"
#include "models/packed.h"

namespace ttq::models {

namespace detail {

// A BatchNorm folded for eval: y = x * scale + shift (a null scale is 1: a
// packed conv's bias is an affine with its shift only).
struct Affine {
  Tensor scale, shift;
};

// A compiled input shape: buffers allocated once and the steps that fill them.
struct Plan {
  int64_t n = 0, h = 0, w = 0;
  Tensor input, logits;
  std::vector<Tensor> buffers;
  std::vector<std::function<void()>> steps;
  int runs = 0;
  cuda::CapturedWork graph;  // the steps as one CUDA graph, once captured
  bool graph_failed = false;
};

}  // namespace detail

struct PackedModel::Impl {
  std::string arch, source;
  ModelConfig config;
  Graph graph{"", 1};
  Device device;
  io::Metadata meta;
  PackedRunOptions options;
  int64_t min_size = 1;
  std::map<int, kernels::PackedConvWeight> packed;  // quantized convs, by node
  std::map<int, Tensor> weight, bias;               // float convs and linears, by node
  std::map<int, detail::Affine> bn;                 // by node
  std::map<int, detail::Affine> packed_bias;        // quantized convs with a bias: {null, bias}
  // Int8 activations: each packed conv's input quantization (from the file) and, when
  // the model runs Int8, its weights in the int8 kernels' layout.
  std::map<int, kernels::Int8Quant> act;
  std::map<int, kernels::Int8ConvWeight> int8;
  Precision precision = Precision::Float;  // resolved: Float or Int8
  // Plans by (n, h, w, mode): mode 0 runs `precision`, mode 1 the Float path with the
  // observer called on every packed conv's quantization input (calibration).
  std::map<std::array<int64_t, 4>, std::unique_ptr<detail::Plan>> plans;
  std::function<void(int node, const Tensor& v)> observer;
  int64_t graph_replays = 0;

  std::unique_ptr<detail::Plan> build(int64_t n, int64_t h, int64_t w, bool observe = false) const;
  void run(detail::Plan& p);
  Tensor forward(const Tensor& x, bool observe);
};

}  // namespace ttq::models
