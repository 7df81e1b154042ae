// Whole-model inference on packed 2-bit weights (see models/packed.h), for any
// graph of supported nodes: loading a packed file into the kernels' layouts
// (BatchNorms folded into per-channel affines), one plan per input shape
// compiled by models/packed_compiler.cpp (its header lists the passes), and
// running plans, on CUDA captured into one CUDA graph. Tests:
// tests/test_packed_model.cpp, tests/test_graph.cpp.
#include <array>
#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "engine/cuda/runtime.h"
#include "engine/io/values.h"
#include "engine/ops/ops.h"
#include "kernels/packed_format.h"
#include "kernels/packed_ops.h"
#include "models/packed.h"
#include "models/packed_internal.h"
#include "models/packed_plan.h"

namespace ttq::models {

using namespace detail;

void PackedModel::Impl::run(Plan& p) {
  auto eager = [&] {
    for (auto& step : p.steps) step();
  };
  const bool graphs =
      device.is_cuda() && options.cuda_graph_max_batch > 0 && p.n <= options.cuda_graph_max_batch;
  if (graphs && !p.graph_failed) {
    // The first run of a shape is eager (and checks every launch); the second captures.
    if (!p.graph.captured() && p.runs > 0) p.graph_failed = !p.graph.capture(eager);
    if (p.graph.captured()) {
      p.graph.launch();
      ++graph_replays;
      return;
    }
  }
  ++p.runs;
  eager();
}

// ---- PackedModel ----------------------------------------------------------------------------

PackedModel::PackedModel(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
PackedModel::~PackedModel() = default;

std::unique_ptr<PackedModel> PackedModel::load(const std::string& path, const std::string& arch_flag,
                                               Device device, const PackedRunOptions& options) {
  io::SafeTensors st = io::read_safetensors(path);
  return from_tensors(st.tensors(), st.metadata(), arch_flag, device, path, options);
}

std::unique_ptr<PackedModel> PackedModel::from_tensors(const io::NamedTensors& tensors,
                                                       const io::Metadata& meta, const std::string& arch_flag,
                                                       Device device, const std::string& source,
                                                       const PackedRunOptions& options) {
  auto fmt = meta.find("format");
  TTQ_INPUT_CHECK(fmt != meta.end() && fmt->second == kPackedFormat)
      << source << ": not a packed model (metadata format is '" << (fmt == meta.end() ? "none" : fmt->second)
      << "', expected '" << kPackedFormat << "')";
  auto mit = meta.find("model");
  const std::string arch = resolve_arch(mit == meta.end() ? "" : mit->second, arch_flag, source);
  auto impl = std::make_unique<Impl>();
  impl->arch = arch;
  impl->source = source;
  impl->device = device;
  impl->meta = meta;
  impl->options = options;
  impl->config = config_of(arch, tensors, meta, source);
  impl->graph = build_graph(arch, impl->config);
  const Graph& g = impl->graph;
  impl->min_size = g.min_input_size();
  const std::set<std::string> qnames = quantizable_names(g);

  std::map<std::string, const Tensor*> file;
  for (const auto& [name, t] : tensors) file[name] = &t;
  std::set<std::string> used;
  auto fetch = [&](const std::string& name, DType dtype, const Shape& shape, bool scalar) -> const Tensor& {
    auto it = file.find(name);
    TTQ_INPUT_CHECK(it != file.end()) << source << ": missing tensor " << io::quoted_name(name);
    const Tensor& t = *it->second;
    const bool shape_ok = scalar ? t.numel() == 1 && t.dim() <= 1 : t.shape() == shape;
    TTQ_INPUT_CHECK(t.dtype() == dtype && shape_ok)
        << source << ": tensor " << io::quoted_name(name) << " is " << dtype_name(t.dtype()) << " "
        << shape_str(t.shape()) << ", expected " << dtype_name(dtype) << " "
        << (scalar ? "scalar" : shape_str(shape));
    used.insert(name);
    return t;
  };
  std::map<std::string, Tensor> host;  // F32 tensors by name (CPU)
  // Int8 activations (docs/formats.md, "Packed model"): metadata act_bits = 8 and a
  // scale and zero point per quantized layer; a file without act_bits is float-only.
  const auto act_bits = meta.find("act_bits");
  const bool has_act = act_bits != meta.end();
  TTQ_INPUT_CHECK(!has_act || act_bits->second == "8")
      << source << ": metadata act_bits is '" << act_bits->second << "' (8 expected, or no entry)";
  for (const auto& [name, shape] : g.state_shapes()) {
    const std::string layer = layer_of(name, ".weight", qnames);
    if (!layer.empty() && has_act) {
      fetch(layer + ".act_scale", DType::F32, {}, true);
      fetch(layer + ".act_zero_point", DType::I32, {}, true);
    }
    if (layer.empty()) {
      const Tensor& t = fetch(name, DType::F32, shape, false);
      const bool non_negative = detail::ends_with(name, ".running_var");  // BatchNorm variances
      const std::string why = io::load_value_problem(t, DType::F32, non_negative);
      TTQ_INPUT_CHECK(why.empty()) << source << ": tensor " << io::quoted_name(name) << " " << why;
      host[name] = t;
      continue;
    }
    fetch(layer + ".codes", DType::U8, {kernels::packed::packed_bytes(shape_numel(shape))}, false);
    fetch(layer + ".wp", DType::F32, {}, true);
    fetch(layer + ".wn", DType::F32, {}, true);
  }
  for (const auto& [name, t] : tensors)
    TTQ_INPUT_CHECK(used.count(name))
        << source << ": unexpected tensor " << io::quoted_name(name) << " for " << arch;

  for (int i = 0; i < g.size(); ++i) {
    const Node& n = g.node(i);
    if (n.kind == NodeKind::Conv2d && qnames.count(n.name) && has_act) {
      const float s = file.at(n.name + ".act_scale")->to(DType::F32).data<float>()[0];
      const int32_t z = file.at(n.name + ".act_zero_point")->contiguous().data<int32_t>()[0];
      TTQ_INPUT_CHECK(std::isfinite(s) && s > 0 && z >= -128 && z <= 127)
          << source << ": layer " << n.name << " has activation scale " << s << " and zero point " << z
          << " (a finite positive scale and a zero point in [-128, 127] expected)";
      impl->act[i] = {s, z};
    }
    if (n.kind == NodeKind::Conv2d && qnames.count(n.name)) {
      const Tensor& codes = *file.at(n.name + ".codes");
      const float wp = file.at(n.name + ".wp")->to(DType::F32).data<float>()[0];
      const float wn = file.at(n.name + ".wn")->to(DType::F32).data<float>()[0];
      TTQ_INPUT_CHECK(std::isfinite(wp) && std::isfinite(wn) && wp > 0 && wn > 0)
          << source << ": layer " << n.name << " has scales Wp = " << wp << ", Wn = " << wn
          << " (finite positive values expected)";
      const Shape shape = {n.conv.out_channels, n.conv.in_channels / n.conv.groups, n.conv.kernel,
                           n.conv.kernel};
      kernels::PackedConvWeight w = kernels::PackedConvWeight::from_codes(
          codes, shape, wp, wn, device, source + ": layer " + n.name, n.conv.groups);
      if (n.conv.dilation == 1) {
        impl->packed.emplace(i, std::move(w));
        if (n.conv.bias) impl->packed_bias[i] = {Tensor(), host.at(n.name + ".bias").contiguous().to(device)};
      } else {
        // The packed kernels have no dilation: the layer runs as a float conv of its ternary values.
        impl->weight[i] = w.decode().contiguous();
        if (n.conv.bias) impl->bias[i] = host.at(n.name + ".bias").contiguous().to(device);
      }
    } else if (n.kind == NodeKind::Conv2d || n.kind == NodeKind::Linear) {
      impl->weight[i] = host.at(n.name + ".weight").contiguous().to(device);
      const bool has_bias = n.kind == NodeKind::Conv2d ? n.conv.bias : n.bias;
      if (has_bias) impl->bias[i] = host.at(n.name + ".bias").contiguous().to(device);
    } else if (n.kind == NodeKind::BatchNorm2d) {
      const Tensor w = host.at(n.name + ".weight"), b = host.at(n.name + ".bias");
      const Tensor mean = host.at(n.name + ".running_mean"), var = host.at(n.name + ".running_var");
      const int64_t c = n.channels;
      Tensor scale = Tensor::empty({c}), shift = Tensor::empty({c});
      for (int64_t k = 0; k < c; ++k) {
        const double s = double(w.data<float>()[k]) / std::sqrt(double(var.data<float>()[k]) + n.eps);
        scale.data<float>()[k] = static_cast<float>(s);
        shift.data<float>()[k] =
            static_cast<float>(double(b.data<float>()[k]) - double(mean.data<float>()[k]) * s);
      }
      impl->bn[i] = {scale.to(device), shift.to(device)};
    }
  }
  // The precision: Auto is Int8 where the file holds scales and the device is the CPU.
  Precision prec = options.precision;
  if (prec == Precision::Auto) prec = has_act && device.is_cpu() ? Precision::Int8 : Precision::Float;
  TTQ_INPUT_CHECK(prec != Precision::Int8 || has_act)
      << source << ": precision int8 needs activation scales, and this packed file has none (pack it with "
      << "ttq_pack --act-bits 8 --calibrate DATA, or run it with precision float)";
  TTQ_INPUT_CHECK(prec != Precision::Int8 || device.is_cpu())
      << source << ": precision int8 runs on the CPU only (the CUDA runner has no int8 path yet); "
      << "use --device cpu or --precision float";
  impl->precision = prec;
  if (prec == Precision::Int8)
    for (const auto& [i, w] : impl->packed)
      impl->int8.emplace(i, kernels::Int8ConvWeight::from_packed(w, device));
  return std::unique_ptr<PackedModel>(new PackedModel(std::move(impl)));
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::Auto: return "auto";
    case Precision::Float: return "float";
    case Precision::Int8: return "int8";
  }
  return "?";
}

Precision parse_precision(const std::string& text, const std::string& flag) {
  for (Precision p : {Precision::Auto, Precision::Float, Precision::Int8})
    if (text == precision_name(p)) return p;
  TTQ_INPUT_ERROR() << flag << ": expected auto, float or int8, got '" << text << "'";
}

const std::string& PackedModel::arch() const { return m_impl->arch; }
const ModelConfig& PackedModel::config() const { return m_impl->config; }
Device PackedModel::device() const { return m_impl->device; }
const io::Metadata& PackedModel::metadata() const { return m_impl->meta; }
std::string PackedModel::metadata_value(const std::string& key) const {
  auto it = m_impl->meta.find(key);
  return it == m_impl->meta.end() ? "" : it->second;
}
int PackedModel::quantized_layers() const { return static_cast<int>(m_impl->packed.size()); }
Precision PackedModel::precision() const { return m_impl->precision; }
bool PackedModel::has_int8_scales() const { return !m_impl->act.empty(); }
int64_t PackedModel::graph_replays() const { return m_impl->graph_replays; }

int64_t PackedModel::weight_bytes() const {
  int64_t b = 0;
  for (const auto& [name, w] : m_impl->packed) b += w.bytes();
  for (const auto& [name, w] : m_impl->int8) b += w.bytes();
  for (const auto& [i, t] : m_impl->weight) b += static_cast<int64_t>(t.nbytes());
  for (const auto& [i, t] : m_impl->bias) b += static_cast<int64_t>(t.nbytes());
  for (const auto& [i, a] : m_impl->packed_bias) b += static_cast<int64_t>(a.shift.nbytes());
  for (const auto& [i, a] : m_impl->bn) b += static_cast<int64_t>(a.scale.nbytes() + a.shift.nbytes());
  return b;
}

void PackedModel::check_input(const Shape& x, const std::string& what) const {
  const int64_t min = m_impl->min_size;
  TTQ_INPUT_CHECK(x.size() == 4 && x[0] >= 1 && x[1] == m_impl->config.in_channels &&
                  m_impl->graph.accepts(x[2], x[3]))
      << what << ": shape " << shape_str(x) << " does not fit " << m_impl->arch << " (expected [N, "
      << m_impl->config.in_channels << ", H, W] with N >= 1 and H, W >= " << min << ")";
}

int64_t PackedModel::plan_steps(int64_t n, int64_t h, int64_t w) {
  check_input({n, m_impl->config.in_channels, h, w}, "plan_steps");
  const std::array<int64_t, 4> key{n, h, w, 0};
  auto it = m_impl->plans.find(key);
  if (it != m_impl->plans.end()) return static_cast<int64_t>(it->second->steps.size());
  return static_cast<int64_t>(m_impl->build(n, h, w)->steps.size());
}

Tensor PackedModel::forward(const Tensor& x_in) {
  check_input(x_in.shape(), "packed " + m_impl->arch + " input");
  TTQ_CHECK(x_in.dtype() == DType::F32 || x_in.dtype() == DType::F64)
      << "PackedModel::forward: F32 input expected, got " << x_in.str();
  return m_impl->forward(x_in, false);
}

void PackedModel::observe_conv_inputs(const Tensor& x,
                                      const std::function<void(const std::string&, const Tensor&)>& fn) {
  check_input(x.shape(), "packed " + m_impl->arch + " calibration input");
  TTQ_CHECK(m_impl->device.is_cpu()) << "observe_conv_inputs: CPU only";
  const Graph& g = m_impl->graph;
  m_impl->observer = [&](int node, const Tensor& v) { fn(g.node(node).name, v); };
  try {
    m_impl->forward(x, true);
  } catch (...) {
    m_impl->observer = nullptr;
    throw;
  }
  m_impl->observer = nullptr;
}

Tensor PackedModel::Impl::forward(const Tensor& x_in, bool observe) {
  const std::array<int64_t, 4> key{x_in.size(0), x_in.size(2), x_in.size(3), observe ? 1 : 0};
  auto it = plans.find(key);
  if (it == plans.end()) {
    if (plans.size() >= 8) plans.clear();
    auto plan = build(key[0], key[1], key[2], observe);
    // Under ops::set_poison_outputs (tests), every buffer starts as NaN, so a step
    // that leaves part of its output unwritten shows in the logits.
    if (ops::poison_outputs())
      for (Tensor& b : plan->buffers) b.fill_(NAN);
    plan->n = key[0];
    plan->h = key[1];
    plan->w = key[2];
    it = plans.emplace(key, std::move(plan)).first;
  }
  Plan& p = *it->second;
  p.input.copy_(x_in.dtype() == DType::F32 ? x_in : x_in.to(DType::F32));
  run(p);
  return device.is_cpu() ? p.logits.clone() : p.logits.to(Device::cpu());
}

}  // namespace ttq::models
