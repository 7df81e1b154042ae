// Optimizers with parameter groups: the Optimizer base (groups, per-parameter state,
// checkpointable state, post-step hooks), SGD and Adam with PyTorch's exact update
// rules. The arithmetic runs in the backend's sgd_step / adam_step (engine/backend.h;
// CPU reference in engine/cpu/optim.cpp) on each parameter's device.
// Implementation: engine/optim/optimizer.cpp. Tests: tests/test_optim.cpp (hand-computed,
// naive and PyTorch trajectories from bench/peers/optim_reference.py).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace ttq::optim {

// One group of parameters sharing hyper-parameters. New groups start from the
// optimizer's defaults; change fields through the reference add_param_group returns.
struct ParamGroup {
  std::vector<Tensor> params;  // handles sharing storage and autograd state with the module
  double lr = 0;
  double weight_decay = 0;  // L2: g += weight_decay * p before the update (both optimizers)
  // SGD only.
  double momentum = 0;
  bool nesterov = false;
  // Adam only.
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

// Base class. Parameters without a gradient (undefined grad) are skipped by step(),
// and their state is left untouched, as PyTorch does.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // requires every tensor defined, floating and contiguous (parameters are).
  // ensures a new group holding `params` with the optimizer's defaults; returns it
  // so that fields can be adjusted: opt.add_param_group({w}).weight_decay = 1e-4;
  ParamGroup& add_param_group(std::vector<Tensor> params);
  size_t num_groups() const { return m_groups.size(); }
  ParamGroup& group(size_t i);
  const ParamGroup& group(size_t i) const;
  double lr(size_t group) const;
  void set_lr(size_t group, double lr);

  // One update of every parameter that has a gradient, then the post-step hooks in
  // the order they were added. Runs without recording autograd.
  void step();
  // Sets every parameter's gradient to undefined (PyTorch's set_to_none).
  void zero_grad();
  // Hooks run after every step(), e.g. TTQ's scale clamp (the ternary weights are
  // recomputed by the next forward pass).
  void add_post_step_hook(std::function<void()> hook);
  int64_t steps_taken() const { return m_steps; }

  // ---- checkpoint state
  // Per-parameter state tensors named "group<g>.param<i>.<key>" (keys: SGD
  // "momentum_buffer"; Adam "exp_avg", "exp_avg_sq"), only for parameters that have
  // state. Handles on the live state: clone() to snapshot.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // "steps" (step() calls), "group<g>.lr", and "group<g>.param<i>.step" (updates
  // that parameter received) for parameters that have state.
  std::vector<std::pair<std::string, double>> state_scalars() const;
  // Replace the state. Every entry is validated first (known group / parameter /
  // key, shape equal to the parameter's, all keys of a parameter together, every
  // group's lr present); problems are reported together in one ttq::InputError
  // line prefixed by `source`, and then nothing has changed. Parameters absent
  // from `tensors` end with no state. Tensors are copied to the parameter's
  // device and dtype.
  void load_state(const std::map<std::string, Tensor>& tensors, const std::map<std::string, double>& scalars,
                  const std::string& source = "");
  void load_state_scalars(const std::map<std::string, double>& scalars, const std::string& source = "");

  virtual std::string name() const = 0;

 protected:
  Optimizer(std::vector<std::string> state_keys, ParamGroup defaults);
  struct ParamState {
    std::vector<Tensor> tensors;  // one per state key, undefined until first update
    int64_t step = 0;
    bool has_state() const { return step > 0 || (!tensors.empty() && tensors[0].defined()); }
  };
  // Updates one parameter whose gradient `grad` (contiguous, same shape) is defined.
  virtual void update(const ParamGroup& group, Tensor& param, const Tensor& grad, ParamState& st) = 0;
  // Group-level checks (e.g. Nesterov needs momentum); throw ttq::Error.
  virtual void check_group(const ParamGroup& group) const {}

 private:
  void validate_tensors(const std::map<std::string, Tensor>& tensors, std::vector<std::string>& errors) const;
  void validate_scalars(const std::map<std::string, double>& scalars, std::vector<std::string>& errors) const;
  void apply_tensors(const std::map<std::string, Tensor>& tensors);
  void apply_scalars(const std::map<std::string, double>& scalars);

  std::vector<std::string> m_keys;
  ParamGroup m_defaults;
  std::vector<ParamGroup> m_groups;
  std::vector<std::vector<ParamState>> m_state;  // [group][param]
  std::vector<std::function<void()>> m_hooks;
  int64_t m_steps = 0;
};

struct SGDOptions {
  double lr = 0.01;
  double momentum = 0;
  double weight_decay = 0;
  bool nesterov = false;
};

// PyTorch's torch.optim.SGD with dampening 0:
//   g = grad + weight_decay * p
//   if momentum != 0: buf = (first update) ? g : momentum * buf + g
//                     g = nesterov ? g + momentum * buf : buf
//   p = p - lr * g
// requires lr >= 0, momentum >= 0, weight_decay >= 0, nesterov => momentum > 0.
class SGD : public Optimizer {
 public:
  explicit SGD(std::vector<Tensor> params, SGDOptions options = {});
  explicit SGD(SGDOptions options);  // no group yet: add them with add_param_group
  std::string name() const override { return "SGD"; }

 protected:
  void update(const ParamGroup& group, Tensor& param, const Tensor& grad, ParamState& st) override;
  void check_group(const ParamGroup& group) const override;
};

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
};

// PyTorch's torch.optim.Adam (amsgrad off), L2 weight decay added to the gradient:
//   t += 1; g = grad + weight_decay * p
//   m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2   (m = v = 0 at t = 0)
//   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// requires lr >= 0, 0 <= beta1, beta2 < 1, eps >= 0, weight_decay >= 0.
class Adam : public Optimizer {
 public:
  explicit Adam(std::vector<Tensor> params, AdamOptions options = {});
  explicit Adam(AdamOptions options);
  std::string name() const override { return "Adam"; }

 protected:
  void update(const ParamGroup& group, Tensor& param, const Tensor& grad, ParamState& st) override;
  void check_group(const ParamGroup& group) const override;
};

}  // namespace ttq::optim
