// nn::Module: registration, dotted-name traversal, state dicts, modes and placement.
// Contract: engine/nn/module.h. Tests: tests/test_nn.cpp.
#include "engine/nn/module.h"

#include <algorithm>
#include <set>
#include <sstream>

#include "engine/io/values.h"
#include "engine/nn/layers.h"

namespace ttq::nn {

namespace {

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

// "a, b, c" with at most `limit` names, then "... (N more)": one readable line
// even when a whole model's names are missing.
std::string name_list(const std::vector<std::string>& names, size_t limit = 8) {
  std::ostringstream os;
  for (size_t i = 0; i < names.size() && i < limit; ++i) os << (i ? ", " : "") << names[i];
  if (names.size() > limit) os << ", ... (" << names.size() - limit << " more)";
  return os.str();
}

}  // namespace

std::set<std::string> non_negative_state(Module& module) {
  std::set<std::string> names;
  for (auto& [prefix, m] : module.named_modules())
    if (dynamic_cast<BatchNorm2d*>(m) != nullptr) names.insert(join(prefix, "running_var"));
  return names;
}

void Module::check_new_name(const std::string& name) const {
  TTQ_CHECK(!name.empty()) << this->name() << ": empty name";
  TTQ_CHECK(!has_parameter(name) && !has_buffer(name) && !has_child(name))
      << this->name() << ": name '" << name << "' already registered";
}

Tensor& Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  check_new_name(name);
  TTQ_CHECK(t.defined()) << this->name() << ": parameter '" << name << "' is undefined";
  TTQ_CHECK(t.grad_fn() == nullptr) << this->name() << ": parameter '" << name
                                    << "' must be a leaf (detach() it)";
  t.set_requires_grad(requires_grad);
  m_parameters.push_back({name, std::make_unique<Tensor>(std::move(t))});
  return *m_parameters.back().tensor;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  check_new_name(name);
  TTQ_CHECK(t.defined()) << this->name() << ": buffer '" << name << "' is undefined";
  m_buffers.push_back({name, std::make_unique<Tensor>(t.detach())});
  return *m_buffers.back().tensor;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name(name);
  TTQ_CHECK(module != nullptr) << this->name() << ": child '" << name << "' is null";
  TTQ_CHECK(module.get() != this) << this->name() << ": a module cannot be its own child";
  m_children.emplace_back(name, std::move(module));
}

bool Module::has_parameter(const std::string& name) const {
  return std::any_of(m_parameters.begin(), m_parameters.end(),
                     [&](const NamedTensor& e) { return e.name == name; });
}
bool Module::has_buffer(const std::string& name) const {
  return std::any_of(m_buffers.begin(), m_buffers.end(),
                     [&](const NamedTensor& e) { return e.name == name; });
}
bool Module::has_child(const std::string& name) const {
  return std::any_of(m_children.begin(), m_children.end(), [&](const auto& e) { return e.first == name; });
}

Tensor& Module::parameter(const std::string& name) {
  for (auto& e : m_parameters)
    if (e.name == name) return *e.tensor;
  TTQ_THROW() << this->name() << ": no parameter '" << name << "'";
}

void Module::replace_child(const std::string& name, std::shared_ptr<Module> module) {
  TTQ_CHECK(module != nullptr) << this->name() << ": replacement for '" << name << "' is null";
  for (auto& e : m_children) {
    if (e.first == name) {
      e.second = std::move(module);
      return;
    }
  }
  TTQ_THROW() << this->name() << ": no child '" << name << "' to replace";
}

void Module::collect_tensors(const std::string& prefix, bool params, bool buffers,
                             std::vector<std::pair<std::string, Tensor*>>& out, bool dedup,
                             std::vector<const Module*>& seen) {
  if (dedup) {
    if (std::find(seen.begin(), seen.end(), this) != seen.end()) return;
    seen.push_back(this);
  }
  if (params)
    for (auto& e : m_parameters) out.emplace_back(join(prefix, e.name), e.tensor.get());
  if (buffers)
    for (auto& e : m_buffers) out.emplace_back(join(prefix, e.name), e.tensor.get());
  for (auto& [name, child] : m_children)
    child->collect_tensors(join(prefix, name), params, buffers, out, dedup, seen);
}

void Module::collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out,
                             std::vector<const Module*>& seen) {
  if (std::find(seen.begin(), seen.end(), this) != seen.end()) return;
  seen.push_back(this);
  out.emplace_back(prefix, this);
  for (auto& [name, child] : m_children) child->collect_modules(join(prefix, name), out, seen);
}

std::vector<std::pair<std::string, Tensor*>> Module::named_parameters() {
  std::vector<std::pair<std::string, Tensor*>> out;
  std::vector<const Module*> seen;
  collect_tensors("", true, false, out, true, seen);
  return out;
}

std::vector<std::pair<std::string, Tensor*>> Module::named_buffers() {
  std::vector<std::pair<std::string, Tensor*>> out;
  std::vector<const Module*> seen;
  collect_tensors("", false, true, out, true, seen);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out;
  std::vector<const Module*> seen;
  collect_modules("", out, seen);
  return out;
}

std::vector<Tensor> Module::parameters() {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(*t);
  return out;
}

int64_t Module::num_parameters() {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t->numel();
  return n;
}

int64_t Module::num_trainable_parameters() {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters())
    if (t->requires_grad()) n += t->numel();
  return n;
}

std::vector<std::pair<std::string, Tensor>> Module::state_dict() {
  // Per module: parameters, then buffers, then children (PyTorch's order).
  std::vector<std::pair<std::string, Tensor*>> slots;
  std::vector<const Module*> seen;
  collect_tensors("", true, true, slots, false, seen);
  std::vector<std::pair<std::string, Tensor>> out;
  out.reserve(slots.size());
  for (auto& [name, t] : slots) out.emplace_back(name, t->detach());
  return out;
}

LoadResult Module::load_state_dict(const std::vector<std::pair<std::string, Tensor>>& state, bool strict,
                                   const std::string& source) {
  std::map<std::string, Tensor> m;
  for (const auto& [name, t] : state) {
    TTQ_INPUT_CHECK(m.emplace(name, t).second)
        << (source.empty() ? "state dict" : source) << ": duplicate entry '" << name << "'";
  }
  return load_state_dict(m, strict, source);
}

LoadResult Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict,
                                   const std::string& source) {
  std::vector<std::pair<std::string, Tensor*>> slots;
  std::vector<const Module*> seen;
  collect_tensors("", true, true, slots, false, seen);

  // Names a PyTorch export may carry that this engine does not keep.
  std::set<std::string> ignorable;
  for (auto& [prefix, m] : named_modules())
    if (dynamic_cast<BatchNorm2d*>(m) != nullptr) ignorable.insert(join(prefix, "num_batches_tracked"));

  const std::set<std::string> non_negative = non_negative_state(*this);
  LoadResult result;
  std::vector<std::string> mismatched, bad_values;
  std::set<std::string> known;
  for (auto& [name, slot] : slots) {
    known.insert(name);
    auto it = state.find(name);
    if (it == state.end()) {
      result.missing.push_back(name);
      continue;
    }
    const Tensor& src = it->second;
    if (!src.defined()) {
      mismatched.push_back(name + " (undefined tensor)");
    } else if (src.shape() != slot->shape()) {
      mismatched.push_back(name + " (expected " + shape_str(slot->shape()) + ", got " +
                           shape_str(src.shape()) + ")");
    } else if (std::string why = io::load_value_problem(src, slot->dtype(), non_negative.count(name) != 0);
               !why.empty()) {
      bad_values.push_back(name + " (" + why + ")");
    }
  }
  for (const auto& [name, t] : state)
    if (!known.count(name) && !ignorable.count(name)) result.unexpected.push_back(name);

  std::vector<std::string> problems;
  if (strict && !result.missing.empty()) problems.push_back("missing " + name_list(result.missing));
  if (strict && !result.unexpected.empty()) problems.push_back("unexpected " + name_list(result.unexpected));
  if (!mismatched.empty()) problems.push_back("shape mismatch " + name_list(mismatched));
  if (!bad_values.empty()) problems.push_back("bad values " + name_list(bad_values));
  if (!problems.empty()) {
    std::ostringstream os;
    os << (source.empty() ? "load_state_dict" : source) << ": ";
    for (size_t i = 0; i < problems.size(); ++i) os << (i ? "; " : "") << problems[i];
    TTQ_INPUT_ERROR() << os.str();
  }

  // Everything checked: copy. copy_ only fails on programming errors from here on.
  for (auto& [name, slot] : slots) {
    auto it = state.find(name);
    if (it != state.end()) slot->copy_(it->second);
  }
  return result;
}

void Module::train(bool on) {
  m_training = on;
  for (auto& [name, child] : m_children) child->train(on);
}

void Module::to(Device device) {
  auto move = [&](Tensor* t) {
    if (!t->defined() || t->device() == device) return;
    const bool rg = t->requires_grad();
    Tensor g = t->grad();
    *t = t->to(device);
    if (rg) t->set_requires_grad(true);
    if (g.defined()) t->set_grad(g.to(device));
  };
  std::vector<std::pair<std::string, Tensor*>> slots;
  std::vector<const Module*> seen;
  collect_tensors("", true, true, slots, true, seen);
  for (auto& [name, t] : slots) move(t);
}

void Module::zero_grad() {
  for (auto& [name, t] : named_parameters()) t->zero_grad();
}

void Module::set_requires_grad(bool on) {
  for (auto& [name, t] : named_parameters()) t->set_requires_grad(on);
}

Tensor Module::forward(const Tensor& x) {
  TTQ_THROW() << this->name() << ": forward(const Tensor&) is not defined for this module";
}

std::string Module::repr() const {
  std::ostringstream os;
  os << this->name() << "(" << extra_repr();
  if (!m_children.empty()) {
    os << "\n";
    for (const auto& [cname, child] : m_children) {
      std::string sub = child->repr();
      // Indent nested lines by two spaces, as PyTorch.
      std::string indented;
      for (char c : sub) {
        indented += c;
        if (c == '\n') indented += "  ";
      }
      os << "  (" << cname << "): " << indented << "\n";
    }
  }
  os << ")";
  return os.str();
}

}  // namespace ttq::nn
