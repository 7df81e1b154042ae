// Optimizer base, SGD and Adam: groups, per-parameter state, checkpoint state,
// dispatch of the update to the backend of each parameter's device.
// Contract: engine/optim/optimizer.h. Tests: tests/test_optim.cpp.
#include "engine/optim/optimizer.h"

#include <cctype>
#include <cmath>
#include <sstream>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/io/values.h"

namespace ttq::optim {

namespace {

// Parses "group<g>.param<i>.<key>" or "group<g>.<key>" (i = -1). False when malformed.
bool parse_state_name(const std::string& name, int64_t& g, int64_t& i, std::string& key) {
  auto parse_index = [](const std::string& s, size_t& pos, const char* word, int64_t& out) {
    const size_t len = std::char_traits<char>::length(word);
    if (s.compare(pos, len, word) != 0) return false;
    pos += len;
    size_t end = pos;
    while (end < s.size() && std::isdigit(static_cast<unsigned char>(s[end]))) ++end;
    if (end == pos || end - pos > 9 || end >= s.size() || s[end] != '.') return false;
    out = std::stoll(s.substr(pos, end - pos));
    pos = end + 1;
    return true;
  };
  size_t pos = 0;
  if (!parse_index(name, pos, "group", g)) return false;
  i = -1;
  if (name.compare(pos, 5, "param") == 0) {
    size_t save = pos;
    if (!parse_index(name, pos, "param", i)) {
      pos = save;
      i = -1;
    }
  }
  key = name.substr(pos);
  return !key.empty();
}

std::string state_name(size_t g, size_t i, const std::string& key) {
  return "group" + std::to_string(g) + ".param" + std::to_string(i) + "." + key;
}

[[noreturn]] void report(const std::string& source, const std::vector<std::string>& errors) {
  std::ostringstream os;
  os << (source.empty() ? "optimizer state" : source) << ": ";
  const size_t limit = 8;
  for (size_t k = 0; k < errors.size() && k < limit; ++k) os << (k ? "; " : "") << errors[k];
  if (errors.size() > limit) os << "; ... (" << errors.size() - limit << " more)";
  TTQ_INPUT_ERROR() << os.str();
}

}  // namespace

Optimizer::Optimizer(std::vector<std::string> state_keys, ParamGroup defaults)
    : m_keys(std::move(state_keys)), m_defaults(std::move(defaults)) {
  m_defaults.params.clear();
}

ParamGroup& Optimizer::add_param_group(std::vector<Tensor> params) {
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    TTQ_CHECK(p.defined()) << name() << ": parameter " << i << " of the new group is undefined";
    TTQ_CHECK(is_floating(p.dtype())) << name() << ": parameter " << i << " is " << dtype_name(p.dtype());
    TTQ_CHECK(p.is_contiguous()) << name() << ": parameter " << i << " is not contiguous";
    for (const auto& g : m_groups)
      for (const auto& q : g.params)
        TTQ_CHECK(!q.same_view(p)) << name() << ": a parameter appears in more than one group";
  }
  ParamGroup g = m_defaults;
  g.params = std::move(params);
  check_group(g);
  m_groups.push_back(std::move(g));
  m_state.emplace_back(m_groups.back().params.size());
  for (auto& st : m_state.back()) st.tensors.resize(m_keys.size());
  return m_groups.back();
}

ParamGroup& Optimizer::group(size_t i) {
  TTQ_CHECK(i < m_groups.size()) << name() << ": no group " << i << " (" << m_groups.size() << " groups)";
  return m_groups[i];
}
const ParamGroup& Optimizer::group(size_t i) const {
  TTQ_CHECK(i < m_groups.size()) << name() << ": no group " << i << " (" << m_groups.size() << " groups)";
  return m_groups[i];
}
double Optimizer::lr(size_t g) const { return group(g).lr; }
void Optimizer::set_lr(size_t g, double lr) {
  TTQ_CHECK(lr >= 0 && std::isfinite(lr)) << name() << ": invalid lr " << lr;
  group(g).lr = lr;
}

void Optimizer::step() {
  autograd::NoGradGuard no_grad;
  for (size_t g = 0; g < m_groups.size(); ++g) {
    ParamGroup& grp = m_groups[g];
    // Fields may have been edited through the reference add_param_group returned.
    check_group(grp);
    for (size_t i = 0; i < grp.params.size(); ++i) {
      Tensor& p = grp.params[i];
      Tensor grad = p.grad();
      if (!grad.defined()) continue;
      TTQ_CHECK(grad.shape() == p.shape() && grad.dtype() == p.dtype() && grad.device() == p.device())
          << name() << ": gradient " << grad.str() << " does not match parameter " << p.str();
      TTQ_CHECK(p.is_contiguous()) << name() << ": parameter " << i << " of group " << g
                                   << " is not contiguous";
      grad = grad.contiguous();
      ParamState& st = m_state[g][i];
      update(grp, p, grad, st);
    }
  }
  ++m_steps;
  for (auto& hook : m_hooks) hook();
}

void Optimizer::zero_grad() {
  for (auto& g : m_groups)
    for (auto& p : g.params) p.zero_grad();
}

void Optimizer::add_post_step_hook(std::function<void()> hook) {
  TTQ_CHECK(hook != nullptr) << name() << ": empty post-step hook";
  m_hooks.push_back(std::move(hook));
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t g = 0; g < m_state.size(); ++g)
    for (size_t i = 0; i < m_state[g].size(); ++i)
      for (size_t k = 0; k < m_keys.size(); ++k)
        if (m_state[g][i].tensors[k].defined())
          out.emplace_back(state_name(g, i, m_keys[k]), m_state[g][i].tensors[k]);
  return out;
}

std::vector<std::pair<std::string, double>> Optimizer::state_scalars() const {
  std::vector<std::pair<std::string, double>> out;
  out.emplace_back("steps", static_cast<double>(m_steps));
  for (size_t g = 0; g < m_groups.size(); ++g) {
    out.emplace_back("group" + std::to_string(g) + ".lr", m_groups[g].lr);
    for (size_t i = 0; i < m_state[g].size(); ++i)
      if (m_state[g][i].has_state())
        out.emplace_back(state_name(g, i, "step"), static_cast<double>(m_state[g][i].step));
  }
  return out;
}

void Optimizer::validate_tensors(const std::map<std::string, Tensor>& tensors,
                                 std::vector<std::string>& errors) const {
  // present[g][i] = number of keys given for that parameter.
  std::vector<std::vector<size_t>> present(m_groups.size());
  for (size_t g = 0; g < m_groups.size(); ++g) present[g].assign(m_groups[g].params.size(), 0);
  for (const auto& [name, t] : tensors) {
    int64_t g = 0, i = 0;
    std::string key;
    if (!parse_state_name(name, g, i, key) || i < 0) {
      errors.push_back("unexpected tensor '" + name + "'");
      continue;
    }
    if (g >= static_cast<int64_t>(m_groups.size()) || i >= static_cast<int64_t>(m_groups[g].params.size())) {
      errors.push_back("tensor '" + name + "' names a parameter this optimizer does not have");
      continue;
    }
    bool known_key = false;
    for (const auto& k : m_keys) known_key |= (k == key);
    if (!known_key) {
      errors.push_back("unexpected tensor '" + name + "'");
      continue;
    }
    const Tensor& p = m_groups[g].params[i];
    if (!t.defined() || t.shape() != p.shape()) {
      errors.push_back("tensor '" + name + "' has shape " +
                       (t.defined() ? shape_str(t.shape()) : "undefined") + ", parameter has " +
                       shape_str(p.shape()));
      continue;
    }
    // Adam divides by the square root of its second moment.
    if (std::string why = io::load_value_problem(t, p.dtype(), key == "exp_avg_sq"); !why.empty()) {
      errors.push_back("tensor '" + name + "' " + why);
      continue;
    }
    ++present[g][i];
  }
  for (size_t g = 0; g < present.size(); ++g)
    for (size_t i = 0; i < present[g].size(); ++i)
      if (present[g][i] != 0 && present[g][i] != m_keys.size())
        errors.push_back("group" + std::to_string(g) + ".param" + std::to_string(i) +
                         " has only some of its state");
}

void Optimizer::validate_scalars(const std::map<std::string, double>& scalars,
                                 std::vector<std::string>& errors) const {
  std::vector<bool> has_lr(m_groups.size(), false);
  for (const auto& [name, v] : scalars) {
    if (name == "steps") {
      if (!(v >= 0 && v == std::floor(v)))
        errors.push_back("steps = " + std::to_string(v) + " is not a count");
      continue;
    }
    int64_t g = 0, i = 0;
    std::string key;
    if (!parse_state_name(name, g, i, key) || g >= static_cast<int64_t>(m_groups.size())) {
      errors.push_back("unexpected scalar '" + name + "'");
      continue;
    }
    if (i < 0 && key == "lr") {
      if (!(v >= 0 && std::isfinite(v)))
        errors.push_back(name + " = " + std::to_string(v) + " is not a valid lr");
      has_lr[g] = true;
    } else if (i >= 0 && key == "step" && i < static_cast<int64_t>(m_groups[g].params.size())) {
      if (!(v >= 0 && v == std::floor(v) && v < 9.0e15))
        errors.push_back(name + " = " + std::to_string(v) + " is not a count");
    } else {
      errors.push_back("unexpected scalar '" + name + "'");
    }
  }
  for (size_t g = 0; g < has_lr.size(); ++g)
    if (!has_lr[g]) errors.push_back("missing group" + std::to_string(g) + ".lr");
}

void Optimizer::apply_tensors(const std::map<std::string, Tensor>& tensors) {
  for (size_t g = 0; g < m_groups.size(); ++g) {
    for (size_t i = 0; i < m_groups[g].params.size(); ++i) {
      const Tensor& p = m_groups[g].params[i];
      ParamState& st = m_state[g][i];
      for (size_t k = 0; k < m_keys.size(); ++k) {
        auto it = tensors.find(state_name(g, i, m_keys[k]));
        if (it == tensors.end()) {
          st.tensors[k] = Tensor();
          continue;
        }
        Tensor t = Tensor::empty(p.shape(), p.dtype(), p.device());
        t.copy_(it->second);
        st.tensors[k] = t;
      }
    }
  }
}

void Optimizer::apply_scalars(const std::map<std::string, double>& scalars) {
  auto it = scalars.find("steps");
  if (it != scalars.end()) m_steps = static_cast<int64_t>(it->second);
  for (size_t g = 0; g < m_groups.size(); ++g) {
    m_groups[g].lr = scalars.at("group" + std::to_string(g) + ".lr");
    for (size_t i = 0; i < m_groups[g].params.size(); ++i) {
      auto s = scalars.find(state_name(g, i, "step"));
      m_state[g][i].step = s == scalars.end() ? 0 : static_cast<int64_t>(s->second);
    }
  }
}

void Optimizer::load_state(const std::map<std::string, Tensor>& tensors,
                           const std::map<std::string, double>& scalars, const std::string& source) {
  std::vector<std::string> errors;
  validate_tensors(tensors, errors);
  validate_scalars(scalars, errors);
  if (!errors.empty()) report(source, errors);
  apply_tensors(tensors);
  apply_scalars(scalars);
}

void Optimizer::load_state_scalars(const std::map<std::string, double>& scalars, const std::string& source) {
  std::vector<std::string> errors;
  validate_scalars(scalars, errors);
  if (!errors.empty()) report(source, errors);
  apply_scalars(scalars);
}

// ---- SGD ------------------------------------------------------------------------

namespace {
ParamGroup sgd_defaults(const SGDOptions& o) {
  ParamGroup g;
  g.lr = o.lr;
  g.momentum = o.momentum;
  g.weight_decay = o.weight_decay;
  g.nesterov = o.nesterov;
  return g;
}
ParamGroup adam_defaults(const AdamOptions& o) {
  ParamGroup g;
  g.lr = o.lr;
  g.beta1 = o.beta1;
  g.beta2 = o.beta2;
  g.eps = o.eps;
  g.weight_decay = o.weight_decay;
  return g;
}
}  // namespace

SGD::SGD(SGDOptions options) : Optimizer({"momentum_buffer"}, sgd_defaults(options)) {
  check_group(sgd_defaults(options));
}

SGD::SGD(std::vector<Tensor> params, SGDOptions options) : SGD(options) {
  add_param_group(std::move(params));
}

void SGD::check_group(const ParamGroup& g) const {
  TTQ_CHECK(g.lr >= 0 && std::isfinite(g.lr)) << "SGD: invalid lr " << g.lr;
  TTQ_CHECK(g.momentum >= 0) << "SGD: invalid momentum " << g.momentum;
  TTQ_CHECK(g.weight_decay >= 0) << "SGD: invalid weight_decay " << g.weight_decay;
  TTQ_CHECK(!g.nesterov || g.momentum > 0) << "SGD: Nesterov momentum requires momentum > 0";
}

void SGD::update(const ParamGroup& g, Tensor& param, const Tensor& grad, ParamState& st) {
  Tensor& buf = st.tensors[0];
  bool first = false;
  if (g.momentum != 0 && !buf.defined()) {
    buf = Tensor::empty(param.shape(), param.dtype(), param.device());
    first = true;  // the backend writes buf = g
  }
  ++st.step;
  TTQ_BACKEND(param.device(), sgd_step)
  (param, grad, buf, g.lr, g.momentum, g.weight_decay, g.nesterov, first);
}

// ---- Adam -----------------------------------------------------------------------

Adam::Adam(AdamOptions options) : Optimizer({"exp_avg", "exp_avg_sq"}, adam_defaults(options)) {
  check_group(adam_defaults(options));
}

Adam::Adam(std::vector<Tensor> params, AdamOptions options) : Adam(options) {
  add_param_group(std::move(params));
}

void Adam::check_group(const ParamGroup& g) const {
  TTQ_CHECK(g.lr >= 0 && std::isfinite(g.lr)) << "Adam: invalid lr " << g.lr;
  TTQ_CHECK(g.beta1 >= 0 && g.beta1 < 1) << "Adam: invalid beta1 " << g.beta1;
  TTQ_CHECK(g.beta2 >= 0 && g.beta2 < 1) << "Adam: invalid beta2 " << g.beta2;
  TTQ_CHECK(g.eps >= 0) << "Adam: invalid eps " << g.eps;
  TTQ_CHECK(g.weight_decay >= 0) << "Adam: invalid weight_decay " << g.weight_decay;
}

void Adam::update(const ParamGroup& g, Tensor& param, const Tensor& grad, ParamState& st) {
  Tensor& m = st.tensors[0];
  Tensor& v = st.tensors[1];
  if (!m.defined()) {
    m = Tensor::zeros(param.shape(), param.dtype(), param.device());
    v = Tensor::zeros(param.shape(), param.dtype(), param.device());
  }
  ++st.step;
  TTQ_BACKEND(param.device(), adam_step)
  (param, grad, m, v, g.lr, g.beta1, g.beta2, g.eps, g.weight_decay, st.step);
}

}  // namespace ttq::optim
