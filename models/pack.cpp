// Packing: ttq_pack's logic (see models/packed.h). Tests: tests/test_packed_model.cpp.
#include "kernels/pack.h"

#include <cmath>
#include <filesystem>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/io/values.h"
#include "engine/io/write_file.h"
#include "kernels/packed_format.h"
#include "models/packed.h"
#include "models/packed_internal.h"

namespace ttq::models {

namespace detail {

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

static std::string known_archs() {
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

std::set<std::string> quantizable_names(const Graph& g) {
  std::set<std::string> s;
  for (int i : g.quantizable_convs()) s.insert(g.node(i).name);
  return s;
}

// "<layer>.suffix" -> "<layer>" when <layer> is in `layers`, else "".
std::string layer_of(const std::string& name, const std::string& suffix,
                     const std::set<std::string>& layers) {
  if (!ends_with(name, suffix)) return "";
  std::string l = name.substr(0, name.size() - suffix.size());
  return layers.count(l) ? l : "";
}

}  // namespace detail

using namespace detail;

namespace {

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

namespace {

// A weights file's model tensors checked against the architecture: training
// state dropped, names canonical, TTQ scales kept as hints for packing.
struct ModelState {
  std::string arch;
  ModelPtr skeleton;
  std::map<std::string, float> scale_hint;  // "<layer>.wp" / ".wn" of a TTQ checkpoint
  std::map<std::string, Tensor> by_name;
};

ModelState model_state(const io::NamedTensors& input, const io::Metadata& meta, const std::string& arch_in,
                       const std::string& source) {
  ModelState m;
  m.arch = resolve_arch(arch_in, "", source);
  const Graph naming = build_graph(m.arch, ModelConfig{});
  // Training state that inference never needs.
  io::NamedTensors kept;
  for (const auto& [name, t] : input) {
    if (starts_with(name, "optimizer.") || starts_with(name, "optimizer_scalar.") ||
        starts_with(name, "scheduler."))
      continue;
    kept.emplace_back(naming.canonical_name(name), t);
  }
  Generator gen(0);
  m.skeleton = create(m.arch, config_of(m.arch, kept, meta, source), gen);
  const std::set<std::string> qnames = quantizable_names(m.skeleton->graph());
  io::NamedTensors model_tensors;
  for (const auto& [name, t] : kept) {
    if (!layer_of(name, ".latent_weight", qnames).empty()) continue;
    if (!layer_of(name, ".wp", qnames).empty() || !layer_of(name, ".wn", qnames).empty()) {
      TTQ_INPUT_CHECK(t.numel() == 1) << source << ": " << io::quoted_name(name) << " must hold one value";
      const std::string why = io::load_value_problem(t, DType::F32);
      TTQ_INPUT_CHECK(why.empty()) << source << ": " << io::quoted_name(name) << " " << why;
      m.scale_hint[name] = static_cast<float>(t.item());
      continue;
    }
    model_tensors.emplace_back(name, t);
  }
  // Names and shapes exactly as the architecture expects (one line listing every problem).
  load_weights(*m.skeleton, model_tensors, source);
  m.by_name = std::map<std::string, Tensor>(model_tensors.begin(), model_tensors.end());
  return m;
}

int64_t f32_bytes(Model& model) {
  int64_t n = 0;
  for (const auto& [name, t] : model.state_dict()) n += t.numel() * 4;
  return n;
}

}  // namespace

PackedContent pack_tensors(const io::NamedTensors& input, const io::Metadata& meta,
                           const std::string& arch_in, const std::string& source) {
  ModelState m = model_state(input, meta, arch_in, source);
  const std::string& arch = m.arch;
  ModelPtr& skeleton = m.skeleton;
  const std::set<std::string> qnames = quantizable_names(skeleton->graph());
  const std::map<std::string, float>& scale_hint = m.scale_hint;
  const std::map<std::string, Tensor>& by_name = m.by_name;

  PackedContent out;
  out.report.arch = arch;
  out.report.model_float_bytes = f32_bytes(*skeleton);
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
    if (k == "classes" || k == "preprocess" || k == "data" || k == "split" || starts_with(k, "ttq."))
      out.metadata[k] = v;
  out.metadata["packed_from"] = std::filesystem::path(source).filename().string();
  return out;
}

PackReport pack_model_file(const std::string& in, const std::string& out, const std::string& arch_flag,
                           const std::function<void(PackedContent&)>& amend) {
  TTQ_INPUT_CHECK(!io::same_file(in, out))
      << "--out " << out << " is the --in file; write the packed model to another file";
  io::SafeTensors st = io::read_safetensors(in);
  TTQ_INPUT_CHECK(st.meta("format") != kPackedFormat)
      << in << ": already a packed model (format " << kPackedFormat << ")";
  const std::string arch = resolve_arch(st.meta("model"), arch_flag, in);
  PackedContent content = pack_tensors(st.tensors(), st.metadata(), arch, in);
  if (amend) amend(content);
  io::write_safetensors(out, content.tensors, content.metadata);
  std::error_code ec;
  content.report.input_file_bytes = static_cast<int64_t>(std::filesystem::file_size(in, ec));
  content.report.output_file_bytes = static_cast<int64_t>(std::filesystem::file_size(out, ec));
  return content.report;
}

WeightsReport write_weights_file(const std::string& in, const std::string& out,
                                 const std::string& arch_flag) {
  TTQ_INPUT_CHECK(!io::same_file(in, out))
      << "--out " << out << " is the --in file; write the weights to another file";
  io::SafeTensors st = io::read_safetensors(in);
  TTQ_INPUT_CHECK(st.meta("format") != kPackedFormat) << in << ": a packed model (format " << kPackedFormat
                                                      << "); --weights-only takes a checkpoint or weights";
  const std::string arch = resolve_arch(st.meta("model"), arch_flag, in);
  ModelState m = model_state(st.tensors(), st.metadata(), arch, in);
  WeightsReport r;
  r.arch = arch;
  io::NamedTensors tensors;
  for (const auto& [name, expected] : m.skeleton->state_dict()) {
    tensors.emplace_back(name, m.by_name.at(name).to(Device::cpu()).to(DType::F32).contiguous());
    r.float_bytes += expected.numel() * 4;
  }
  r.tensors = static_cast<int64_t>(tensors.size());
  io::Metadata meta;
  meta["model"] = arch;
  const ModelConfig& c = m.skeleton->config();
  nlohmann::json j;
  j["in_channels"] = c.in_channels;
  j["input_size"] = c.input_size;
  j["num_classes"] = c.num_classes;
  meta["model_config"] = j.dump();
  for (const auto& [k, v] : st.metadata())
    if (k == "classes" || k == "preprocess" || k == "data" || k == "split") meta[k] = v;
  meta["weights_from"] = std::filesystem::path(in).filename().string();
  io::write_safetensors(out, tensors, meta);
  std::error_code ec;
  r.input_file_bytes = static_cast<int64_t>(std::filesystem::file_size(in, ec));
  r.output_file_bytes = static_cast<int64_t>(std::filesystem::file_size(out, ec));
  return r;
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
  if (r.output_file_bytes > 0) {
    // Against what the network weighs in float, not the input file (which may
    // carry optimiser state and TTQ latent weights).
    os << "network: " << r.model_float_bytes << " bytes as F32 -> packed file " << r.output_file_bytes
       << " bytes (" << std::fixed << std::setprecision(1)
       << double(r.model_float_bytes) / double(r.output_file_bytes) << "x smaller); input file "
       << r.input_file_bytes << " bytes\n";
  }
  return os.str();
}

}  // namespace ttq::models
