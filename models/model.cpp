// Model base, registry, and weight import (see models/model.h).
// Tests: tests/test_models.cpp, tests/test_seed_parity.cpp.
#include "models/model.h"

#include <map>
#include <set>

#include "engine/ops/ops.h"
#include "models/graph_io.h"

namespace ttq::models {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The module a node needs (null for Input, Concat and Add).
std::shared_ptr<nn::Module> make_module(const Node& n, Generator& gen) {
  switch (n.kind) {
    case NodeKind::Conv2d: {
      const ConvAttrs& c = n.conv;
      return std::make_shared<nn::Conv2d>(c.in_channels, c.out_channels, c.kernel, c.stride, c.padding,
                                          c.bias, gen, c.dilation, c.groups);
    }
    case NodeKind::BatchNorm2d: return std::make_shared<nn::BatchNorm2d>(n.channels, n.eps, n.momentum);
    case NodeKind::Linear: return std::make_shared<nn::Linear>(n.features_in, n.features_out, n.bias, gen);
    case NodeKind::ReLU: return std::make_shared<nn::ReLU>();
    case NodeKind::MaxPool2d:
      return std::make_shared<nn::MaxPool2d>(n.pool.kernel, n.pool.stride, n.pool.padding, n.pool.ceil_mode);
    case NodeKind::AvgPool2d:
      return std::make_shared<nn::AvgPool2d>(n.pool.kernel, n.pool.stride, n.pool.padding, n.pool.ceil_mode,
                                             n.pool.count_include_pad);
    case NodeKind::GlobalAvgPool: return std::make_shared<nn::GlobalAvgPool>();
    case NodeKind::Flatten: return std::make_shared<nn::Flatten>();
    case NodeKind::Dropout: return std::make_shared<nn::Dropout>(n.p, nn::global_generator());
    case NodeKind::Input:
    case NodeKind::Concat:
    case NodeKind::Add:
    case NodeKind::Clip: return nullptr;
  }
  return nullptr;
}

// min(max(x, 0), hi) from differentiable ops: relu(x) - relu(x - hi), exact below
// hi; above it x - (x - hi) rounds to within an ulp of hi.
Tensor clip(const Tensor& x, double hi) {
  const Tensor shift = Tensor::full(x.shape(), -hi, x.dtype(), x.device());
  return ops::sub(ops::relu(x), ops::relu(ops::add(x, shift)));
}

bool has_parameters(NodeKind k) {
  return k == NodeKind::Conv2d || k == NodeKind::BatchNorm2d || k == NodeKind::Linear;
}

}  // namespace

Model::Model(Graph graph, const ModelConfig& config, Generator& gen)
    : m_graph(std::move(graph)), m_config(config) {
  const auto& nodes = m_graph.nodes();
  const int n = m_graph.size();
  m_modules.resize(static_cast<size_t>(n));
  for (int i = 1; i < n; ++i) {
    const Node& node = nodes[static_cast<size_t>(i)];
    m_modules[static_cast<size_t>(i)] = make_module(node, gen);
    // Modules with parameters are children under their state-dict prefix; the
    // others are held here only (their names need not be unique).
    if (has_parameters(node.kind)) register_module(node.name, m_modules[static_cast<size_t>(i)]);
  }
  m_min_input = m_graph.min_input_size();
  m_last_use.assign(static_cast<size_t>(n), -1);
  for (int i = 0; i < n; ++i)
    for (int x : nodes[static_cast<size_t>(i)].inputs) m_last_use[static_cast<size_t>(x)] = i;
  m_last_use[static_cast<size_t>(m_graph.output())] = n;

  // Dense bottlenecks: Concat -> BatchNorm2d -> ReLU -> Conv2d 1x1 (stride 1, no
  // padding, no bias, one group), each value read by the next link only.
  const auto readers = m_graph.consumers();
  auto only_reader = [&](int i, NodeKind kind) -> int {
    const auto& r = readers[static_cast<size_t>(i)];
    if (r.size() != 1 || i == m_graph.output()) return -1;
    return nodes[static_cast<size_t>(r[0])].kind == kind ? r[0] : -1;
  };
  m_bottleneck_conv.assign(static_cast<size_t>(n), -1);
  for (int i = 0; i < n; ++i) {
    if (nodes[static_cast<size_t>(i)].kind != NodeKind::Concat) continue;
    const int bn = only_reader(i, NodeKind::BatchNorm2d);
    const int relu = bn < 0 ? -1 : only_reader(bn, NodeKind::ReLU);
    const int conv = relu < 0 ? -1 : only_reader(relu, NodeKind::Conv2d);
    if (conv < 0) continue;
    const ConvAttrs& c = nodes[static_cast<size_t>(conv)].conv;
    if (c.kernel == 1 && c.stride == 1 && c.padding == 0 && c.groups == 1 && c.dilation == 1 && !c.bias)
      m_bottleneck_conv[static_cast<size_t>(i)] = conv;
  }
}

void Model::train(bool on) {
  nn::Module::train(on);
  for (auto& m : m_modules)
    if (m) m->train(on);
}

Tensor Model::forward(const Tensor& x) {
  TTQ_CHECK(x.dim() == 4 && x.size(1) == m_config.in_channels)
      << arch() << ": expected input [N, " << m_config.in_channels << ", H, W], got " << shape_str(x.shape());
  const auto& nodes = m_graph.nodes();
  const int n = m_graph.size();
  const bool fuse = is_training() && m_config.memory_efficient;
  std::vector<Tensor> v(static_cast<size_t>(n));
  std::vector<char> done(static_cast<size_t>(n), 0);  // computed inside a fused chain
  v[0] = x;
  for (int i = 1; i < n; ++i) {
    const Node& node = nodes[static_cast<size_t>(i)];
    if (done[static_cast<size_t>(i)]) continue;
    std::vector<Tensor> in;
    for (int j : node.inputs) in.push_back(v[static_cast<size_t>(j)]);
    const int bottleneck = m_bottleneck_conv[static_cast<size_t>(i)];
    if (fuse && bottleneck >= 0) {
      // Concat -> BN -> ReLU -> conv as one op; the chain's BN and ReLU keep no value.
      const int relu = nodes[static_cast<size_t>(bottleneck)].inputs[0];
      const int bn = nodes[static_cast<size_t>(relu)].inputs[0];
      auto& norm = dynamic_cast<nn::BatchNorm2d&>(*m_modules[static_cast<size_t>(bn)]);
      auto& conv = dynamic_cast<nn::Conv2d&>(*m_modules[static_cast<size_t>(bottleneck)]);
      v[static_cast<size_t>(bottleneck)] =
          ops::dense_bottleneck(in, norm.weight(), norm.bias(), norm.running_mean(), norm.running_var(),
                                norm.momentum(), norm.eps(), conv.effective_weight());
      done[static_cast<size_t>(bn)] = done[static_cast<size_t>(relu)] =
          done[static_cast<size_t>(bottleneck)] = 1;
    } else {
      switch (node.kind) {
        case NodeKind::Concat: v[static_cast<size_t>(i)] = in.size() == 1 ? in[0] : ops::concat(in, 1); break;
        case NodeKind::Add: v[static_cast<size_t>(i)] = ops::add(in[0], in[1]); break;
        case NodeKind::Clip: v[static_cast<size_t>(i)] = clip(in[0], node.clip_max); break;
        default: v[static_cast<size_t>(i)] = m_modules[static_cast<size_t>(i)]->forward(in[0]); break;
      }
    }
    // Drop what no later node reads (autograd keeps what backward needs).
    for (int j : node.inputs)
      if (m_last_use[static_cast<size_t>(j)] <= i) v[static_cast<size_t>(j)] = Tensor();
  }
  return v[static_cast<size_t>(m_graph.output())];
}

std::string Model::first_conv_name() const {
  const auto first = m_graph.first_layers();
  TTQ_CHECK(!first.empty()) << arch() << ": no first conv";
  return m_graph.node(first.front()).name;
}

std::string Model::classifier_name() const {
  const auto cls = m_graph.classifiers();
  TTQ_CHECK(!cls.empty()) << arch() << ": no classifier";
  return m_graph.node(cls.back()).name;
}

nn::Conv2d& Model::first_conv() {
  return dynamic_cast<nn::Conv2d&>(*m_modules[static_cast<size_t>(m_graph.first_layers().front())]);
}

nn::Module& Model::classifier() { return *m_modules[static_cast<size_t>(m_graph.classifiers().back())]; }

std::vector<std::pair<std::string, nn::Conv2d*>> Model::quantizable_convs() {
  std::vector<std::pair<std::string, nn::Conv2d*>> out;
  for (int i : m_graph.quantizable_convs())
    out.emplace_back(m_graph.node(i).name,
                     dynamic_cast<nn::Conv2d*>(m_modules[static_cast<size_t>(i)].get()));
  return out;
}

void Model::check_input(const Shape& x, const std::string& what) const {
  const bool rank_ok = x.size() == 4 && x[0] >= 1 && x[1] == m_config.in_channels;
  TTQ_INPUT_CHECK(rank_ok && m_graph.accepts(x[2], x[3]))
      << what << ": shape " << shape_str(x) << " does not fit " << arch() << " (expected [N, "
      << m_config.in_channels << ", H, W] with N >= 1 and H, W >= " << m_min_input << ")";
}

std::vector<std::string> names() { return architecture_names(); }

void check_config(const ModelConfig& c, const std::string& what) {
  TTQ_INPUT_CHECK(c.in_channels >= 1 && c.in_channels <= kMaxInChannels)
      << what << ": in_channels " << c.in_channels << " outside [1, " << kMaxInChannels << "]";
  TTQ_INPUT_CHECK(c.num_classes >= 1 && c.num_classes <= kMaxClasses)
      << what << ": num_classes " << c.num_classes << " outside [1, " << kMaxClasses << "]";
  TTQ_INPUT_CHECK(c.input_size >= 1 && c.input_size <= kMaxInputSize)
      << what << ": input_size " << c.input_size << " outside [1, " << kMaxInputSize << "]";
  TTQ_INPUT_CHECK(c.dropout < 1) << what << ": dropout must be below 1, got " << c.dropout;
}

ModelPtr create(Graph graph, const ModelConfig& config, Generator& gen) {
  auto model = std::make_shared<Model>(std::move(graph), config, gen);
  // The seed's init: Kaiming-uniform (gain sqrt(2), fan_in) weights, zero biases.
  for (auto& [n, m] : model->named_modules()) {
    if (auto* conv = dynamic_cast<nn::Conv2d*>(m)) {
      nn::init::kaiming_uniform(conv->weight(), gen, 0);
      if (conv->has_bias()) {
        Tensor b = conv->bias();
        nn::init::constant(b, 0);
      }
    } else if (auto* lin = dynamic_cast<nn::Linear*>(m)) {
      nn::init::kaiming_uniform(lin->weight(), gen, 0);
      if (lin->has_bias()) {
        Tensor b = lin->bias();
        nn::init::constant(b, 0);
      }
    }
  }
  return model;
}

ModelPtr create(const std::string& name, const ModelConfig& config, Generator& gen) {
  return create(build_graph(name, config), config, gen);
}

void load_weights(Model& model, const io::NamedTensors& tensors, const std::string& source,
                  const LoadOptions& options) {
  std::set<std::string> convs;
  if (options.ignore_ttq_state)
    for (auto& [name, conv] : model.quantizable_convs()) convs.insert(name);
  io::NamedTensors mapped;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (options.ignore_optimizer_state &&
        (name.rfind("optimizer.", 0) == 0 || name.rfind("optimizer_scalar.", 0) == 0 ||
         name.rfind("scheduler.", 0) == 0))
      continue;
    if (options.ignore_ttq_state) {
      bool skip = false;
      for (const char* suffix : {".latent_weight", ".wp", ".wn"}) {
        if (ends_with(name, suffix) &&
            convs.count(name.substr(0, name.size() - std::string(suffix).size()))) {
          skip = true;
        }
      }
      if (skip) continue;
    }
    std::string canon = model.graph().canonical_name(name);
    TTQ_INPUT_CHECK(seen.insert(canon).second)
        << source << ": " << io::quoted_name(name) << " duplicates another tensor after name mapping";
    mapped.emplace_back(std::move(canon), t);
  }
  model.load_state_dict(mapped, /*strict=*/true, source);
}

void load_weights(Model& model, const std::string& path, const LoadOptions& options) {
  io::SafeTensors st = io::read_safetensors(path);
  load_weights(model, st.tensors(), path, options);
}

ModelConfig config_from_weights(const std::string& arch, const io::NamedTensors& tensors,
                                const std::string& source, ModelConfig base) {
  // A graph registered from a file (models/graph_io.h) as it was stored: a default
  // config may not fit it (a grouped first conv, a fixed input).
  const std::string stored = registered_graph_json(arch);
  const Graph g = stored.empty() ? build_graph(arch, base) : graph_from_json(stored, source);
  const std::string conv_name = g.node(g.first_layers().front()).name + ".weight";
  const std::string cls_name = g.node(g.classifiers().back()).name + ".weight";
  const Tensor* conv = nullptr;
  const Tensor* cls = nullptr;
  for (const auto& [name, t] : tensors) {
    const std::string canon = g.canonical_name(name);
    if (canon == conv_name) conv = &t;
    if (canon == cls_name) cls = &t;
  }
  TTQ_INPUT_CHECK(conv != nullptr) << source << ": no tensor " << conv_name << " (is this a " << arch << "?)";
  TTQ_INPUT_CHECK(cls != nullptr) << source << ": no tensor " << cls_name << " (is this a " << arch << "?)";
  TTQ_INPUT_CHECK(conv->dim() == 4 && conv->size(1) >= 1)
      << source << ": " << conv_name << " has shape " << shape_str(conv->shape())
      << ", expected [C_out, C_in, kh, kw]";
  TTQ_INPUT_CHECK(cls->dim() >= 2 && cls->size(0) >= 1)
      << source << ": " << cls_name << " has shape " << shape_str(cls->shape())
      << ", expected [classes, ...]";
  base.in_channels = conv->size(1);
  base.num_classes = cls->size(0);
  check_config(base, source + ": the weights of " + arch);
  return base;
}

}  // namespace ttq::models
