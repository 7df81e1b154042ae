// nn::Module: the base of every layer and model. A module owns named parameters,
// named buffers and named child modules, all in registration order, and exposes
// them under PyTorch-style dotted names so that state dicts line up with PyTorch's.
// Implementation: engine/nn/module.cpp. Tests: tests/test_nn.cpp.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/device.h"
#include "engine/tensor.h"

namespace ttq::nn {

// Result of a non-strict load_state_dict: the names that were skipped.
struct LoadResult {
  std::vector<std::string> missing;     // expected by the module, absent from the map
  std::vector<std::string> unexpected;  // in the map, unknown to the module
};

class Module;
// Dotted names of the state that must not be negative, for load_state_dict's
// value check (engine/io/values.h): every BatchNorm2d's running_var.
std::set<std::string> non_negative_state(Module& module);

// Modules are held by std::shared_ptr and are neither copyable nor movable: the
// tensors they own live in stable slots, so a `Tensor*` or `Tensor&` obtained from
// register_parameter / named_parameters stays valid for the module's lifetime
// (to() and load_state_dict() update the slots in place).
//
// Naming: a parameter `weight` of child `conv` of child `features` is
// "features.conv.weight". Child names may themselves contain dots ("norm.1"), as in
// the seed's DenseNet; names are joined, never split.
//
// Order (as PyTorch): a module's own parameters (resp. buffers) in registration order,
// then each child's, depth first, children in registration order.
class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // ---- registration (public so that wrappers, e.g. the TTQ quantizer, can extend a layer)
  // requires: name non-empty, not yet used by a parameter, buffer or child of this module;
  //           t defined and floating when requires_grad.
  // ensures: the slot holds t with requires_grad set as asked; returns the slot.
  Tensor& register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  // Buffers (BN running statistics) are saved in state_dict but get no gradient.
  Tensor& register_buffer(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }

  // ---- local lookup (this module only, no dots interpreted). Throw ttq::Error when absent.
  bool has_parameter(const std::string& name) const;
  bool has_buffer(const std::string& name) const;
  bool has_child(const std::string& name) const;
  Tensor& parameter(const std::string& name);
  // Replaces the child registered under `name` (same position in the order).
  void replace_child(const std::string& name, std::shared_ptr<Module> module);

  // ---- recursive views. Pointers are into this module tree's slots.
  std::vector<std::pair<std::string, Tensor*>> named_parameters();
  std::vector<std::pair<std::string, Tensor*>> named_buffers();
  // Self first under "" (as PyTorch), then every descendant, depth first; a module
  // registered twice is listed once.
  std::vector<std::pair<std::string, Module*>> named_modules();
  // Handles sharing storage and autograd state with the slots (what optimizers take).
  std::vector<Tensor> parameters();
  // Total element count of all parameters (buffers excluded), as PyTorch's
  // sum(p.numel() for p in model.parameters()).
  int64_t num_parameters();
  // Elements of the parameters that currently require a gradient.
  int64_t num_trainable_parameters();

  // ---- state dict: parameters and buffers, in the order above, as handles on the
  // module's own storage (clone() them to snapshot).
  std::vector<std::pair<std::string, Tensor>> state_dict();
  // Copies each entry into the existing tensor (copy_, converting dtype and device).
  // Every name, shape and value is checked first: missing names (strict only),
  // unexpected names (strict only), shape mismatches and values that cannot be
  // loaded (io::load_value_problem, with non_negative for the names
  // non_negative_state() lists) are all reported together in one ttq::InputError
  // line, prefixed by `source` when given (e.g. the file name), and then nothing
  // has been modified. An entry "<bn>.num_batches_tracked" for a BatchNorm2d child
  // (present in modern PyTorch exports) is accepted and ignored.
  LoadResult load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true,
                             const std::string& source = "");
  LoadResult load_state_dict(const std::vector<std::pair<std::string, Tensor>>& state, bool strict = true,
                             const std::string& source = "");

  // ---- modes and placement
  // Sets the training flag of this module and every descendant.
  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return m_training; }
  // Moves every parameter and buffer (and any gradient) to `device`, in place;
  // requires_grad is preserved. Do this before building an optimizer: optimizers
  // hold handles, which would still point at the old storage.
  void to(Device device);
  // Sets every parameter's gradient to undefined.
  void zero_grad();
  // Sets requires_grad on every parameter of this subtree (freezing a layer).
  void set_requires_grad(bool on);

  // ---- computation
  // The default throws: containers that take several inputs define their own entry points.
  virtual Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) { return forward(x); }

  // ---- description
  virtual std::string name() const { return "Module"; }
  virtual std::string extra_repr() const { return ""; }
  // PyTorch-style multi-line tree: "Sequential(\n  (0): Conv2d(1, 8, kernel_size=3, ...)\n...)".
  std::string repr() const;

 protected:
  void add_child(const std::string& name, std::shared_ptr<Module> module);
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return m_children; }

 private:
  struct NamedTensor {
    std::string name;
    std::unique_ptr<Tensor> tensor;  // stable address
  };
  void check_new_name(const std::string& name) const;
  void collect_tensors(const std::string& prefix, bool params, bool buffers,
                       std::vector<std::pair<std::string, Tensor*>>& out, bool dedup,
                       std::vector<const Module*>& seen);
  void collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out,
                       std::vector<const Module*>& seen);

  std::vector<NamedTensor> m_parameters;
  std::vector<NamedTensor> m_buffers;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> m_children;
  bool m_training = true;
};

using ModulePtr = std::shared_ptr<Module>;

}  // namespace ttq::nn
