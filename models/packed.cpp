// Packing (ttq_pack's logic) and whole-model inference on packed 2-bit weights
// (models/packed.h). Tests: tests/test_packed_model.cpp.
//
// A PackedModel keeps the packed layers in their kernels' layouts and every other
// tensor as F32 on its device, with each BatchNorm folded into a per-channel
// scale and shift. For each input shape it builds a plan: buffers allocated once and
// a list of steps, each a kernel writing into a preallocated output, so that on CUDA
// the whole list can be captured into one graph. Fusion:
//  - DenseNet dense layer: concat -> norm.1 -> relu -> conv.1 -> norm.2 -> relu ->
//    conv.2 is two packed convs, conv.1 reading the block's shared buffer with
//    norm.1 + ReLU as its prologue and norm.2 + ReLU as its epilogue, conv.2 writing
//    its `growth` channels straight into the block buffer (no concatenation, ever);
//  - transition: norm -> relu -> conv1x1 -> avgpool 2 is one packed conv with the
//    pooling moved before the (linear, 1x1) conv: 4x fewer multiply-adds, the same
//    result up to rounding;
//  - SqueezeNet Fire: each conv takes its own BN + ReLU as prologue; the expands
//    write their halves of the concatenation in place and add the residual in the
//    epilogue;
//  - norm0 / features.1 + ReLU + max pool, the final norm + ReLU + global pool, and
//    the classifier are the fused ops of kernels/packed_ops.h, and so are the dense
//    (not quantized) first conv and SqueezeNet classifier: the engine's BLAS conv on
//    the CPU, a direct kernel on CUDA (no cuDNN workspace that could move under a
//    captured graph).
#include "models/packed.h"

#include <array>
#include <cmath>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/cuda/runtime.h"
#include "engine/io/values.h"
#include "engine/io/write_file.h"
#include "kernels/pack.h"
#include "kernels/packed_format.h"
#include "kernels/packed_ops.h"
#include "models/densenet.h"

#ifdef TTQ_HAS_CUDA
#include <cuda_runtime.h>

#include "engine/cuda/check.h"
#endif

namespace ttq::models {

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

std::string known_archs() {
  std::string s;
  for (const auto& n : names()) {
    if (!s.empty()) s += ", ";
    s += n;
  }
  return s;
}

std::string resolve_arch(const std::string& from_file, const std::string& flag, const std::string& source) {
  const std::string arch = from_file.empty() ? flag : from_file;
  TTQ_INPUT_CHECK(!arch.empty()) << source
                                 << ": no \"model\" in the metadata; name the architecture with --arch";
  TTQ_INPUT_CHECK(flag.empty() || from_file.empty() || flag == from_file)
      << source << ": the metadata says model '" << from_file << "' but --arch is '" << flag << "'";
  bool known = false;
  for (const auto& n : names()) known = known || n == arch;
  TTQ_INPUT_CHECK(known) << source << ": unknown model '" << arch << "' (known: " << known_archs() << ")";
  return arch;
}

// The config the weights imply, with input_size from a "model_config" entry when present.
ModelConfig config_of(const std::string& arch, const io::NamedTensors& tensors, const io::Metadata& meta,
                      const std::string& source) {
  ModelConfig c = config_from_weights(arch, tensors, source);
  auto it = meta.find("model_config");
  if (it != meta.end()) {
    try {
      auto j = nlohmann::json::parse(it->second);
      if (j.contains("input_size") && j["input_size"].is_number_integer() &&
          j["input_size"].get<int64_t>() >= 1)
        c.input_size = j["input_size"].get<int64_t>();
    } catch (const std::exception&) {
      // The shapes are authoritative; a malformed optional entry changes nothing.
    }
  }
  check_config(c, source + ": model_config in metadata");
  return c;
}

std::set<std::string> quantizable_names(Model& m) {
  std::set<std::string> s;
  for (const auto& [name, conv] : m.quantizable_convs()) s.insert(name);
  return s;
}

// "<layer>.suffix" -> "<layer>" when <layer> is in `layers`, else "".
std::string layer_of(const std::string& name, const std::string& suffix,
                     const std::set<std::string>& layers) {
  if (!ends_with(name, suffix)) return "";
  std::string l = name.substr(0, name.size() - suffix.size());
  return layers.count(l) ? l : "";
}

std::string dims(const Shape& s) {
  std::string r;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += 'x';
    r += std::to_string(s[i]);
  }
  return r;
}

}  // namespace

bool is_packed_file(const std::string& path) {
  const io::Header h = io::read_safetensors_header(path);
  auto it = h.metadata.find("format");
  return it != h.metadata.end() && it->second == kPackedFormat;
}

// ---- packing -------------------------------------------------------------------------

PackedContent pack_tensors(const io::NamedTensors& input, const io::Metadata& meta,
                           const std::string& arch_in, const std::string& source) {
  const std::string arch = resolve_arch(arch_in, "", source);
  // Training state that inference never needs.
  io::NamedTensors kept;
  for (const auto& [name, t] : input) {
    if (starts_with(name, "optimizer.") || starts_with(name, "optimizer_scalar.") ||
        starts_with(name, "scheduler."))
      continue;
    kept.emplace_back(canonical_name(name), t);
  }
  Generator gen(0);
  ModelPtr skeleton = create(arch, config_of(arch, kept, meta, source), gen);
  const std::set<std::string> qnames = quantizable_names(*skeleton);
  std::map<std::string, float> scale_hint;  // "<layer>.wp" / ".wn" of a TTQ checkpoint
  io::NamedTensors model_tensors;
  for (const auto& [name, t] : kept) {
    if (!layer_of(name, ".latent_weight", qnames).empty()) continue;
    if (!layer_of(name, ".wp", qnames).empty() || !layer_of(name, ".wn", qnames).empty()) {
      TTQ_INPUT_CHECK(t.numel() == 1) << source << ": " << io::quoted_name(name) << " must hold one value";
      const std::string why = io::load_value_problem(t, DType::F32);
      TTQ_INPUT_CHECK(why.empty()) << source << ": " << io::quoted_name(name) << " " << why;
      scale_hint[name] = static_cast<float>(t.item());
      continue;
    }
    model_tensors.emplace_back(name, t);
  }
  // Names and shapes exactly as the architecture expects (one line listing every problem).
  load_weights(*skeleton, model_tensors, source);
  std::map<std::string, Tensor> by_name(model_tensors.begin(), model_tensors.end());

  PackedContent out;
  out.report.arch = arch;
  for (const auto& [name, expected] : skeleton->state_dict()) {
    const Tensor t = by_name.at(name).to(Device::cpu()).to(DType::F32).contiguous();
    const std::string layer = layer_of(name, ".weight", qnames);
    if (layer.empty()) {
      out.tensors.emplace_back(name, t);
      continue;
    }
    const float* v = t.data<float>();
    const int64_t n = t.numel();
    float pos = 0, neg = 0;
    bool has_pos = false, has_neg = false;
    std::vector<uint8_t> codes(static_cast<size_t>(n));
    PackLayerReport r;
    r.name = layer;
    r.shape = t.shape();
    r.numel = n;
    for (int64_t i = 0; i < n; ++i) {
      const float x = v[i];
      TTQ_INPUT_CHECK(std::isfinite(x)) << source << ": layer " << layer << " has a non-finite weight";
      if (x > 0) {
        TTQ_INPUT_CHECK(!has_pos || x == pos)
            << source << ": layer " << layer << " holds more than three distinct values (+" << pos << " and +"
            << x << "; a ternary layer holds {+a, 0, -b})";
        pos = x;
        has_pos = true;
        codes[i] = kernels::packed::kPos;
        ++r.pos;
      } else if (x < 0) {
        TTQ_INPUT_CHECK(!has_neg || x == neg)
            << source << ": layer " << layer << " holds more than three distinct values (" << neg << " and "
            << x << "; a ternary layer holds {+a, 0, -b})";
        neg = x;
        has_neg = true;
        codes[i] = kernels::packed::kNeg;
        ++r.neg;
      } else {
        codes[i] = kernels::packed::kZero;
        ++r.zeros;
      }
    }
    auto hint = [&](const char* suffix) {
      auto it = scale_hint.find(layer + suffix);
      return it != scale_hint.end() && std::isfinite(it->second) && it->second > 0 ? it->second : 1.0f;
    };
    r.wp = has_pos ? pos : hint(".wp");
    r.wn = has_neg ? -neg : hint(".wn");
    Tensor packed = Tensor::empty({kernels::packed::packed_bytes(n)}, DType::U8);
    kernels::pack_codes_cpu(codes.data(), n, packed.data<uint8_t>());
    r.float_bytes = n * 4;
    r.packed_bytes = packed.numel() + 8;
    out.tensors.emplace_back(layer + ".codes", packed);
    out.tensors.emplace_back(layer + ".wp", Tensor::scalar(r.wp));
    out.tensors.emplace_back(layer + ".wn", Tensor::scalar(r.wn));
    out.report.quantized_weights += n;
    out.report.zeros += r.zeros;
    out.report.float_bytes += r.float_bytes;
    out.report.packed_bytes += r.packed_bytes;
    out.report.layers.push_back(std::move(r));
  }
  TTQ_INPUT_CHECK(!out.report.layers.empty()) << source << ": no quantizable layer";

  const ModelConfig& c = skeleton->config();
  out.metadata["format"] = kPackedFormat;
  out.metadata["model"] = arch;
  auto mc = meta.find("model_config");
  if (mc != meta.end()) {
    out.metadata["model_config"] = mc->second;
  } else {
    nlohmann::json j;
    j["in_channels"] = c.in_channels;
    j["input_size"] = c.input_size;
    j["num_classes"] = c.num_classes;
    out.metadata["model_config"] = j.dump();
  }
  for (const auto& [k, v] : meta)
    if (k == "classes" || k == "preprocess" || k == "data" || k == "split" || starts_with(k, "ttq.")) out.metadata[k] = v;
  out.metadata["packed_from"] = std::filesystem::path(source).filename().string();
  return out;
}

PackReport pack_model_file(const std::string& in, const std::string& out, const std::string& arch_flag) {
  TTQ_INPUT_CHECK(!io::same_file(in, out))
      << "--out " << out << " is the --in file; write the packed model to another file";
  io::SafeTensors st = io::read_safetensors(in);
  TTQ_INPUT_CHECK(st.meta("format") != kPackedFormat)
      << in << ": already a packed model (format " << kPackedFormat << ")";
  const std::string arch = resolve_arch(st.meta("model"), arch_flag, in);
  PackedContent content = pack_tensors(st.tensors(), st.metadata(), arch, in);
  io::write_safetensors(out, content.tensors, content.metadata);
  std::error_code ec;
  content.report.input_file_bytes = static_cast<int64_t>(std::filesystem::file_size(in, ec));
  content.report.output_file_bytes = static_cast<int64_t>(std::filesystem::file_size(out, ec));
  return content.report;
}

std::string format_pack_report(const PackReport& r) {
  std::ostringstream os;
  size_t w = 5;
  for (const auto& l : r.layers) w = std::max(w, l.name.size());
  os << std::left << std::setw(static_cast<int>(w)) << "layer" << std::right << std::setw(14) << "shape"
     << std::setw(8) << "zeros" << std::setw(8) << "+Wp" << std::setw(8) << "-Wn" << std::setw(12) << "Wp"
     << std::setw(12) << "Wn" << std::setw(11) << "F32 bytes" << std::setw(11) << "packed"
     << "\n";
  auto pct = [](int64_t a, int64_t b) {
    std::ostringstream s;
    s << std::fixed << std::setprecision(1) << (b ? 100.0 * double(a) / double(b) : 0.0) << "%";
    return s.str();
  };
  for (const auto& l : r.layers) {
    os << std::left << std::setw(static_cast<int>(w)) << l.name << std::right << std::setw(14)
       << dims(l.shape) << std::setw(8) << pct(l.zeros, l.numel) << std::setw(8) << pct(l.pos, l.numel)
       << std::setw(8) << pct(l.neg, l.numel) << std::setw(12) << std::setprecision(6) << l.wp
       << std::setw(12) << l.wn << std::setw(11) << l.float_bytes << std::setw(11) << l.packed_bytes << "\n";
  }
  os << r.arch << ": " << r.layers.size() << " quantized layers, " << r.quantized_weights << " weights, "
     << r.zeros << " zeros (" << pct(r.zeros, r.quantized_weights) << " of the quantized weights)\n";
  os << "quantized layers: " << r.float_bytes << " bytes as F32 -> " << r.packed_bytes << " bytes packed ("
     << std::fixed << std::setprecision(1)
     << (r.packed_bytes ? double(r.float_bytes) / double(r.packed_bytes) : 0.0) << "x smaller)\n";
  if (r.input_file_bytes > 0 && r.output_file_bytes > 0) {
    os << "file: " << r.input_file_bytes << " -> " << r.output_file_bytes << " bytes (" << std::fixed
       << std::setprecision(1) << double(r.input_file_bytes) / double(r.output_file_bytes) << "x smaller)\n";
  }
  return os.str();
}

// ---- inference ----------------------------------------------------------------------------

namespace {

// A BatchNorm folded for eval: y = x * scale + shift.
struct Affine {
  Tensor scale, shift;
};

struct FireSpec {
  int index;  // features.<index>; a pool when squeeze == 0
  int64_t squeeze = 0, e1 = 0, e3 = 0;
  bool residual = false;
};
// The seed's SqueezeNet (models/squeezenet.cpp): features.6 and .9 are max pools.
const std::vector<FireSpec> kSqueezeNet = {
    {4, 16, 64, 64, false},    {5, 16, 64, 64, true},    {6},
    {7, 32, 128, 128, false},  {8, 32, 128, 128, true},  {9},
    {10, 48, 192, 192, false}, {11, 48, 192, 192, true}, {12, 64, 256, 256, false},
    {13, 64, 256, 256, true}};

struct Plan {
  int64_t n = 0, h = 0, w = 0;
  Tensor input, logits;
  std::vector<Tensor> buffers;
  std::vector<std::function<void()>> steps;
  int runs = 0;
#ifdef TTQ_HAS_CUDA
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool graph_failed = false;
#endif
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
#ifdef TTQ_HAS_CUDA
    if (exec) TTQ_CUDA_CHECK_NOTHROW(cudaGraphExecDestroy(exec));
    if (graph) TTQ_CUDA_CHECK_NOTHROW(cudaGraphDestroy(graph));
#endif
  }
  Tensor buffer(const Shape& s, Device dev) {
    Tensor t = Tensor::empty(s, DType::F32, dev);
    buffers.push_back(t);
    return t;
  }
};

}  // namespace

struct PackedModel::Impl {
  std::string arch, source;
  ModelConfig config;
  Device device;
  io::Metadata meta;
  PackedRunOptions options;
  int64_t min_size = 1;
  DenseNetSpec densenet;                                    // when arch is a DenseNet
  std::map<std::string, Tensor> f32;                        // non-quantized tensors on the device
  std::map<std::string, kernels::PackedConvWeight> packed;  // by conv name
  std::map<std::string, Affine> bn;                         // by BatchNorm module name
  std::map<std::array<int64_t, 3>, std::unique_ptr<Plan>> plans;
  int64_t graph_replays = 0;

  bool is_densenet() const { return arch != "squeezenet"; }
  const kernels::PackedConvWeight* conv(const std::string& name) const {
    auto it = packed.find(name);
    TTQ_CHECK(it != packed.end()) << "packed model: no packed layer " << name;
    return &it->second;
  }
  const Affine& norm(const std::string& name) const {
    auto it = bn.find(name);
    TTQ_CHECK(it != bn.end()) << "packed model: no BatchNorm " << name;
    return it->second;
  }
  const Tensor& tensor(const std::string& name) const {
    auto it = f32.find(name);
    TTQ_CHECK(it != f32.end()) << "packed model: no tensor " << name;
    return it->second;
  }

  kernels::PackedConvOptions conv_options() const {
    kernels::PackedConvOptions o;
    o.cpu_isa = options.cpu_isa;
    o.cuda_path = options.cuda_path;
    return o;
  }
  void add_conv(Plan& p, const std::string& name, const Tensor& x, Tensor y,
                kernels::PackedConvOptions o) const {
    const kernels::PackedConvWeight* w = conv(name);
    TTQ_CHECK(kernels::packed_conv_output_shape(x, *w, o) == y.shape())
        << "packed model: " << name << " output " << shape_str(y.shape());
    p.steps.push_back([w, x, y, o]() mutable { kernels::packed_conv2d_out(x, *w, o, y); });
  }
  void add_dense_conv(Plan& p, const Tensor& x, const Tensor& w, const Tensor& b, int pad, Tensor y) const {
    p.steps.push_back([x, w, b, pad, y]() mutable { kernels::dense_conv2d_out(x, w, b, pad, y); });
  }

  std::unique_ptr<Plan> build_densenet(int64_t n, int64_t h, int64_t w) const;
  std::unique_ptr<Plan> build_squeezenet(int64_t n, int64_t h, int64_t w) const;
  void run(Plan& p);
};

std::unique_ptr<Plan> PackedModel::Impl::build_densenet(int64_t n, int64_t h, int64_t w) const {
  const DenseNetSpec& s = densenet;
  auto p = std::make_unique<Plan>();
  const Device dev = device;
  p->input = p->buffer({n, config.in_channels, h, w}, dev);
  const int64_t c0 = s.init_features;
  Tensor conv0 = p->buffer({n, c0, h, w}, dev);
  add_dense_conv(*p, p->input, tensor("features.conv0.weight"), Tensor(), 1, conv0);
  kernels::MaxPoolSpec pool0;
  if (s.pool0) pool0 = {3, 2, 1, false};
  const Shape pooled = kernels::affine_maxpool_output_shape(conv0.shape(), pool0);
  int64_t hb = pooled[2], wb = pooled[3], c = c0;
  Tensor block = p->buffer({n, c0 + s.blocks[0] * s.growth, hb, wb}, dev);
  {
    const Affine& a = norm("features.norm0");
    Tensor y = block.narrow(1, 0, c0);
    p->steps.push_back([conv0, a, pool0, y]() mutable {
      kernels::affine_maxpool_out(conv0, a.scale, a.shift, true, pool0, y);
    });
  }
  const int64_t mid = s.bn_size * s.growth;
  for (size_t b = 0; b < s.blocks.size(); ++b) {
    const std::string bp = "features.denseblock" + std::to_string(b + 1) + ".denselayer";
    Tensor tmp = p->buffer({n, mid, hb, wb}, dev);
    for (int j = 0; j < s.blocks[b]; ++j) {
      const std::string lp = bp + std::to_string(j + 1);
      const int64_t cin = c + j * s.growth;
      kernels::PackedConvOptions o1 = conv_options();
      const Affine& n1 = norm(lp + ".norm.1");
      const Affine& n2 = norm(lp + ".norm.2");
      o1.pre_scale = n1.scale;
      o1.pre_shift = n1.shift;
      o1.pre_relu = true;
      o1.post_scale = n2.scale;
      o1.post_shift = n2.shift;
      o1.post_relu = true;
      add_conv(*p, lp + ".conv.1", block.narrow(1, 0, cin), tmp, o1);
      kernels::PackedConvOptions o2 = conv_options();
      o2.pad = 1;
      add_conv(*p, lp + ".conv.2", tmp, block.narrow(1, cin, s.growth), o2);
    }
    c += s.blocks[b] * s.growth;
    if (b + 1 == s.blocks.size()) break;
    const std::string tp = "features.transition" + std::to_string(b + 1);
    const int64_t cout = c / 2;
    hb /= 2;
    wb /= 2;
    TTQ_INPUT_CHECK(hb >= 1 && wb >= 1) << source << ": input " << h << "x" << w << " too small for " << arch;
    Tensor next = p->buffer({n, cout + s.blocks[b + 1] * s.growth, hb, wb}, dev);
    kernels::PackedConvOptions ot = conv_options();
    const Affine& tn = norm(tp + ".norm");
    ot.pre_scale = tn.scale;
    ot.pre_shift = tn.shift;
    ot.pre_relu = true;
    ot.pool2 = true;
    add_conv(*p, tp + ".conv", block, next.narrow(1, 0, cout), ot);
    block = next;
    c = cout;
  }
  Tensor feat = p->buffer({n, c}, dev);
  {
    const Affine& a = norm("features." + s.final_norm);
    p->steps.push_back([block, a, feat]() mutable {
      kernels::affine_global_avgpool_out(block, a.scale, a.shift, true, feat);
    });
  }
  p->logits = p->buffer({n, config.num_classes}, dev);
  {
    const Tensor cw = tensor("classifier.weight"), cb = tensor("classifier.bias");
    Tensor logits = p->logits;
    p->steps.push_back([feat, cw, cb, logits]() mutable { kernels::linear_out(feat, cw, cb, logits); });
  }
  return p;
}

std::unique_ptr<Plan> PackedModel::Impl::build_squeezenet(int64_t n, int64_t h, int64_t w) const {
  auto p = std::make_unique<Plan>();
  const Device dev = device;
  p->input = p->buffer({n, config.in_channels, h, w}, dev);
  Tensor c0 = p->buffer({n, 64, h, w}, dev);
  add_dense_conv(*p, p->input, tensor("features.0.weight"), Tensor(), 1, c0);
  const kernels::MaxPoolSpec pool{3, 2, 0, true};
  Tensor x = p->buffer(kernels::affine_maxpool_output_shape(c0.shape(), pool), dev);
  {
    const Affine& a = norm("features.1");
    p->steps.push_back(
        [c0, a, pool, x]() mutable { kernels::affine_maxpool_out(c0, a.scale, a.shift, true, pool, x); });
  }
  for (const FireSpec& f : kSqueezeNet) {
    if (f.squeeze == 0) {
      Tensor y = p->buffer(kernels::affine_maxpool_output_shape(x.shape(), pool), dev);
      p->steps.push_back(
          [x, pool, y]() mutable { kernels::affine_maxpool_out(x, Tensor(), Tensor(), false, pool, y); });
      x = y;
      continue;
    }
    const std::string fp = "features." + std::to_string(f.index);
    const int64_t hh = x.size(2), ww = x.size(3);
    Tensor sq = p->buffer({n, f.squeeze, hh, ww}, dev);
    Tensor out = p->buffer({n, f.e1 + f.e3, hh, ww}, dev);
    auto with_pre = [&](const std::string& bn_name) {
      kernels::PackedConvOptions o = conv_options();
      const Affine& a = norm(fp + "." + bn_name);
      o.pre_scale = a.scale;
      o.pre_shift = a.shift;
      o.pre_relu = true;
      return o;
    };
    add_conv(*p, fp + ".squeeze", x, sq, with_pre("squeeze_bn"));
    kernels::PackedConvOptions o1 = with_pre("expand1x1_bn");
    if (f.residual) o1.residual = x.narrow(1, 0, f.e1);
    add_conv(*p, fp + ".expand1x1", sq, out.narrow(1, 0, f.e1), o1);
    kernels::PackedConvOptions o3 = with_pre("expand3x3_bn");
    o3.pad = 1;
    if (f.residual) o3.residual = x.narrow(1, f.e1, f.e3);
    add_conv(*p, fp + ".expand3x3", sq, out.narrow(1, f.e1, f.e3), o3);
    x = out;
  }
  Tensor cls = p->buffer({n, config.num_classes, x.size(2), x.size(3)}, dev);
  add_dense_conv(*p, x, tensor("classifier.1.weight"), tensor("classifier.1.bias"), 0, cls);
  p->logits = p->buffer({n, config.num_classes}, dev);
  {
    Tensor logits = p->logits;
    p->steps.push_back([cls, logits]() mutable {
      kernels::affine_global_avgpool_out(cls, Tensor(), Tensor(), true, logits);
    });
  }
  return p;
}

void PackedModel::Impl::run(Plan& p) {
  auto eager = [&] {
    for (auto& step : p.steps) step();
  };
#ifdef TTQ_HAS_CUDA
  if (device.is_cuda() && options.cuda_graph_max_batch > 0 && p.n <= options.cuda_graph_max_batch &&
      !p.graph_failed) {
    cudaStream_t stream = static_cast<cudaStream_t>(cuda::current_stream());
    if (p.exec) {
      TTQ_CUDA_CHECK(cudaGraphLaunch(p.exec, stream));
      ++graph_replays;
      return;
    }
    if (p.runs++ == 0) {  // the first run of a shape is eager (and checks every launch)
      eager();
      return;
    }
    cuda::synchronize();
    bool ok = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
    if (ok) {
      try {
        eager();
      } catch (const std::exception&) {
        ok = false;
      }
      cudaGraph_t graph = nullptr;
      ok = cudaStreamEndCapture(stream, &graph) == cudaSuccess && ok && graph != nullptr;
      if (ok) {
        p.graph = graph;
        ok = cudaGraphInstantiate(&p.exec, p.graph, 0) == cudaSuccess;
      } else if (graph) {
        cudaGraphDestroy(graph);
      }
    }
    if (!ok) {
      (void)cudaGetLastError();  // clear the capture's error; run eagerly from now on
      p.graph_failed = true;
      eager();
      return;
    }
    TTQ_CUDA_CHECK(cudaGraphLaunch(p.exec, stream));
    ++graph_replays;
    return;
  }
#endif
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
  Generator gen(0);
  ModelPtr skeleton = create(arch, impl->config, gen);
  impl->min_size = skeleton->min_input_size();
  if (arch == "small_densenet") impl->densenet = small_densenet_spec();
  if (arch == "densenet121") impl->densenet = densenet121_spec();
  const std::set<std::string> qnames = quantizable_names(*skeleton);

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
  const std::set<std::string> non_negative = nn::non_negative_state(*skeleton);
  for (const auto& [name, expected] : skeleton->state_dict()) {
    const std::string layer = layer_of(name, ".weight", qnames);
    if (layer.empty()) {
      const Tensor& t = fetch(name, DType::F32, expected.shape(), false);
      const std::string why = io::load_value_problem(t, DType::F32, non_negative.count(name) != 0);
      TTQ_INPUT_CHECK(why.empty()) << source << ": tensor " << io::quoted_name(name) << " " << why;
      host[name] = t;
      continue;
    }
    const Tensor& codes =
        fetch(layer + ".codes", DType::U8, {kernels::packed::packed_bytes(expected.numel())}, false);
    const float wp = fetch(layer + ".wp", DType::F32, {}, true).data<float>()[0];
    const float wn = fetch(layer + ".wn", DType::F32, {}, true).data<float>()[0];
    TTQ_INPUT_CHECK(std::isfinite(wp) && std::isfinite(wn) && wp > 0 && wn > 0)
        << source << ": layer " << layer << " has scales Wp = " << wp << ", Wn = " << wn
        << " (finite positive values expected)";
    impl->packed.emplace(layer, kernels::PackedConvWeight::from_codes(codes, expected.shape(), wp, wn, device,
                                                                      source + ": layer " + layer));
  }
  for (const auto& [name, t] : tensors)
    TTQ_INPUT_CHECK(used.count(name))
        << source << ": unexpected tensor " << io::quoted_name(name) << " for " << arch;

  for (const auto& [name, module] : skeleton->named_modules()) {
    auto* bn = dynamic_cast<nn::BatchNorm2d*>(module);
    if (!bn) continue;
    const Tensor w = host.at(name + ".weight"), b = host.at(name + ".bias");
    const Tensor mean = host.at(name + ".running_mean"), var = host.at(name + ".running_var");
    const int64_t c = bn->channels();
    Tensor scale = Tensor::empty({c}), shift = Tensor::empty({c});
    for (int64_t i = 0; i < c; ++i) {
      const double s = double(w.data<float>()[i]) / std::sqrt(double(var.data<float>()[i]) + bn->eps());
      scale.data<float>()[i] = static_cast<float>(s);
      shift.data<float>()[i] =
          static_cast<float>(double(b.data<float>()[i]) - double(mean.data<float>()[i]) * s);
    }
    impl->bn[name] = {scale.to(device), shift.to(device)};
  }
  for (const char* name : {"features.conv0.weight", "features.0.weight", "classifier.weight",
                           "classifier.bias", "classifier.1.weight", "classifier.1.bias"}) {
    auto it = host.find(name);
    if (it != host.end()) impl->f32[name] = it->second.contiguous().to(device);
  }
  return std::unique_ptr<PackedModel>(new PackedModel(std::move(impl)));
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
int64_t PackedModel::graph_replays() const { return m_impl->graph_replays; }

int64_t PackedModel::weight_bytes() const {
  int64_t b = 0;
  for (const auto& [name, w] : m_impl->packed) b += w.bytes();
  for (const auto& [name, t] : m_impl->f32) b += static_cast<int64_t>(t.nbytes());
  for (const auto& [name, a] : m_impl->bn) b += static_cast<int64_t>(a.scale.nbytes() + a.shift.nbytes());
  return b;
}

void PackedModel::check_input(const Shape& x, const std::string& what) const {
  const int64_t min = m_impl->min_size;
  TTQ_INPUT_CHECK(x.size() == 4 && x[0] >= 1 && x[1] == m_impl->config.in_channels && x[2] >= min &&
                  x[3] >= min)
      << what << ": shape " << shape_str(x) << " does not fit " << m_impl->arch << " (expected [N, "
      << m_impl->config.in_channels << ", H, W] with N >= 1 and H, W >= " << min << ")";
}

Tensor PackedModel::forward(const Tensor& x_in) {
  check_input(x_in.shape(), "packed " + m_impl->arch + " input");
  TTQ_CHECK(x_in.dtype() == DType::F32 || x_in.dtype() == DType::F64)
      << "PackedModel::forward: F32 input expected, got " << x_in.str();
  const std::array<int64_t, 3> key{x_in.size(0), x_in.size(2), x_in.size(3)};
  auto it = m_impl->plans.find(key);
  if (it == m_impl->plans.end()) {
    if (m_impl->plans.size() >= 8) m_impl->plans.clear();
    auto plan = m_impl->is_densenet() ? m_impl->build_densenet(key[0], key[1], key[2])
                                      : m_impl->build_squeezenet(key[0], key[1], key[2]);
    plan->n = key[0];
    plan->h = key[1];
    plan->w = key[2];
    it = m_impl->plans.emplace(key, std::move(plan)).first;
  }
  Plan& p = *it->second;
  p.input.copy_(x_in.dtype() == DType::F32 ? x_in : x_in.to(DType::F32));
  m_impl->run(p);
  return m_impl->device.is_cpu() ? p.logits.clone() : p.logits.to(Device::cpu());
}

// ---- tensor mode ----------------------------------------------------------------------------

Tensor run_packed_tensor_inference(const TensorInferOptions& o, std::ostream& log) {
  TTQ_INPUT_CHECK(!o.input_name.empty()) << "--input-name is required with --input-tensors";
  TTQ_INPUT_CHECK(!o.logits_out.empty()) << "--logits-out is required with --input-tensors";
  io::SafeTensors st = io::read_safetensors(o.model_path);
  // Validate the model and the input before the device line is printed (one line on error).
  auto model = PackedModel::from_tensors(st.tensors(), st.metadata(), o.arch, Device::cpu(), o.model_path);
  io::SafeTensors in = io::read_safetensors(o.input_path);
  TTQ_INPUT_CHECK(in.contains(o.input_name))
      << o.input_path << ": no tensor named " << io::quoted_name(o.input_name);
  const Tensor x = in.at(o.input_name);
  TTQ_INPUT_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64)
      << o.input_path << ": tensor " << io::quoted_name(o.input_name) << " is " << dtype_name(x.dtype())
      << ", expected F32";
  model->check_input(x.shape(), o.input_path + ": tensor " + io::quoted_name(o.input_name));
  const Device device = pick_device(o.device, log);
  if (device.is_cuda())
    model = PackedModel::from_tensors(st.tensors(), st.metadata(), o.arch, device, o.model_path);
  const Tensor logits = model->forward(x);
  io::write_safetensors(o.logits_out, {{"logits", logits}},
                        {{"model", model->arch()},
                         {"weights", o.model_path},
                         {"input", o.input_path},
                         {"input_name", o.input_name},
                         {"device", device.str()},
                         {"format", kPackedFormat}});
  return logits;
}

}  // namespace ttq::models
