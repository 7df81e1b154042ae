// The model graph: one typed description of a CNN from which both the trainable
// model (models/model.h) and the packed 2-bit model (models/packed.h) are built.
// Nodes are appended in execution order; each names the module whose parameters
// it owns with its PyTorch state-dict prefix ("features.denseblock1.denselayer1.norm.1"),
// so weights exported from PyTorch load with no mapping. Architectures are
// builders of a Graph (models/densenet.cpp, models/squeezenet.cpp); which
// convolutions TTQ quantizes is a rule over the graph's structure (below), never
// an architecture's name. docs/architecture.md, "The model graph". Tests:
// tests/test_graph.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace ttq::models {

enum class NodeKind : uint8_t {
  Input,
  Conv2d,       // params: weight [out, in/groups, k, k], bias [out] when bias
  BatchNorm2d,  // params: weight, bias [c]; buffers: running_mean, running_var [c]
  ReLU,
  MaxPool2d,
  AvgPool2d,
  GlobalAvgPool,  // [N, C, H, W] -> [N, C]
  Concat,         // along channels, inputs in order
  Add,            // elementwise, equal shapes
  Linear,         // params: weight [out, in], bias [out] when bias; input [N, in]
  Flatten,        // [N, ...] -> [N, prod(...)]
  Dropout,        // identity in eval
  Clip,           // min(max(x, 0), clip_max): ReLU6 and its kin (ONNX Clip with min 0)
};
const char* node_kind_name(NodeKind k);

struct ConvAttrs {
  int64_t in_channels = 0, out_channels = 0;
  int kernel = 1, stride = 1, padding = 0, dilation = 1, groups = 1;
  bool bias = false;
};
struct PoolAttrs {
  int kernel = 2, stride = 2, padding = 0;
  bool ceil_mode = false;
  bool count_include_pad = true;  // AvgPool2d
};

struct Node {
  NodeKind kind = NodeKind::Input;
  // Parametrised nodes: the module name, prefix of the state-dict names
  // ("<name>.weight"). Others: a readable label (may be empty).
  std::string name;
  std::vector<int> inputs;                    // node indices, all smaller than this node's
  ConvAttrs conv;                             // Conv2d
  PoolAttrs pool;                             // MaxPool2d, AvgPool2d
  int64_t features_in = 0, features_out = 0;  // Linear
  bool bias = false;                          // Linear
  double eps = 1e-5, momentum = 0.1;          // BatchNorm2d
  double p = 0;                               // Dropout
  double clip_max = 6;                        // Clip
  // What the node produces: channels for [N, C, H, W] outputs (rank 4), features
  // for [N, F] outputs (rank 2). Filled in as the node is added.
  int rank = 4;
  int64_t channels = 0;
};

// One renaming rule for imports: within a name, the segment after a segment that
// starts with `after_prefix` is renamed from `from` to `to` (torchvision's
// "denselayer1.norm1." for the seed's "denselayer1.norm.1.").
struct NameAlias {
  std::string after_prefix, from, to;
};

class Graph {
 public:
  // Node 0 is the input [N, in_channels, H, W].
  Graph(std::string arch, int64_t in_channels);

  // ---- building. Each returns the new node's index; errors (a channel count that
  // does not fit, an input index out of range) throw ttq::Error: builders are code.
  int conv(int x, const std::string& name, int64_t out_channels, int kernel, int stride = 1, int padding = 0,
           bool bias = false, int groups = 1, int dilation = 1);
  int batch_norm(int x, const std::string& name, double eps = 1e-5, double momentum = 0.1);
  int relu(int x, const std::string& label = "");
  int max_pool(int x, int kernel, int stride, int padding = 0, bool ceil_mode = false);
  int avg_pool(int x, int kernel, int stride, int padding = 0, bool ceil_mode = false,
               bool count_include_pad = true);
  int global_avg_pool(int x);
  int concat(const std::vector<int>& xs, const std::string& label = "");
  int add(int a, int b, const std::string& label = "");
  int linear(int x, const std::string& name, int64_t out_features, bool bias = true);
  // [N, ...] -> [N, F]. `features` is F when known at build time (a flatten of a
  // feature map whose size the builder knows, read by a Linear); 0 when it follows
  // a global pool (F = channels) or is found by infer_shapes().
  int flatten(int x, int64_t features = 0);
  // min(max(x, 0), max_value), max_value > 0 (ReLU6: 6).
  int clip(int x, double max_value, const std::string& label = "");
  int dropout(int x, double p, const std::string& label = "");
  // The node whose value the model returns (logits [N, classes]).
  void set_output(int x);
  void add_alias(NameAlias alias) { m_aliases.push_back(std::move(alias)); }

  // ---- reading
  const std::string& arch() const { return m_arch; }
  int64_t in_channels() const { return m_nodes[0].channels; }
  const std::vector<Node>& nodes() const { return m_nodes; }
  const Node& node(int i) const { return m_nodes.at(static_cast<size_t>(i)); }
  int size() const { return static_cast<int>(m_nodes.size()); }
  int output() const { return m_output; }
  int64_t num_classes() const { return m_nodes.at(static_cast<size_t>(m_output)).channels; }
  // consumers()[i]: the nodes that read node i, in order (the output node has no
  // consumer inside the graph).
  std::vector<std::vector<int>> consumers() const;
  // The name an imported tensor has under this graph's naming (aliases applied).
  std::string canonical_name(const std::string& name) const;

  // ---- shapes
  // Output shape of every node for an input [n, in_channels, h, w]; throws
  // ttq::InputError naming the first node whose window does not fit.
  std::vector<Shape> infer_shapes(const Shape& input) const;
  // True when every node accepts an h x w input.
  bool accepts(int64_t h, int64_t w) const;
  // Smallest H = W the graph accepts.
  int64_t min_input_size() const;

  // ---- the TTQ rule (structure, not names)
  // First layers: the Conv2d nodes reachable from the input without passing through
  // another Conv2d or Linear (they see the raw image: kept in full precision, frozen
  // in the TTQ phase). Classifiers: the Conv2d and Linear nodes from which the
  // output is reachable without passing through another Conv2d or Linear (kept in
  // full precision). Quantizable: every other Conv2d, in node order.
  std::vector<int> first_layers() const;
  std::vector<int> classifiers() const;
  std::vector<int> quantizable_convs() const;

  // ---- parameters, as the trainable model registers them (name, shape), in node
  // order: "<name>.weight", "<name>.bias", "<name>.running_mean", "<name>.running_var".
  std::vector<std::pair<std::string, Shape>> state_shapes() const;
  int64_t num_parameters() const;  // buffers excluded

 private:
  int append(Node n);
  const Node& in(int x) const;

  std::string m_arch;
  std::vector<Node> m_nodes;
  int m_output = -1;
  std::vector<NameAlias> m_aliases;
};

// ---- architectures: a registry of graph builders

struct ModelConfig;
using GraphBuilder = std::function<Graph(const ModelConfig&)>;
// Registers a builder under `name` (static registration from the builder's file,
// or a test). Throws ttq::Error when the name is taken.
void register_architecture(const std::string& name, GraphBuilder builder);
// Names in registration order.
std::vector<std::string> architecture_names();
bool has_architecture(const std::string& name);
// The architecture's graph for `config`. Throws ttq::InputError for an unknown
// name (listing the known ones) or a config it cannot build.
Graph build_graph(const std::string& name, const ModelConfig& config);

}  // namespace ttq::models
