// Tape-based reverse-mode autograd (define-by-run).
//
// Each differentiable op computes its outputs with the backend, then calls
// autograd::record() with its inputs, outputs and a backward closure mapping
// output gradients to input gradients. Closures must capture tensors through
// detach() (never the outputs themselves with their autograd state: that would
// make a reference cycle). backward() walks the graph in reverse creation
// order, accumulates gradients out of place, and frees every closure it ran,
// so the graph is released after one backward pass.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace ttq::autograd {

using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)>;

struct Node {
  std::string name;
  uint64_t sequence = 0;  // creation order; backward runs in decreasing order
  // One entry per input of the op; null where the input needs no gradient.
  std::vector<std::shared_ptr<AutogradMeta>> inputs;
  size_t num_outputs = 1;
  // Output shapes/dtypes/devices, to build zero gradients for unused outputs.
  std::vector<Shape> output_shapes;
  DType output_dtype = DType::F32;
  Device output_device;
  BackwardFn backward;  // cleared after it ran once
};

struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;                    // accumulated gradient (leaves)
  std::shared_ptr<Node> grad_fn;  // null for leaves
  size_t output_nr = 0;
  // Leaves only: called by backward() once this leaf's gradient of the pass is
  // final (every node of the pass that could add to it has run), with `grad`.
  std::function<void(const Tensor& grad)> grad_ready;
};

// Gradient mode (thread-local): ops record only when it is on; NoGradGuard turns it
// off for its scope.
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool m_prev;
};

// True when grad mode is on and any input requires a gradient.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);

// Attaches a node to `outputs` (which become non-leaf tensors requiring grad).
// `backward` returns one tensor per input (undefined where no gradient flows).
void record(const char* name, const std::vector<const Tensor*>& inputs, const std::vector<Tensor*>& outputs,
            BackwardFn backward);

// Sets (or clears, with an empty function) the hook backward() calls once the
// gradient of the leaf `leaf` is final within a pass: the data-parallel
// reducer's cue to start reducing it while the rest of backward runs. A leaf
// that gets no gradient in a pass is not called. requires leaf.requires_grad()
// and leaf a leaf.
void set_grad_ready_hook(Tensor& leaf, std::function<void(const Tensor& grad)> hook);

// Runs reverse mode from `root` with seed gradient `grad` (same shape as root).
void backward(const Tensor& root, const Tensor& grad);

}  // namespace ttq::autograd
