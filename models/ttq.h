// Trained Ternary Quantization of a whole model (docs/ttq.md): a
// WeightQuantizer that makes an nn::Conv2d ternary with learnable scales, the
// model-level switch, the scale clamp after each optimiser step, the TTQ-phase
// parameter groups, the checkpoint view of docs/formats.md and its inverse,
// and zero-fraction / scale statistics. Implementation: models/ttq.cpp.
// Tests: tests/test_ttq_layer.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/io/safetensors.h"
#include "engine/nn/layers.h"
#include "engine/nn/module.h"
#include "engine/optim/optimizer.h"
#include "kernels/scale_grad.h"

namespace ttq::models {

class Model;

// Initial Wp, Wn: `Ones` (the seed's Wp = Wn = 1) or `Mean` (mean |W| over P and
// over N of the latent weight at the start of the TTQ phase).
enum class ScaleInit : uint8_t { Ones, Mean };
const char* scale_init_name(ScaleInit s);  // "ones" / "mean"
// Throws ttq::InputError naming the flag value on anything else.
ScaleInit parse_scale_init(std::string_view s);

struct TtqOptions {
  double t = 0.05;  // threshold factor: delta = t * max|W| per layer (the seed: 0.15 for SqueezeNet)
  kernels::WnGradMode wn_grad = kernels::WnGradMode::Exact;
  ScaleInit scale_init = ScaleInit::Ones;
  float scale_eps = 1e-6f;  // Wp, Wn are clamped at this floor after each step
  // Dotted module names: the first conv is frozen and, like the classifier (and
  // anything under it), never quantized. quantize_model(Model&, ...) fills them in.
  std::string first_conv;
  std::string classifier;
  bool freeze_first_conv = true;
};

// Ternary weight for one conv: quantize(latent) = ternary_weight(latent, wp, wn,
// t, mode). The scales are the conv's own parameters "wp" and "wn" ([1], F32),
// held by slot pointer so that Module::to() and load_state_dict() stay visible.
// Wq is recomputed on every forward pass from the current latent weight and
// scales, so it can never be stale after an optimiser step.
class TtqQuantizer : public nn::WeightQuantizer {
 public:
  TtqQuantizer(Tensor* wp, Tensor* wn, double t, kernels::WnGradMode mode);
  Tensor quantize(const Tensor& latent) override;

  Tensor& wp() const { return *m_wp; }
  Tensor& wn() const { return *m_wn; }
  double t() const { return m_t; }
  kernels::WnGradMode mode() const { return m_mode; }

 private:
  Tensor* m_wp;
  Tensor* m_wn;
  double m_t;
  kernels::WnGradMode m_mode;
};

struct TtqLayer {
  std::string name;  // dotted module name of the conv
  nn::Conv2d* conv = nullptr;
  TtqQuantizer* quantizer = nullptr;
};

// What quantize_model did: the options it used (scale_init says which init) and
// the quantized layers in registration order.
struct TtqModel {
  TtqOptions options;
  std::vector<TtqLayer> layers;
};

// requires: no Conv2d of `model` has a quantizer yet; options.first_conv names a
// Conv2d of the model (unless empty); 0 <= t < 1; scale_eps > 0.
// ensures: every Conv2d except the first conv and those under the classifier has
// a TtqQuantizer, parameters "<layer>.wp" and "<layer>.wn" initialised as asked
// (on the weight's device) and its `weight` now serves as the latent weight; the
// first conv has requires_grad false when freeze_first_conv.
TtqModel quantize_model(nn::Module& model, const TtqOptions& options);
// Same, taking the first conv and classifier names from the model.
TtqModel quantize_model(Model& model, TtqOptions options);

// The TTQ layers of an already quantized module (e.g. to query it later).
std::vector<TtqLayer> ttq_layers(nn::Module& model);

// After an optimiser step: clamps every layer's Wp, Wn at options.scale_eps.
void clamp_scales(const TtqModel& ttq);
// Registers clamp_scales as a post-step hook of `opt` (the model's layers must
// outlive opt; `ttq` itself need not).
void add_ttq_hooks(optim::Optimizer& opt, const TtqModel& ttq);

// Parameters of the TTQ phase, each requiring a gradient, in model order:
// latent conv weights, scales (wp, wn of every layer), the classifier's weight
// (the seed decays only it) and every other trainable parameter (BN, biases,
// the classifier's bias). The frozen first conv is in none of them.
struct TtqParamGroups {
  std::vector<Tensor> latent, scales, classifier_weight, rest;
};
TtqParamGroups ttq_param_groups(nn::Module& model, const TtqModel& ttq);

// The seed's TTQ optimiser: Adam(lr) on every group, weight decay
// `classifier_weight_decay` on the classifier weight only, groups in the order
// of TtqParamGroups (empty groups skipped); clamp_scales hooked after each step.
std::unique_ptr<optim::Adam> make_ttq_optimizer(nn::Module& model, const TtqModel& ttq, double lr,
                                                double classifier_weight_decay = 1e-4);

// The checkpoint view (docs/formats.md, "Training checkpoint"): the module's
// state dict where each quantized layer's "<layer>.weight" holds the ternary
// values {+Wp, 0, -Wn} (so PyTorch loads it as an ordinary model) followed by
// "<layer>.latent_weight"; "<layer>.wp", "<layer>.wn" as in the state dict.
// Tensors on the module's devices.
io::NamedTensors ttq_checkpoint_view(nn::Module& model, const TtqModel& ttq);
// The inverse: loads such tensors into a quantized model (strict; names and
// shapes checked before anything is modified; errors are one ttq::InputError
// line prefixed by `source`). A layer without "<layer>.latent_weight" (the
// seed's TTQ files) must have no wp / wn either and at most the three values
// {+a, 0, -b} in its weight; then latent = sign(weight) (+1, 0, -1), Wp = a,
// Wn = b, which ternarizes back to the same values for any t < 1.
void load_ttq_checkpoint(nn::Module& model, const TtqModel& ttq, const io::NamedTensors& tensors,
                         const std::string& source);

// Metadata entries for a checkpoint: "ttq.t", "ttq.scale_init", "ttq.wn_grad".
io::Metadata ttq_metadata(const TtqOptions& options);
// Reads them back into `base` (absent keys leave base's values); InputError on bad values.
TtqOptions ttq_options_from_metadata(const io::Metadata& meta, TtqOptions base, const std::string& source);

struct TtqLayerStats {
  std::string name;
  int64_t numel = 0, zeros = 0, pos = 0, neg = 0;
  double wp = 0, wn = 0;
};
struct TtqStats {
  std::vector<TtqLayerStats> layers;
  int64_t quantized_weights = 0, zeros = 0;
  double zero_fraction = 0;         // zeros / quantized weights (weighted by count)
  double mean_wp = 0, mean_wn = 0;  // unweighted means over layers
};
// Synchronises on CUDA (counts come back to the host).
TtqStats ttq_stats(const TtqModel& ttq);

}  // namespace ttq::models
