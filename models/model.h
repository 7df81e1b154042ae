// The three TTQ models (docs/architecture.md, "Models") behind one base class, a
// registry by name, and weight import from safetensors with the PyTorch
// state-dict names of the seed (tests/fixtures/seed). Implementations: models/densenet.cpp,
// models/squeezenet.cpp, models/model.cpp. Tests: tests/test_models.cpp,
// tests/test_seed_parity.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/io/safetensors.h"
#include "engine/nn/layers.h"
#include "engine/nn/module.h"

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

// A model: features + classifier, input [N, in_channels, H, W], output logits
// [N, num_classes]. Dropout is active in train(), BN uses batch statistics in
// train() and running statistics in eval().
class Model : public nn::Module {
 public:
  Model(std::string arch, const ModelConfig& config) : m_arch(std::move(arch)), m_config(config) {}
  const std::string& arch() const { return m_arch; }
  const ModelConfig& config() const { return m_config; }

  // Dotted module names of the first conv (never quantized, frozen in the TTQ
  // phase) and of the classifier (never quantized): "features.conv0" /
  // "features.0" and "classifier" / "classifier.1".
  virtual std::string first_conv_name() const = 0;
  virtual std::string classifier_name() const = 0;
  nn::Conv2d& first_conv();
  nn::Module& classifier();
  // Every Conv2d except the first conv and the classifier, in registration
  // order, with its dotted name: the layers TTQ quantizes.
  std::vector<std::pair<std::string, nn::Conv2d*>> quantizable_convs();

  // Smallest H = W the architecture's pooling accepts.
  virtual int64_t min_input_size() const = 0;
  // Throws ttq::InputError (one line, prefixed by `what`) unless x is
  // [N >= 1, in_channels, H >= min_input_size(), W >= min_input_size()].
  void check_input(const Shape& x, const std::string& what) const;

  std::string name() const override { return m_arch; }

 private:
  std::string m_arch;
  ModelConfig m_config;
};

using ModelPtr = std::shared_ptr<Model>;

// "small_densenet", "squeezenet", "densenet121".
std::vector<std::string> names();
// Builds a freshly initialised model: conv and classifier weights Kaiming-uniform
// (PyTorch's kaiming_uniform_ with a = 0, the seed's init), biases 0, BN weight 1,
// bias 0, running stats (0, 1); draws from `gen`. Throws ttq::InputError for an
// unknown name (listing the known ones) or a `config` that check_config refuses.
ModelPtr create(const std::string& name, const ModelConfig& config = {},
                Generator& gen = nn::global_generator());

// Rewrites torchvision's later dense-layer spelling (denselayerJ.norm1. / conv1. /
// norm2. / conv2.) to the seed's (denselayerJ.norm.1. ...); other names unchanged.
std::string canonical_name(const std::string& name);

struct LoadOptions {
  // Drop "<layer>.latent_weight", "<layer>.wp", "<layer>.wn" of a TTQ checkpoint
  // when <layer> is a quantizable conv of the model (inference needs only the
  // ternary weight).
  bool ignore_ttq_state = false;
  // Drop a training checkpoint's "optimizer.*", "optimizer_scalar.*" and "scheduler.*".
  bool ignore_optimizer_state = false;
};
// Loads `tensors` into `model`: names canonicalised as above, then strict
// nn::Module::load_state_dict, which checks every name and shape before copying
// anything. Errors are one ttq::InputError line prefixed by `source`.
void load_weights(Model& model, const io::NamedTensors& tensors, const std::string& source,
                  const LoadOptions& options = {});
void load_weights(Model& model, const std::string& path, const LoadOptions& options = {});

// The model config implied by a state dict: in_channels from the first conv's
// weight, num_classes from the classifier's weight (input_size left as given).
// Throws ttq::InputError when the first conv or classifier weight is absent or
// the config they imply fails check_config.
ModelConfig config_from_weights(const std::string& arch, const io::NamedTensors& tensors,
                                const std::string& source, ModelConfig base = {});

namespace detail {
// Output size of a pooling window as PyTorch computes it, or 0 when the window
// does not fit (in + 2 pad < kernel), where PyTorch raises.
int64_t pooled_size(int64_t in, int kernel, int stride, int pad, bool ceil_mode);
}  // namespace detail

}  // namespace ttq::models
