#include "engine/autograd.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "engine/backend.h"

namespace ttq::autograd {

namespace {
thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_sequence{0};

// a + b as a fresh tensor (never in place: gradients may be shared between inputs).
Tensor accumulate(const Tensor& a, const Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  check_same_shape(a, b, "gradient accumulation");
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  TTQ_BACKEND(a.device(), axpby)(1.0, a, 1.0, b, out);
  return out;
}
}  // namespace

NoGradGuard::NoGradGuard() : m_prev(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = m_prev; }

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t != nullptr && t->defined() && t->requires_grad()) return true;
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(const char* name, const std::vector<const Tensor*>& inputs, const std::vector<Tensor*>& outputs,
            BackwardFn backward) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->sequence = g_sequence++;
  node->inputs.reserve(inputs.size());
  for (const Tensor* t : inputs) {
    if (t != nullptr && t->defined() && t->requires_grad()) {
      node->inputs.push_back(t->autograd_meta());
    } else {
      node->inputs.push_back(nullptr);
    }
  }
  node->num_outputs = outputs.size();
  for (Tensor* o : outputs) node->output_shapes.push_back(o->shape());
  if (!outputs.empty()) {
    node->output_dtype = outputs[0]->dtype();
    node->output_device = outputs[0]->device();
  }
  node->backward = std::move(backward);
  for (size_t i = 0; i < outputs.size(); ++i) {
    auto meta = std::make_shared<AutogradMeta>();
    meta->requires_grad = true;
    meta->grad_fn = node;
    meta->output_nr = i;
    outputs[i]->mutable_autograd_meta() = meta;
  }
}

void set_grad_ready_hook(Tensor& leaf, std::function<void(const Tensor& grad)> hook) {
  TTQ_CHECK(leaf.requires_grad() && !leaf.autograd_meta()->grad_fn)
      << "set_grad_ready_hook: needs a leaf that requires grad, got " << leaf.str();
  leaf.autograd_meta()->grad_ready = std::move(hook);
}

void backward(const Tensor& root, const Tensor& grad) {
  TTQ_CHECK(root.requires_grad()) << "backward() on a tensor that does not require grad";
  Tensor seed = grad;
  if (!seed.defined()) {
    TTQ_CHECK(root.numel() == 1) << "backward() without a gradient needs a scalar, got "
                                 << shape_str(root.shape());
    seed = Tensor::ones(root.shape(), root.dtype(), root.device());
  }
  check_same_shape(root, seed, "backward seed");
  const auto& root_meta = root.autograd_meta();
  if (!root_meta->grad_fn) {  // a leaf
    root_meta->grad = accumulate(root_meta->grad, seed);
    if (root_meta->grad_ready) root_meta->grad_ready(root_meta->grad);
    return;
  }
  // Collect the graph reachable from the root.
  std::vector<Node*> nodes;
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack{root_meta->grad_fn.get()};
  seen.insert(stack.back());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    nodes.push_back(n);
    for (const auto& in : n->inputs) {
      if (in && in->grad_fn && seen.insert(in->grad_fn.get()).second) stack.push_back(in->grad_fn.get());
    }
  }
  // A node's consumers were all created after it, so decreasing sequence is a
  // valid reverse topological order.
  std::sort(nodes.begin(), nodes.end(), [](Node* a, Node* b) { return a->sequence > b->sequence; });
  // Leaves with a grad_ready hook: how many node inputs of this pass still may add to each.
  std::unordered_map<AutogradMeta*, int> leaf_uses;
  for (Node* n : nodes)
    for (const auto& in : n->inputs)
      if (in && !in->grad_fn && in->grad_ready) ++leaf_uses[in.get()];
  auto leaf_input_done = [&](AutogradMeta* meta) {
    if (--leaf_uses[meta] == 0 && meta->grad.defined()) meta->grad_ready(meta->grad);
  };
  std::unordered_map<Node*, std::vector<Tensor>> pending;
  pending[root_meta->grad_fn.get()].resize(root_meta->grad_fn->num_outputs);
  pending[root_meta->grad_fn.get()][root_meta->output_nr] = seed;
  for (Node* n : nodes) {
    auto it = pending.find(n);
    if (it == pending.end()) {  // no gradient reaches this node: it adds nothing to its leaves
      for (const auto& in : n->inputs)
        if (in && !in->grad_fn && in->grad_ready) leaf_input_done(in.get());
      continue;
    }
    std::vector<Tensor> gouts = std::move(it->second);
    pending.erase(it);
    TTQ_CHECK(n->backward) << "backward through '" << n->name
                           << "' a second time: the graph is freed after backward";
    gouts.resize(n->num_outputs);
    for (size_t i = 0; i < gouts.size(); ++i) {
      if (!gouts[i].defined())
        gouts[i] = Tensor::zeros(n->output_shapes[i], n->output_dtype, n->output_device);
    }
    std::vector<Tensor> gins = n->backward(gouts);
    n->backward = nullptr;  // frees the saved tensors
    TTQ_CHECK(gins.size() == n->inputs.size()) << n->name << ": backward returned " << gins.size()
                                               << " gradients for " << n->inputs.size() << " inputs";
    for (size_t i = 0; i < gins.size(); ++i) {
      const auto& meta = n->inputs[i];
      if (!meta) continue;
      if (!gins[i].defined()) {
        if (!meta->grad_fn && meta->grad_ready) leaf_input_done(meta.get());
        continue;
      }
      if (meta->grad_fn) {
        auto& slot = pending[meta->grad_fn.get()];
        slot.resize(meta->grad_fn->num_outputs);
        slot[meta->output_nr] = accumulate(slot[meta->output_nr], gins[i]);
      } else if (meta->requires_grad) {
        meta->grad = accumulate(meta->grad, gins[i]);
        if (meta->grad_ready) leaf_input_done(meta.get());
      }
    }
  }
}

}  // namespace ttq::autograd
