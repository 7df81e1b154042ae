// Model base, registry, and weight import (see models/model.h).
// Tests: tests/test_models.cpp, tests/test_seed_parity.cpp.
#include "models/model.h"

#include <map>
#include <set>

#include "models/densenet.h"
#include "models/squeezenet.h"

namespace ttq::models {

int64_t detail::pooled_size(int64_t in, int kernel, int stride, int pad, bool ceil_mode) {
  if (in + 2 * pad < kernel) return 0;
  const int64_t span = in + 2 * pad - kernel;
  int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
  // PyTorch: with ceil_mode the last window must start inside the input or the left padding.
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

namespace {

nn::Module* find_module(Model& model, const std::string& name) {
  for (auto& [n, m] : model.named_modules())
    if (n == name) return m;
  return nullptr;
}

std::string first_conv_weight(const std::string& arch) {
  return arch == "squeezenet" ? "features.0.weight" : "features.conv0.weight";
}
std::string classifier_weight(const std::string& arch) {
  return arch == "squeezenet" ? "classifier.1.weight" : "classifier.weight";
}

std::string known_names() {
  std::string s;
  for (const auto& n : names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

nn::Conv2d& Model::first_conv() {
  auto* conv = dynamic_cast<nn::Conv2d*>(find_module(*this, first_conv_name()));
  TTQ_CHECK(conv != nullptr) << arch() << ": no conv named " << first_conv_name();
  return *conv;
}

nn::Module& Model::classifier() {
  nn::Module* m = find_module(*this, classifier_name());
  TTQ_CHECK(m != nullptr) << arch() << ": no module named " << classifier_name();
  return *m;
}

std::vector<std::pair<std::string, nn::Conv2d*>> Model::quantizable_convs() {
  std::vector<std::pair<std::string, nn::Conv2d*>> out;
  const std::string first = first_conv_name(), cls = classifier_name();
  for (auto& [name, m] : named_modules()) {
    auto* conv = dynamic_cast<nn::Conv2d*>(m);
    if (conv != nullptr && name != first && name != cls) out.emplace_back(name, conv);
  }
  return out;
}

void Model::check_input(const Shape& x, const std::string& what) const {
  const int64_t min = min_input_size();
  TTQ_INPUT_CHECK(x.size() == 4 && x[0] >= 1 && x[1] == m_config.in_channels && x[2] >= min && x[3] >= min)
      << what << ": shape " << shape_str(x) << " does not fit " << m_arch << " (expected [N, "
      << m_config.in_channels << ", H, W] with N >= 1 and H, W >= " << min << ")";
}

std::vector<std::string> names() { return {"small_densenet", "squeezenet", "densenet121"}; }

void check_config(const ModelConfig& c, const std::string& what) {
  TTQ_INPUT_CHECK(c.in_channels >= 1 && c.in_channels <= kMaxInChannels)
      << what << ": in_channels " << c.in_channels << " outside [1, " << kMaxInChannels << "]";
  TTQ_INPUT_CHECK(c.num_classes >= 1 && c.num_classes <= kMaxClasses)
      << what << ": num_classes " << c.num_classes << " outside [1, " << kMaxClasses << "]";
  TTQ_INPUT_CHECK(c.input_size >= 1 && c.input_size <= kMaxInputSize)
      << what << ": input_size " << c.input_size << " outside [1, " << kMaxInputSize << "]";
  TTQ_INPUT_CHECK(c.dropout < 1) << what << ": dropout must be below 1, got " << c.dropout;
}

ModelPtr create(const std::string& name, const ModelConfig& config, Generator& gen) {
  check_config(config, name);
  ModelPtr model;
  if (name == "small_densenet") {
    model = std::make_shared<DenseNet>(small_densenet_spec(), config, gen);
  } else if (name == "densenet121") {
    model = std::make_shared<DenseNet>(densenet121_spec(), config, gen);
  } else if (name == "squeezenet") {
    model = std::make_shared<SqueezeNet>(config, gen);
  } else {
    TTQ_INPUT_ERROR() << "unknown model '" << name << "' (known: " << known_names() << ")";
  }
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

std::string canonical_name(const std::string& name) {
  static const std::map<std::string, std::string> kMap = {{"norm1", "norm.1"}, {"relu1", "relu.1"},
                                                          {"conv1", "conv.1"}, {"norm2", "norm.2"},
                                                          {"relu2", "relu.2"}, {"conv2", "conv.2"}};
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t dot = name.find('.', start);
    parts.push_back(name.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  bool changed = false;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (parts[i].rfind("denselayer", 0) != 0) continue;
    auto it = kMap.find(parts[i + 1]);
    if (it != kMap.end()) {
      parts[i + 1] = it->second;
      changed = true;
    }
  }
  if (!changed) return name;
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? "." : "") + parts[i];
  return out;
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
    std::string canon = canonical_name(name);
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
  const std::string conv_name = first_conv_weight(arch), cls_name = classifier_weight(arch);
  const Tensor* conv = nullptr;
  const Tensor* cls = nullptr;
  for (const auto& [name, t] : tensors) {
    if (name == conv_name) conv = &t;
    if (name == cls_name) cls = &t;
  }
  TTQ_INPUT_CHECK(conv != nullptr) << source << ": no tensor " << conv_name << " (is this a " << arch << "?)";
  TTQ_INPUT_CHECK(cls != nullptr) << source << ": no tensor " << cls_name << " (is this a " << arch << "?)";
  TTQ_INPUT_CHECK(conv->dim() == 4 && conv->size(1) >= 1)
      << source << ": " << conv_name << " has shape " << shape_str(conv->shape())
      << ", expected [C_out, C_in, 3, 3]";
  TTQ_INPUT_CHECK(cls->dim() >= 2 && cls->size(0) >= 1)
      << source << ": " << cls_name << " has shape " << shape_str(cls->shape())
      << ", expected [classes, ...]";
  base.in_channels = conv->size(1);
  base.num_classes = cls->size(0);
  check_config(base, source + ": the weights of " + arch);
  return base;
}

}  // namespace ttq::models
