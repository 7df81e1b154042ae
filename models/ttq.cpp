// TTQ for a whole model: quantizer, model switch, scale clamp, parameter groups,
// checkpoint view and statistics. Contracts in models/ttq.h; tests in
// tests/test_ttq_layer.cpp.
#include "models/ttq.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "engine/autograd.h"
#include "engine/io/values.h"
#include "kernels/ternarize.h"
#include "kernels/ternary_weight.h"
#include "models/model.h"

namespace ttq::models {

const char* scale_init_name(ScaleInit s) { return s == ScaleInit::Mean ? "mean" : "ones"; }

ScaleInit parse_scale_init(std::string_view s) {
  if (s == "ones") return ScaleInit::Ones;
  if (s == "mean") return ScaleInit::Mean;
  TTQ_INPUT_ERROR() << "--scale-init: expected 'ones' or 'mean', got '" << std::string(s) << "'";
}

// ---- quantizer ------------------------------------------------------------------

TtqQuantizer::TtqQuantizer(Tensor* wp, Tensor* wn, double t, kernels::WnGradMode mode)
    : m_wp(wp), m_wn(wn), m_t(t), m_mode(mode) {
  TTQ_CHECK(wp != nullptr && wn != nullptr) << "TtqQuantizer: null scale slot";
}

Tensor TtqQuantizer::quantize(const Tensor& latent) {
  return kernels::ternary_weight(latent, *m_wp, *m_wn, m_t, m_mode);
}

// ---- model switch ------------------------------------------------------------------

namespace {

bool under(const std::string& name, const std::string& prefix) {
  return !prefix.empty() && (name == prefix || name.compare(0, prefix.size() + 1, prefix + ".") == 0);
}

// Mean |W| over P and over N of a latent weight (host arithmetic: runs once).
// A set that is empty takes the other's mean; an all-zero weight gets 1.
std::pair<float, float> mean_scales(const Tensor& weight, double t) {
  std::vector<float> w = weight.to(DType::F32).to_vector<float>();
  const float delta =
      kernels::ternarize_delta_ref(w.data(), static_cast<int64_t>(w.size()), static_cast<float>(t));
  double sp = 0, sn = 0;
  int64_t np = 0, nn = 0;
  for (float v : w) {
    if (v > delta) {
      sp += v;
      np++;
    } else if (v < -delta) {
      sn -= v;
      nn++;
    }
  }
  float mp = np > 0 ? static_cast<float>(sp / np) : 0.0f;
  float mn = nn > 0 ? static_cast<float>(sn / nn) : 0.0f;
  if (np == 0) mp = nn > 0 ? mn : 1.0f;
  if (nn == 0) mn = mp;
  return {mp, mn};
}

}  // namespace

namespace {

// Attaches a quantizer to each of `layers` and freezes `frozen` when asked.
TtqModel quantize_layers(const TtqOptions& options,
                         const std::vector<std::pair<std::string, nn::Conv2d*>>& layers,
                         const std::vector<nn::Conv2d*>& frozen) {
  TTQ_CHECK(options.t >= 0.0 && options.t < 1.0) << "quantize_model: t = " << options.t << " outside [0, 1)";
  TTQ_CHECK(options.scale_eps > 0.0f) << "quantize_model: scale_eps must be positive";
  TtqModel out;
  out.options = options;
  for (const auto& [name, conv] : layers) {
    TTQ_CHECK(conv->quantizer == nullptr) << "quantize_model: " << name << " already has a quantizer";
    const Tensor& w = conv->weight();
    float wp0 = 1.0f, wn0 = 1.0f;
    if (options.scale_init == ScaleInit::Mean) std::tie(wp0, wn0) = mean_scales(w, options.t);
    Tensor& wp = conv->register_parameter("wp", Tensor::full({1}, wp0, DType::F32, w.device()));
    Tensor& wn = conv->register_parameter("wn", Tensor::full({1}, wn0, DType::F32, w.device()));
    auto q = std::make_shared<TtqQuantizer>(&wp, &wn, options.t, options.wn_grad);
    conv->quantizer = q;
    out.layers.push_back({name, conv, q.get()});
  }
  if (options.freeze_first_conv)
    for (nn::Conv2d* f : frozen) f->set_requires_grad(false);
  return out;
}

}  // namespace

TtqModel quantize_model(nn::Module& model, const TtqOptions& options) {
  std::vector<std::pair<std::string, nn::Conv2d*>> layers;
  nn::Conv2d* first = nullptr;
  for (auto& [name, m] : model.named_modules()) {
    auto* conv = dynamic_cast<nn::Conv2d*>(m);
    if (conv == nullptr) continue;
    if (!options.first_conv.empty() && name == options.first_conv) {
      first = conv;
    } else if (!under(name, options.classifier)) {
      layers.emplace_back(name, conv);
    }
  }
  TTQ_CHECK(options.first_conv.empty() || first != nullptr)
      << "quantize_model: no Conv2d named '" << options.first_conv << "'";
  std::vector<nn::Conv2d*> frozen;
  if (first != nullptr) frozen.push_back(first);
  return quantize_layers(options, layers, frozen);
}

TtqModel quantize_model(Model& model, TtqOptions options) {
  // The graph's rule decides (Graph::quantizable_convs); the names are recorded.
  options.first_conv = model.first_conv_name();
  options.classifier = model.classifier_name();
  std::vector<nn::Conv2d*> frozen;
  for (int i : model.graph().first_layers()) frozen.push_back(dynamic_cast<nn::Conv2d*>(model.module(i)));
  return quantize_layers(options, model.quantizable_convs(), frozen);
}

std::vector<TtqLayer> ttq_layers(nn::Module& model) {
  std::vector<TtqLayer> out;
  for (auto& [name, m] : model.named_modules()) {
    auto* conv = dynamic_cast<nn::Conv2d*>(m);
    if (conv == nullptr) continue;
    if (auto* q = dynamic_cast<TtqQuantizer*>(conv->quantizer.get())) out.push_back({name, conv, q});
  }
  return out;
}

// ---- optimisation ------------------------------------------------------------------

void clamp_scales(const TtqModel& ttq) {
  for (const TtqLayer& l : ttq.layers) {
    kernels::clamp_min_(l.quantizer->wp(), ttq.options.scale_eps);
    kernels::clamp_min_(l.quantizer->wn(), ttq.options.scale_eps);
  }
}

void add_ttq_hooks(optim::Optimizer& opt, const TtqModel& ttq) {
  // Capture the slots, not `ttq`, so the hook does not depend on its lifetime.
  std::vector<Tensor*> slots;
  for (const TtqLayer& l : ttq.layers) {
    slots.push_back(&l.quantizer->wp());
    slots.push_back(&l.quantizer->wn());
  }
  const float eps = ttq.options.scale_eps;
  opt.add_post_step_hook([slots, eps] {
    for (Tensor* s : slots) kernels::clamp_min_(*s, eps);
  });
}

TtqParamGroups ttq_param_groups(nn::Module& model, const TtqModel& ttq) {
  std::set<const Tensor*> latent, scales;
  for (const TtqLayer& l : ttq.layers) {
    latent.insert(&l.conv->weight());
    scales.insert(&l.quantizer->wp());
    scales.insert(&l.quantizer->wn());
  }
  const std::string cls_weight = ttq.options.classifier.empty() ? "" : ttq.options.classifier + ".weight";
  TtqParamGroups g;
  for (auto& [name, slot] : model.named_parameters()) {
    if (!slot->requires_grad()) continue;
    if (latent.count(slot)) {
      g.latent.push_back(*slot);
    } else if (scales.count(slot)) {
      g.scales.push_back(*slot);
    } else if (!cls_weight.empty() && name == cls_weight) {
      g.classifier_weight.push_back(*slot);
    } else {
      g.rest.push_back(*slot);
    }
  }
  return g;
}

std::unique_ptr<optim::Adam> make_ttq_optimizer(nn::Module& model, const TtqModel& ttq, double lr,
                                                double classifier_weight_decay) {
  optim::AdamOptions o;
  o.lr = lr;
  auto opt = std::make_unique<optim::Adam>(o);
  TtqParamGroups g = ttq_param_groups(model, ttq);
  if (!g.latent.empty()) opt->add_param_group(g.latent);
  if (!g.scales.empty()) opt->add_param_group(g.scales);
  if (!g.classifier_weight.empty())
    opt->add_param_group(g.classifier_weight).weight_decay = classifier_weight_decay;
  if (!g.rest.empty()) opt->add_param_group(g.rest);
  add_ttq_hooks(*opt, ttq);
  return opt;
}

// ---- checkpoints ------------------------------------------------------------------

io::NamedTensors ttq_checkpoint_view(nn::Module& model, const TtqModel& ttq) {
  std::map<std::string, const TtqLayer*> by_weight;
  for (const TtqLayer& l : ttq.layers) by_weight[l.name + ".weight"] = &l;
  autograd::NoGradGuard no_grad;
  io::NamedTensors out;
  for (auto& [name, t] : model.state_dict()) {
    auto it = by_weight.find(name);
    if (it == by_weight.end()) {
      out.emplace_back(name, t);
      continue;
    }
    const TtqQuantizer& q = *it->second->quantizer;
    out.emplace_back(name, kernels::ternarize(t, q.t(), q.wp(), q.wn()).wq);
    out.emplace_back(it->second->name + ".latent_weight", t);
  }
  return out;
}

namespace {

Tensor as_scale(const Tensor& t, const std::string& name, const std::string& source) {
  TTQ_INPUT_CHECK(t.numel() == 1) << source << ": " << io::quoted_name(name) << " has shape "
                                  << shape_str(t.shape()) << ", expected one element";
  return t.reshape({1});
}

}  // namespace

void load_ttq_checkpoint(nn::Module& model, const TtqModel& ttq, const io::NamedTensors& tensors,
                         const std::string& source) {
  std::map<std::string, Tensor> in;
  for (const auto& [name, t] : tensors) {
    TTQ_INPUT_CHECK(in.emplace(name, t).second)
        << source << ": " << io::quoted_name(name) << " appears twice";
  }
  std::map<std::string, Tensor> replaced;  // model names whose value is derived here
  std::set<std::string> consumed;          // file names folded into `replaced`
  for (const TtqLayer& l : ttq.layers) {
    const std::string wname = l.name + ".weight", lname = l.name + ".latent_weight";
    const std::string pname = l.name + ".wp", nname = l.name + ".wn";
    const bool has_p = in.count(pname) != 0, has_n = in.count(nname) != 0;
    if (in.count(lname)) {
      TTQ_INPUT_CHECK(has_p && has_n) << source << ": " << io::quoted_name(lname) << " without "
                                      << io::quoted_name(has_p ? nname : pname);
      replaced[wname] = in.at(lname);
      replaced[pname] = as_scale(in.at(pname), pname, source);
      replaced[nname] = as_scale(in.at(nname), nname, source);
      consumed.insert({lname, wname, pname, nname});
      continue;
    }
    TTQ_INPUT_CHECK(!has_p && !has_n)
        << source << ": " << io::quoted_name(has_p ? pname : nname) << " without " << io::quoted_name(lname);
    auto it = in.find(wname);
    if (it == in.end()) continue;  // load_state_dict reports it as missing
    // A file holding only the ternary values (the seed's): latent = sign, scales = the values.
    // Values checked here as load_state_dict would, since only their signs reach it.
    const std::string why = io::load_value_problem(it->second, DType::F32);
    TTQ_INPUT_CHECK(why.empty()) << source << ": " << io::quoted_name(wname) << " " << why;
    std::vector<float> w = it->second.to(DType::F32).to_vector<float>();
    std::set<float> pos, neg;
    for (float v : w) {
      if (v > 0) pos.insert(v);
      if (v < 0) neg.insert(v);
    }
    TTQ_INPUT_CHECK(pos.size() <= 1 && neg.size() <= 1)
        << source << ": " << io::quoted_name(wname) << " holds " << pos.size() + neg.size()
        << " distinct non-zero values, not a ternary weight (and no latent_weight)";
    float a = pos.empty() ? 0.0f : *pos.begin(), b = neg.empty() ? 0.0f : -*neg.begin();
    if (a == 0.0f) a = b > 0.0f ? b : 1.0f;  // an unused scale: any positive value
    if (b == 0.0f) b = a;
    std::vector<float> sign(w.size());
    for (size_t i = 0; i < w.size(); ++i) sign[i] = w[i] > 0 ? 1.0f : (w[i] < 0 ? -1.0f : 0.0f);
    replaced[wname] = Tensor::from_vector(sign, it->second.shape());
    replaced[pname] = Tensor::full({1}, a);
    replaced[nname] = Tensor::full({1}, b);
    consumed.insert(wname);
  }
  io::NamedTensors state;
  for (const auto& [name, t] : tensors)
    if (!consumed.count(name)) state.emplace_back(name, t);
  for (auto& [name, t] : replaced) state.emplace_back(name, t);
  model.load_state_dict(state, /*strict=*/true, source);
}

io::Metadata ttq_metadata(const TtqOptions& options) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", options.t);
  return {{"ttq.t", buf},
          {"ttq.scale_init", scale_init_name(options.scale_init)},
          {"ttq.wn_grad", kernels::wn_grad_mode_name(options.wn_grad)}};
}

TtqOptions ttq_options_from_metadata(const io::Metadata& meta, TtqOptions base, const std::string& source) {
  if (auto it = meta.find("ttq.t"); it != meta.end()) {
    char* end = nullptr;
    const double t = std::strtod(it->second.c_str(), &end);
    TTQ_INPUT_CHECK(!it->second.empty() && end != nullptr && *end == '\0' && t >= 0.0 && t < 1.0)
        << source << ": metadata ttq.t = '" << it->second << "' is not a number in [0, 1)";
    base.t = t;
  }
  try {
    if (auto it = meta.find("ttq.scale_init"); it != meta.end())
      base.scale_init = parse_scale_init(it->second);
    if (auto it = meta.find("ttq.wn_grad"); it != meta.end())
      base.wn_grad = kernels::parse_wn_grad_mode(it->second);
  } catch (const InputError& e) {
    TTQ_INPUT_ERROR() << source << ": metadata: " << e.what();
  }
  return base;
}

TtqStats ttq_stats(const TtqModel& ttq) {
  TtqStats s;
  kernels::TernarizeOutputs o;
  o.wq = false;
  o.counts = true;
  for (const TtqLayer& l : ttq.layers) {
    const TtqQuantizer& q = *l.quantizer;
    kernels::TernaryCounts c =
        kernels::counts_of(kernels::ternarize(l.conv->weight(), q.t(), q.wp(), q.wn(), o));
    TtqLayerStats ls;
    ls.name = l.name;
    ls.numel = c.total();
    ls.zeros = c.zero;
    ls.pos = c.pos;
    ls.neg = c.neg;
    ls.wp = q.wp().item();
    ls.wn = q.wn().item();
    s.quantized_weights += ls.numel;
    s.zeros += ls.zeros;
    s.mean_wp += ls.wp;
    s.mean_wn += ls.wn;
    s.layers.push_back(ls);
  }
  if (!s.layers.empty()) {
    s.mean_wp /= static_cast<double>(s.layers.size());
    s.mean_wn /= static_cast<double>(s.layers.size());
  }
  s.zero_fraction = s.quantized_weights == 0 ? 0.0 : static_cast<double>(s.zeros) / s.quantized_weights;
  return s;
}

}  // namespace ttq::models
