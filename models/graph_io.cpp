// Graphs as data (see models/graph_io.h). Tests: tests/test_onnx.cpp.
#include "models/graph_io.h"

#include <cmath>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "models/model.h"
#include "models/onnx.h"

namespace ttq::models {

namespace {

using json = nlohmann::ordered_json;

constexpr int kMaxNodes = 100000;
constexpr int64_t kMaxChannels = 1 << 16;
constexpr int kMaxWindow = 1 << 12;  // kernel, stride, padding, dilation
constexpr int64_t kMaxParameters = int64_t(1) << 31;

NodeKind kind_from(const std::string& op, const std::string& source) {
  for (NodeKind k : {NodeKind::Conv2d, NodeKind::BatchNorm2d, NodeKind::ReLU, NodeKind::MaxPool2d,
                     NodeKind::AvgPool2d, NodeKind::GlobalAvgPool, NodeKind::Concat, NodeKind::Add,
                     NodeKind::Linear, NodeKind::Flatten, NodeKind::Dropout, NodeKind::Clip})
    if (op == node_kind_name(k)) return k;
  TTQ_INPUT_ERROR() << source << ": unknown op '" << op << "'";
}

// Reads j[key] as an integer in [lo, hi].
int64_t get_int(const json& j, const char* key, int64_t lo, int64_t hi, const std::string& where) {
  TTQ_INPUT_CHECK(j.contains(key) && j[key].is_number_integer())
      << where << ": \"" << key << "\" missing or not an integer";
  const int64_t v = j[key].get<int64_t>();
  TTQ_INPUT_CHECK(v >= lo && v <= hi)
      << where << ": \"" << key << "\" = " << v << " outside [" << lo << ", " << hi << "]";
  return v;
}
double get_num(const json& j, const char* key, double lo, double hi, const std::string& where) {
  TTQ_INPUT_CHECK(j.contains(key) && j[key].is_number())
      << where << ": \"" << key << "\" missing or not a number";
  const double v = j[key].get<double>();
  TTQ_INPUT_CHECK(std::isfinite(v) && v >= lo && v <= hi)
      << where << ": \"" << key << "\" = " << v << " outside [" << lo << ", " << hi << "]";
  return v;
}
bool get_bool(const json& j, const char* key, const std::string& where) {
  TTQ_INPUT_CHECK(j.contains(key) && j[key].is_boolean())
      << where << ": \"" << key << "\" missing or not a boolean";
  return j[key].get<bool>();
}
std::string get_str(const json& j, const char* key, const std::string& where) {
  TTQ_INPUT_CHECK(j.contains(key) && j[key].is_string())
      << where << ": \"" << key << "\" missing or not a string";
  return j[key].get<std::string>();
}

// The graph of `doc`; `classes` >= 1 overrides the one classifier's outputs.
Graph build(const json& doc, const std::string& source, int64_t in_channels, int64_t classes, int classifier,
            double dropout) {
  const std::string arch = get_str(doc, "arch", source);
  TTQ_INPUT_CHECK(!arch.empty() && arch.size() <= 200) << source << ": bad arch name";
  TTQ_INPUT_CHECK(doc.contains("nodes") && doc["nodes"].is_array()) << source << ": \"nodes\" missing";
  const json& nodes = doc["nodes"];
  TTQ_INPUT_CHECK(!nodes.empty() && nodes.size() < kMaxNodes)
      << source << ": " << nodes.size() << " nodes (1 to " << kMaxNodes - 1 << " allowed)";
  Graph g(arch, in_channels);
  for (size_t k = 0; k < nodes.size(); ++k) {
    const json& n = nodes[k];
    const int index = static_cast<int>(k) + 1;
    const std::string where = source + ": node " + std::to_string(index);
    TTQ_INPUT_CHECK(n.is_object()) << where << ": not an object";
    const NodeKind kind = kind_from(get_str(n, "op", where), where);
    const std::string name = get_str(n, "name", where);
    TTQ_INPUT_CHECK(name.size() <= 500) << where << ": name longer than 500 characters";
    TTQ_INPUT_CHECK(n.contains("in") && n["in"].is_array() && !n["in"].empty() && n["in"].size() <= 100000)
        << where << ": \"in\" missing or empty";
    std::vector<int> in;
    for (const json& x : n["in"]) {
      TTQ_INPUT_CHECK(x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() < index)
          << where << ": input " << x.dump() << " is not an earlier node";
      in.push_back(static_cast<int>(x.get<int64_t>()));
    }
    const size_t arity = kind == NodeKind::Concat ? in.size() : kind == NodeKind::Add ? 2 : 1;
    TTQ_INPUT_CHECK(in.size() == arity)
        << where << ": " << in.size() << " inputs for a " << node_kind_name(kind);
    const Node& src = g.node(in[0]);
    auto need_rank = [&](int rank) {
      TTQ_INPUT_CHECK(src.rank == rank) << where << ": a " << node_kind_name(kind) << " reads a rank-"
                                        << src.rank << " value, expected rank " << rank;
    };
    auto need_name = [&] {
      TTQ_INPUT_CHECK(!name.empty()) << where << ": a " << node_kind_name(kind) << " needs a name";
    };
    switch (kind) {
      case NodeKind::Input: break;
      case NodeKind::Conv2d: {
        need_rank(4);
        need_name();
        int64_t out = get_int(n, "out_channels", 1, kMaxChannels, where);
        if (index == classifier && classes > 0) out = classes;
        const int kernel = static_cast<int>(get_int(n, "kernel", 1, kMaxWindow, where));
        const int stride = static_cast<int>(get_int(n, "stride", 1, kMaxWindow, where));
        const int padding = static_cast<int>(get_int(n, "padding", 0, kMaxWindow, where));
        const int dilation = static_cast<int>(get_int(n, "dilation", 1, kMaxWindow, where));
        const int groups = static_cast<int>(get_int(n, "groups", 1, kMaxChannels, where));
        TTQ_INPUT_CHECK(src.channels % groups == 0 && out % groups == 0)
            << where << ": " << src.channels << " -> " << out << " channels do not split into " << groups
            << " groups";
        g.conv(in[0], name, out, kernel, stride, padding, get_bool(n, "bias", where), groups, dilation);
        break;
      }
      case NodeKind::BatchNorm2d:
        need_rank(4);
        need_name();
        g.batch_norm(in[0], name, get_num(n, "eps", 1e-12, 1, where), get_num(n, "momentum", 0, 1, where));
        break;
      case NodeKind::ReLU: g.relu(in[0], name); break;
      case NodeKind::Clip: g.clip(in[0], get_num(n, "max", 1e-6, 1e6, where), name); break;
      case NodeKind::Dropout: {
        double p = get_num(n, "p", 0, 0.999, where);
        if (dropout >= 0) p = dropout;
        g.dropout(in[0], p, name);
        break;
      }
      case NodeKind::MaxPool2d:
      case NodeKind::AvgPool2d: {
        need_rank(4);
        const int kernel = static_cast<int>(get_int(n, "kernel", 1, kMaxWindow, where));
        const int stride = static_cast<int>(get_int(n, "stride", 1, kMaxWindow, where));
        const int padding = static_cast<int>(get_int(n, "padding", 0, kMaxWindow, where));
        TTQ_INPUT_CHECK(2 * padding <= kernel) << where << ": padding " << padding << " over half the kernel";
        const bool ceil = get_bool(n, "ceil_mode", where);
        if (kind == NodeKind::MaxPool2d)
          g.max_pool(in[0], kernel, stride, padding, ceil);
        else
          g.avg_pool(in[0], kernel, stride, padding, ceil, get_bool(n, "count_include_pad", where));
        break;
      }
      case NodeKind::GlobalAvgPool: need_rank(4), g.global_avg_pool(in[0]); break;
      case NodeKind::Concat:
        for (int x : in) TTQ_INPUT_CHECK(g.node(x).rank == 4) << where << ": a Concat of a rank-2 value";
        g.concat(in, name);
        break;
      case NodeKind::Add:
        TTQ_INPUT_CHECK(g.node(in[0]).rank == g.node(in[1]).rank &&
                        g.node(in[0]).channels == g.node(in[1]).channels)
            << where << ": an Add of " << g.node(in[0]).channels << " and " << g.node(in[1]).channels
            << " channels";
        g.add(in[0], in[1], name);
        break;
      case NodeKind::Linear: {
        need_rank(2);
        need_name();
        TTQ_INPUT_CHECK(src.channels >= 1) << where << ": a Linear after a flatten of unknown size";
        int64_t out = get_int(n, "out_features", 1, kMaxChannels * 16, where);
        if (index == classifier && classes > 0) out = classes;
        TTQ_INPUT_CHECK(src.channels <= kMaxChannels * 1024)
            << where << ": " << src.channels << " input features";
        g.linear(in[0], name, out, get_bool(n, "bias", where));
        break;
      }
      case NodeKind::Flatten: {
        const int64_t features = get_int(n, "features", 0, kMaxChannels * 1024, where);
        TTQ_INPUT_CHECK(src.rank == 4 || features == 0 || features == src.channels)
            << where << ": flatten of " << src.channels << " features to " << features;
        g.flatten(in[0], features);
        break;
      }
    }
  }
  const int out = static_cast<int>(get_int(doc, "output", 1, g.size() - 1, source));
  TTQ_INPUT_CHECK(g.node(out).rank == 2 && g.node(out).channels >= 1)
      << source << ": the output node " << out << " is not logits [N, classes]";
  g.set_output(out);
  if (doc.contains("aliases")) {
    TTQ_INPUT_CHECK(doc["aliases"].is_array() && doc["aliases"].size() <= 100)
        << source << ": bad \"aliases\"";
    for (const json& a : doc["aliases"])
      g.add_alias({get_str(a, "after_prefix", source), get_str(a, "from", source), get_str(a, "to", source)});
  }
  int64_t params = 0;
  for (const auto& [name, shape] : g.state_shapes()) {
    params += shape_numel(shape);
    TTQ_INPUT_CHECK(params <= kMaxParameters) << source << ": more than " << kMaxParameters << " parameters";
  }
  return g;
}

struct GraphRegistry {
  std::mutex mutex;
  std::map<std::string, std::string> json_by_arch;
};
GraphRegistry& graph_registry() {
  static GraphRegistry r;
  return r;
}

}  // namespace

std::string graph_to_json(const Graph& g) {
  json doc;
  doc["format"] = "ttq-graph";
  doc["version"] = 1;
  doc["arch"] = g.arch();
  doc["in_channels"] = g.in_channels();
  doc["output"] = g.output();
  json nodes = json::array();
  for (int i = 1; i < g.size(); ++i) {
    const Node& n = g.node(i);
    json j;
    j["op"] = node_kind_name(n.kind);
    j["name"] = n.name;
    j["in"] = n.inputs;
    switch (n.kind) {
      case NodeKind::Conv2d:
        j["out_channels"] = n.conv.out_channels;
        j["kernel"] = n.conv.kernel;
        j["stride"] = n.conv.stride;
        j["padding"] = n.conv.padding;
        j["dilation"] = n.conv.dilation;
        j["groups"] = n.conv.groups;
        j["bias"] = n.conv.bias;
        break;
      case NodeKind::BatchNorm2d:
        j["eps"] = n.eps;
        j["momentum"] = n.momentum;
        break;
      case NodeKind::MaxPool2d:
      case NodeKind::AvgPool2d:
        j["kernel"] = n.pool.kernel;
        j["stride"] = n.pool.stride;
        j["padding"] = n.pool.padding;
        j["ceil_mode"] = n.pool.ceil_mode;
        if (n.kind == NodeKind::AvgPool2d) j["count_include_pad"] = n.pool.count_include_pad;
        break;
      case NodeKind::Linear:
        j["out_features"] = n.features_out;
        j["bias"] = n.bias;
        break;
      case NodeKind::Flatten: j["features"] = g.node(n.inputs[0]).rank == 4 ? n.channels : 0; break;
      case NodeKind::Dropout: j["p"] = n.p; break;
      case NodeKind::Clip: j["max"] = n.clip_max; break;
      default: break;
    }
    nodes.push_back(std::move(j));
  }
  doc["nodes"] = std::move(nodes);
  // Aliases are not readable back from a Graph; builders that need them are code.
  return doc.dump();
}

Graph graph_from_json(const std::string& text, const std::string& source, const ModelConfig* config) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const std::exception& e) {
    TTQ_INPUT_ERROR() << source << ": the graph description is not JSON (" << e.what() << ")";
  }
  TTQ_INPUT_CHECK(doc.is_object() && doc.value("format", "") == "ttq-graph")
      << source << ": not a graph description (format ttq-graph)";
  TTQ_INPUT_CHECK(doc.value("version", 0) == 1)
      << source << ": graph description version " << doc.value("version", 0) << ", this build reads 1";
  const int64_t stored_in = get_int(doc, "in_channels", 1, kMaxInChannels, source);
  try {
    Graph g = build(doc, source, stored_in, 0, -1, -1);
    if (config == nullptr) return g;
    const int64_t want_in = config->in_channels, want_cls = config->num_classes;
    int classifier = -1;
    if (want_cls != g.num_classes()) {
      const auto cls = g.classifiers();
      TTQ_INPUT_CHECK(cls.size() == 1)
          << source << ": the graph has " << g.num_classes() << " classes and " << cls.size()
          << " classifier layers; it cannot be rebuilt for " << want_cls;
      classifier = cls[0];
    }
    if (want_in == stored_in && classifier < 0 && config->dropout < 0) return g;
    Graph r = build(doc, source, want_in, want_cls, classifier, config->dropout);
    TTQ_INPUT_CHECK(r.num_classes() == want_cls)
        << source << ": the graph cannot be rebuilt for " << want_cls << " classes";
    return r;
  } catch (const InputError&) {
    throw;
  } catch (const Error& e) {
    TTQ_INPUT_ERROR() << source << ": bad graph description: " << e.what();
  }
}

std::string register_graph(const Graph& g, const std::string& source) {
  const std::string text = graph_to_json(g);
  const std::string name = g.arch();
  GraphRegistry& r = graph_registry();
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.json_by_arch.find(name);
    if (it != r.json_by_arch.end()) {
      TTQ_INPUT_CHECK(it->second == text)
          << source << ": holds a graph named '" << name << "' that differs from the one already loaded";
      return name;
    }
    TTQ_INPUT_CHECK(!has_architecture(name))
        << source << ": its graph is named '" << name << "', the name of a built-in architecture";
    r.json_by_arch[name] = text;
  }
  register_architecture(name, [text, name](const ModelConfig& c) { return graph_from_json(text, name, &c); });
  return name;
}

std::string registered_graph_json(const std::string& arch) {
  GraphRegistry& r = graph_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.json_by_arch.find(arch);
  return it == r.json_by_arch.end() ? "" : it->second;
}

void describe_arch(io::Metadata& meta, const std::string& arch) {
  meta["model"] = arch;
  const std::string text = registered_graph_json(arch);
  if (!text.empty()) meta["model_graph"] = text;
}

std::string adopt_arch(const io::Metadata& meta, const std::string& source) {
  auto m = meta.find("model");
  const std::string named = m == meta.end() ? "" : m->second;
  auto it = meta.find("model_graph");
  if (it == meta.end()) return named;
  const std::string name = register_graph(graph_from_json(it->second, source + ": model_graph"), source);
  TTQ_INPUT_CHECK(named.empty() || named == name)
      << source << ": the metadata names model '" << named << "' but its model_graph is '" << name << "'";
  return name;
}

bool is_model_path(const std::string& spec) {
  const bool onnx = spec.size() > 5 && spec.compare(spec.size() - 5, 5, ".onnx") == 0;
  return onnx || spec.find('/') != std::string::npos;
}

std::string resolve_model(const std::string& spec, const std::string& flag) {
  if (!is_model_path(spec)) return spec;
  TTQ_INPUT_CHECK(spec.size() > 5 && spec.compare(spec.size() - 5, 5, ".onnx") == 0)
      << flag << " " << spec
      << ": a model file must be an ONNX file (.onnx); checkpoints go to --init / --weights";
  return register_graph(import_onnx_file(spec).graph, spec);
}

}  // namespace ttq::models
