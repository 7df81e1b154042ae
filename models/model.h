// The trainable model built from a models::Graph, the registry of architectures
// by name, and weight import from safetensors under PyTorch state-dict names.
// Architectures: models/architectures.h; implementation: models/model.cpp.
// Tests: tests/test_models.cpp, tests/test_seed_parity.cpp, tests/test_graph.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/io/safetensors.h"
#include "engine/nn/layers.h"
#include "engine/nn/module.h"
#include "models/graph.h"

namespace ttq::models {

struct ModelConfig {
  int64_t in_channels = 3;  // 1 for Fashion-MNIST
  int64_t input_size = 56;  // H = W the model is meant for (summaries; pooling is global)
  int64_t num_classes = 200;
  // Drop probability of every dropout the architecture has (small DenseNet: after each
  // dense layer and before the classifier; DenseNet-121: before the classifier;
  // SqueezeNet: before the classifier conv). < 0 selects the architecture's default
  // (0.25, 0.25, 0.6).
  double dropout = -1;
  // DenseNets: recompute concat -> BN -> ReLU -> 1x1 conv of every dense layer in
  // backward instead of keeping them (memory linear in depth). false keeps the
  // naive graph (for measurements); both give the same outputs and gradients.
  bool memory_efficient = true;
};

// Bounds on a configuration, wherever it comes from (flags, a file's metadata, the
// weights' shapes): a nonsense value is a one-line InputError, never a classifier
// of a trillion outputs that ends in bad_alloc.
inline constexpr int64_t kMaxInChannels = 1024;
inline constexpr int64_t kMaxClasses = int64_t(1) << 17;  // 131072: ImageNet-21k has 21841
inline constexpr int64_t kMaxInputSize = 2048;            // H = W; the seed's models take 56
// Throws ttq::InputError "<what>: ..." unless 1 <= in_channels <= kMaxInChannels,
// 1 <= num_classes <= kMaxClasses, 1 <= input_size <= kMaxInputSize and dropout < 1.
void check_config(const ModelConfig& config, const std::string& what);

// A trainable model: the modules of a Graph (models/graph.h), each registered
// under its node's module name so that parameter names are the graph's PyTorch
// state-dict names, and a forward pass that runs the nodes in order. Input
// [N, in_channels, H, W], output logits [N, num_classes]. Dropout is active in
// train(), BN uses batch statistics in train() and running statistics in eval().
// In training, each Concat -> BatchNorm2d -> ReLU -> 1x1 Conv2d chain whose
// intermediate values have no other reader runs as one memory-efficient dense
// bottleneck (ops::dense_bottleneck: the concatenation is never materialised and
// BN + ReLU are recomputed in backward) unless config.memory_efficient is false.
class Model : public nn::Module {
 public:
  // Builds the modules (PyTorch's default init, drawn from `gen`).
  Model(Graph graph, const ModelConfig& config, Generator& gen);
  const std::string& arch() const { return m_graph.arch(); }
  const ModelConfig& config() const { return m_config; }
  const Graph& graph() const { return m_graph; }

  Tensor forward(const Tensor& x) override;
  void train(bool on = true) override;

  // The module of graph node `i` (null for nodes without one: Input, Concat, Add).
  nn::Module* module(int i) const { return m_modules[static_cast<size_t>(i)].get(); }

  // Dotted module names of the first conv (never quantized, frozen in the TTQ
  // phase) and of the classifier (never quantized), by the graph's rule
  // (Graph::first_layers, Graph::classifiers): "features.conv0" / "features.0" and
  // "classifier" / "classifier.1" for the built-in architectures.
  std::string first_conv_name() const;
  std::string classifier_name() const;
  nn::Conv2d& first_conv();
  nn::Module& classifier();
  // The convolutions TTQ quantizes (Graph::quantizable_convs), in node order, with
  // their dotted names.
  std::vector<std::pair<std::string, nn::Conv2d*>> quantizable_convs();

  // Smallest H = W the graph accepts.
  int64_t min_input_size() const { return m_min_input; }
  // Throws ttq::InputError (one line, prefixed by `what`) unless x is
  // [N >= 1, in_channels, H, W] with a size every node accepts.
  void check_input(const Shape& x, const std::string& what) const;

  std::string name() const override { return m_graph.arch(); }

 private:
  Graph m_graph;
  ModelConfig m_config;
  int64_t m_min_input = 1;
  std::vector<std::shared_ptr<nn::Module>> m_modules;  // by node
  std::vector<int> m_last_use;                         // last node reading each node's value
  // Dense bottlenecks: for a Concat node c, the index of the 1x1 conv ending its
  // Concat -> BN -> ReLU -> Conv chain (-1 when c starts none).
  std::vector<int> m_bottleneck_conv;
};

using ModelPtr = std::shared_ptr<Model>;

// The registered architectures ("small_densenet", "squeezenet", "densenet121", and
// any a program registers with register_architecture).
std::vector<std::string> names();
// Builds a freshly initialised model of a registered architecture: conv and
// classifier weights Kaiming-uniform (PyTorch's kaiming_uniform_ with a = 0, the
// seed's init), biases 0, BN weight 1, bias 0, running stats (0, 1); draws from
// `gen`. Throws ttq::InputError for an unknown name (listing the known ones) or a
// `config` that check_config refuses.
ModelPtr create(const std::string& name, const ModelConfig& config = {},
                Generator& gen = nn::global_generator());
// The same for a graph built elsewhere.
ModelPtr create(Graph graph, const ModelConfig& config, Generator& gen = nn::global_generator());

struct LoadOptions {
  // Drop "<layer>.latent_weight", "<layer>.wp", "<layer>.wn" of a TTQ checkpoint
  // when <layer> is a quantizable conv of the model (inference needs only the
  // ternary weight).
  bool ignore_ttq_state = false;
  // Drop a training checkpoint's "optimizer.*", "optimizer_scalar.*" and "scheduler.*".
  bool ignore_optimizer_state = false;
};
// Loads `tensors` into `model`: names canonicalised by the graph's aliases
// (torchvision's denselayerJ.norm1 for the seed's denselayerJ.norm.1), then strict
// nn::Module::load_state_dict, which checks every name and shape before copying
// anything. Errors are one ttq::InputError line prefixed by `source`.
void load_weights(Model& model, const io::NamedTensors& tensors, const std::string& source,
                  const LoadOptions& options = {});
void load_weights(Model& model, const std::string& path, const LoadOptions& options = {});

// The model config implied by a state dict: in_channels from the first conv's
// weight, num_classes from the classifier's weight, both found by the graph's rule
// (input_size left as given). Throws ttq::InputError when either is absent or the
// config they imply fails check_config.
ModelConfig config_from_weights(const std::string& arch, const io::NamedTensors& tensors,
                                const std::string& source, ModelConfig base = {});

}  // namespace ttq::models
