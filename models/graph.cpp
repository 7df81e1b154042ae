// The model graph (see models/graph.h). Tests: tests/test_graph.cpp.
#include "models/graph.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <sstream>

#include "engine/error.h"
#include "models/architectures.h"
#include "models/model.h"

namespace ttq::models {

const char* node_kind_name(NodeKind k) {
  switch (k) {
    case NodeKind::Input: return "Input";
    case NodeKind::Conv2d: return "Conv2d";
    case NodeKind::BatchNorm2d: return "BatchNorm2d";
    case NodeKind::ReLU: return "ReLU";
    case NodeKind::MaxPool2d: return "MaxPool2d";
    case NodeKind::AvgPool2d: return "AvgPool2d";
    case NodeKind::GlobalAvgPool: return "GlobalAvgPool";
    case NodeKind::Concat: return "Concat";
    case NodeKind::Add: return "Add";
    case NodeKind::Linear: return "Linear";
    case NodeKind::Flatten: return "Flatten";
    case NodeKind::Dropout: return "Dropout";
    case NodeKind::Clip: return "Clip";
  }
  return "?";
}

Graph::Graph(std::string arch, int64_t in_channels) : m_arch(std::move(arch)) {
  TTQ_CHECK(in_channels >= 1) << m_arch << ": in_channels = " << in_channels;
  Node n;
  n.kind = NodeKind::Input;
  n.name = "input";
  n.rank = 4;
  n.channels = in_channels;
  m_nodes.push_back(std::move(n));
}

const Node& Graph::in(int x) const {
  TTQ_CHECK(x >= 0 && x < size()) << m_arch << ": node " << x << " does not exist (graph has " << size()
                                  << ")";
  return m_nodes[static_cast<size_t>(x)];
}

int Graph::append(Node n) {
  for (int x : n.inputs) (void)in(x);
  m_nodes.push_back(std::move(n));
  return size() - 1;
}

int Graph::conv(int x, const std::string& name, int64_t out_channels, int kernel, int stride, int padding,
                bool bias, int groups, int dilation) {
  const Node& src = in(x);
  TTQ_CHECK(src.rank == 4) << m_arch << ": " << name << " reads a rank-" << src.rank << " value";
  TTQ_CHECK(!name.empty()) << m_arch << ": a Conv2d needs a module name";
  TTQ_CHECK(out_channels >= 1 && kernel >= 1 && stride >= 1 && padding >= 0 && dilation >= 1 && groups >= 1)
      << m_arch << ": " << name << ": bad conv attributes";
  TTQ_CHECK(src.channels % groups == 0 && out_channels % groups == 0)
      << m_arch << ": " << name << ": " << src.channels << " -> " << out_channels
      << " channels do not split into " << groups << " groups";
  Node n;
  n.kind = NodeKind::Conv2d;
  n.name = name;
  n.inputs = {x};
  n.conv = {src.channels, out_channels, kernel, stride, padding, dilation, groups, bias};
  n.rank = 4;
  n.channels = out_channels;
  return append(std::move(n));
}

int Graph::batch_norm(int x, const std::string& name, double eps, double momentum) {
  const Node& src = in(x);
  TTQ_CHECK(src.rank == 4 && !name.empty()) << m_arch << ": " << name << ": BatchNorm2d reads [N, C, H, W]";
  Node n;
  n.kind = NodeKind::BatchNorm2d;
  n.name = name;
  n.inputs = {x};
  n.eps = eps;
  n.momentum = momentum;
  n.rank = 4;
  n.channels = src.channels;
  return append(std::move(n));
}

namespace {
Node passthrough(NodeKind kind, const Node& src, int x, const std::string& label) {
  Node n;
  n.kind = kind;
  n.name = label;
  n.inputs = {x};
  n.rank = src.rank;
  n.channels = src.channels;
  return n;
}
}  // namespace

int Graph::relu(int x, const std::string& label) {
  return append(passthrough(NodeKind::ReLU, in(x), x, label));
}

int Graph::dropout(int x, double p, const std::string& label) {
  TTQ_CHECK(p >= 0 && p < 1) << m_arch << ": dropout p = " << p;
  Node n = passthrough(NodeKind::Dropout, in(x), x, label);
  n.p = p;
  return append(std::move(n));
}

int Graph::max_pool(int x, int kernel, int stride, int padding, bool ceil_mode) {
  const Node& src = in(x);
  TTQ_CHECK(src.rank == 4 && kernel >= 1 && stride >= 1 && padding >= 0 && 2 * padding <= kernel)
      << m_arch << ": bad max pool";
  Node n = passthrough(NodeKind::MaxPool2d, src, x, "");
  n.pool = {kernel, stride, padding, ceil_mode, true};
  return append(std::move(n));
}

int Graph::avg_pool(int x, int kernel, int stride, int padding, bool ceil_mode, bool count_include_pad) {
  const Node& src = in(x);
  TTQ_CHECK(src.rank == 4 && kernel >= 1 && stride >= 1 && padding >= 0 && 2 * padding <= kernel)
      << m_arch << ": bad average pool";
  Node n = passthrough(NodeKind::AvgPool2d, src, x, "");
  n.pool = {kernel, stride, padding, ceil_mode, count_include_pad};
  return append(std::move(n));
}

int Graph::global_avg_pool(int x) {
  const Node& src = in(x);
  TTQ_CHECK(src.rank == 4) << m_arch << ": global pooling reads [N, C, H, W]";
  Node n = passthrough(NodeKind::GlobalAvgPool, src, x, "");
  n.rank = 2;
  return append(std::move(n));
}

int Graph::concat(const std::vector<int>& xs, const std::string& label) {
  TTQ_CHECK(!xs.empty()) << m_arch << ": empty concat";
  Node n;
  n.kind = NodeKind::Concat;
  n.name = label;
  n.inputs = xs;
  n.rank = 4;
  for (int x : xs) {
    TTQ_CHECK(in(x).rank == 4) << m_arch << ": concat of a rank-" << in(x).rank << " value";
    n.channels += in(x).channels;
  }
  return append(std::move(n));
}

int Graph::add(int a, int b, const std::string& label) {
  const Node& na = in(a);
  const Node& nb = in(b);
  TTQ_CHECK(na.rank == nb.rank && na.channels == nb.channels)
      << m_arch << ": add of " << na.channels << " and " << nb.channels << " channels";
  Node n = passthrough(NodeKind::Add, na, a, label);
  n.inputs = {a, b};
  return append(std::move(n));
}

int Graph::linear(int x, const std::string& name, int64_t out_features, bool bias) {
  const Node& src = in(x);
  TTQ_CHECK(src.rank == 2 && src.channels >= 1 && out_features >= 1 && !name.empty())
      << m_arch << ": " << name << ": Linear reads [N, F] with F known (flatten after a global pool)";
  Node n;
  n.kind = NodeKind::Linear;
  n.name = name;
  n.inputs = {x};
  n.features_in = src.channels;
  n.features_out = out_features;
  n.bias = bias;
  n.rank = 2;
  n.channels = out_features;
  return append(std::move(n));
}

int Graph::flatten(int x, int64_t features) {
  const Node& src = in(x);
  TTQ_CHECK(features >= 0 && (src.rank == 4 || features == 0 || features == src.channels))
      << m_arch << ": flatten of " << src.channels << " features to " << features;
  Node n = passthrough(NodeKind::Flatten, src, x, "");
  // [N, C, 1, 1] after a global pool flattens to C features; otherwise the
  // feature count depends on the input size: given by the builder, or found by
  // infer_shapes().
  n.rank = 2;
  n.channels = src.rank == 2 ? src.channels : features;
  return append(std::move(n));
}

int Graph::clip(int x, double max_value, const std::string& label) {
  TTQ_CHECK(max_value > 0 && max_value < 1e30) << m_arch << ": clip to [0, " << max_value << "]";
  Node n = passthrough(NodeKind::Clip, in(x), x, label);
  n.clip_max = max_value;
  return append(std::move(n));
}

void Graph::set_output(int x) {
  const Node& n = in(x);
  TTQ_CHECK(n.rank == 2 && n.channels >= 1) << m_arch << ": the output must be logits [N, classes]";
  m_output = x;
}

std::vector<std::vector<int>> Graph::consumers() const {
  std::vector<std::vector<int>> c(m_nodes.size());
  for (int i = 0; i < size(); ++i)
    for (int x : m_nodes[i].inputs) c[static_cast<size_t>(x)].push_back(i);
  return c;
}

std::string Graph::canonical_name(const std::string& name) const {
  if (m_aliases.empty()) return name;
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    const size_t dot = name.find('.', start);
    parts.push_back(name.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  bool changed = false;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    for (const NameAlias& a : m_aliases) {
      if (parts[i].rfind(a.after_prefix, 0) == 0 && parts[i + 1] == a.from) {
        parts[i + 1] = a.to;
        changed = true;
        break;
      }
    }
  }
  if (!changed) return name;
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? "." : "") + parts[i];
  return out;
}

// ---- shapes

namespace {

// PyTorch's pooled / convolved size, or 0 when the window does not fit.
int64_t window_out(int64_t in, int kernel, int stride, int pad, int dilation, bool ceil_mode) {
  const int64_t span = in + 2 * pad - static_cast<int64_t>(dilation) * (kernel - 1) - 1;
  if (span < 0) return 0;
  int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
  // PyTorch: with ceil_mode the last window must start inside the input or the left padding.
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

}  // namespace

std::vector<Shape> Graph::infer_shapes(const Shape& input) const {
  TTQ_CHECK(m_output >= 0) << m_arch << ": graph without output";
  TTQ_INPUT_CHECK(input.size() == 4 && input[0] >= 1 && input[1] == in_channels() && input[2] >= 1 &&
                  input[3] >= 1)
      << m_arch << ": input " << shape_str(input) << " is not [N, " << in_channels() << ", H, W]";
  std::vector<Shape> s(m_nodes.size());
  s[0] = input;
  const int64_t n = input[0];
  for (size_t i = 1; i < m_nodes.size(); ++i) {
    const Node& node = m_nodes[i];
    const Shape& x = s[static_cast<size_t>(node.inputs[0])];
    auto too_small = [&](const std::string& what) {
      TTQ_INPUT_ERROR() << m_arch << ": input " << input[2] << "x" << input[3] << " is too small: " << what
                        << " " << (node.name.empty() ? std::string(node_kind_name(node.kind)) : node.name)
                        << " sees " << x[2] << "x" << x[3];
    };
    switch (node.kind) {
      case NodeKind::Input: break;
      case NodeKind::Conv2d: {
        const ConvAttrs& c = node.conv;
        const int64_t ho = window_out(x[2], c.kernel, c.stride, c.padding, c.dilation, false);
        const int64_t wo = window_out(x[3], c.kernel, c.stride, c.padding, c.dilation, false);
        if (ho < 1 || wo < 1) too_small("conv");
        s[i] = {n, c.out_channels, ho, wo};
        break;
      }
      case NodeKind::MaxPool2d:
      case NodeKind::AvgPool2d: {
        const PoolAttrs& p = node.pool;
        const int64_t ho = window_out(x[2], p.kernel, p.stride, p.padding, 1, p.ceil_mode);
        const int64_t wo = window_out(x[3], p.kernel, p.stride, p.padding, 1, p.ceil_mode);
        if (ho < 1 || wo < 1) too_small("pool after");
        s[i] = {n, x[1], ho, wo};
        break;
      }
      case NodeKind::GlobalAvgPool: s[i] = {n, x[1]}; break;
      case NodeKind::Concat: {
        int64_t c = 0;
        for (int j : node.inputs) {
          const Shape& xj = s[static_cast<size_t>(j)];
          if (xj[2] != x[2] || xj[3] != x[3])
            TTQ_INPUT_ERROR() << m_arch << ": input " << input[2] << "x" << input[3] << " gives concat "
                              << node.name << " inputs of " << shape_str(x) << " and " << shape_str(xj);
          c += xj[1];
        }
        s[i] = {n, c, x[2], x[3]};
        break;
      }
      case NodeKind::Add: {
        const Shape& b = s[static_cast<size_t>(node.inputs[1])];
        if (b != x)
          TTQ_INPUT_ERROR() << m_arch << ": input " << input[2] << "x" << input[3] << " gives add "
                            << node.name << " inputs " << shape_str(x) << " and " << shape_str(b);
        s[i] = x;
        break;
      }
      case NodeKind::Linear:
        if (x.size() != 2 || x[1] != node.features_in)
          TTQ_INPUT_ERROR() << m_arch << ": input " << input[2] << "x" << input[3] << " gives " << node.name
                            << " " << shape_str(x) << ", expected [N, " << node.features_in << "]";
        s[i] = {n, node.features_out};
        break;
      case NodeKind::Flatten:
        s[i] = {n, shape_numel(x) / n};
        if (node.channels > 0 && s[i][1] != node.channels)
          TTQ_INPUT_ERROR() << m_arch << ": input " << input[2] << "x" << input[3] << " gives flatten "
                            << shape_str(x) << " = " << s[i][1] << " features, the graph was built for "
                            << node.channels;
        break;
      case NodeKind::BatchNorm2d:
      case NodeKind::ReLU:
      case NodeKind::Clip:
      case NodeKind::Dropout: s[i] = x; break;
    }
  }
  return s;
}

bool Graph::accepts(int64_t h, int64_t w) const {
  try {
    (void)infer_shapes({1, in_channels(), h, w});
    return true;
  } catch (const InputError&) {
    return false;
  }
}

int64_t Graph::min_input_size() const {
  for (int64_t size = 1; size <= 65536; ++size)
    if (accepts(size, size)) return size;
  TTQ_THROW() << m_arch << ": no input size up to 65536 fits";
}

// ---- the TTQ rule

std::vector<int> Graph::first_layers() const {
  const auto cons = consumers();
  std::vector<char> seen(m_nodes.size(), 0);
  std::vector<int> stack = {0}, out;
  while (!stack.empty()) {
    const int i = stack.back();
    stack.pop_back();
    for (int c : cons[static_cast<size_t>(i)]) {
      if (seen[static_cast<size_t>(c)]) continue;
      seen[static_cast<size_t>(c)] = 1;
      const NodeKind k = m_nodes[static_cast<size_t>(c)].kind;
      if (k == NodeKind::Conv2d) {
        out.push_back(c);
      } else if (k != NodeKind::Linear) {
        stack.push_back(c);
      }
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int> Graph::classifiers() const {
  std::vector<char> seen(m_nodes.size(), 0);
  std::vector<int> stack = {m_output}, out;
  seen[static_cast<size_t>(m_output)] = 1;
  while (!stack.empty()) {
    const int i = stack.back();
    stack.pop_back();
    const NodeKind k = m_nodes[static_cast<size_t>(i)].kind;
    if (k == NodeKind::Conv2d || k == NodeKind::Linear) {
      out.push_back(i);
      continue;
    }
    for (int x : m_nodes[static_cast<size_t>(i)].inputs) {
      if (seen[static_cast<size_t>(x)]) continue;
      seen[static_cast<size_t>(x)] = 1;
      stack.push_back(x);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int> Graph::quantizable_convs() const {
  const std::vector<int> first = first_layers(), cls = classifiers();
  std::vector<int> out;
  for (int i = 0; i < size(); ++i) {
    if (m_nodes[static_cast<size_t>(i)].kind != NodeKind::Conv2d) continue;
    if (std::binary_search(first.begin(), first.end(), i) || std::binary_search(cls.begin(), cls.end(), i))
      continue;
    out.push_back(i);
  }
  return out;
}

// ---- parameters

std::vector<std::pair<std::string, Shape>> Graph::state_shapes() const {
  std::vector<std::pair<std::string, Shape>> out;
  for (const Node& n : m_nodes) {
    switch (n.kind) {
      case NodeKind::Conv2d:
        out.push_back(
            {n.name + ".weight",
             {n.conv.out_channels, n.conv.in_channels / n.conv.groups, n.conv.kernel, n.conv.kernel}});
        if (n.conv.bias) out.push_back({n.name + ".bias", {n.conv.out_channels}});
        break;
      case NodeKind::BatchNorm2d:
        for (const char* s : {".weight", ".bias", ".running_mean", ".running_var"})
          out.push_back({n.name + s, {n.channels}});
        break;
      case NodeKind::Linear:
        out.push_back({n.name + ".weight", {n.features_out, n.features_in}});
        if (n.bias) out.push_back({n.name + ".bias", {n.features_out}});
        break;
      default: break;
    }
  }
  return out;
}

int64_t Graph::num_parameters() const {
  int64_t total = 0;
  for (const auto& [name, shape] : state_shapes()) {
    const bool buffer = name.size() > 13 && (name.compare(name.size() - 13, 13, ".running_mean") == 0 ||
                                             name.compare(name.size() - 12, 12, ".running_var") == 0);
    if (!buffer) total += shape_numel(shape);
  }
  return total;
}

// ---- registry

namespace {

struct Registry {
  std::mutex mutex;
  std::vector<std::pair<std::string, GraphBuilder>> builders;
};

Registry& registry() {
  static Registry* r = [] {
    auto* reg = new Registry;
    for (auto& [name, builder] : builtin_architectures()) reg->builders.emplace_back(name, builder);
    return reg;
  }();
  return *r;
}

}  // namespace

void register_architecture(const std::string& name, GraphBuilder builder) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (const auto& [n, b] : r.builders)
    TTQ_CHECK(n != name) << "architecture '" << name << "' is registered twice";
  r.builders.emplace_back(name, std::move(builder));
}

std::vector<std::string> architecture_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> out;
  for (const auto& [n, b] : r.builders) out.push_back(n);
  return out;
}

bool has_architecture(const std::string& name) {
  for (const auto& n : architecture_names())
    if (n == name) return true;
  return false;
}

Graph build_graph(const std::string& name, const ModelConfig& config) {
  GraphBuilder builder;
  std::string known;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    for (const auto& [n, b] : r.builders) {
      known += (known.empty() ? "" : ", ") + n;
      if (n == name) builder = b;
    }
  }
  TTQ_INPUT_CHECK(builder != nullptr) << "unknown model '" << name << "' (known: " << known << ")";
  check_config(config, name);
  Graph g = builder(config);
  TTQ_CHECK(g.output() >= 0) << name << ": the builder set no output";
  TTQ_CHECK(g.in_channels() == config.in_channels && g.num_classes() == config.num_classes)
      << name << ": the builder ignored the config's channels or classes";
  return g;
}

}  // namespace ttq::models
