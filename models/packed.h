// Packed 2-bit models (docs/formats.md, "Packed model"): the library side of ttq_pack
// (a TTQ checkpoint or ternary weights -> a "ttq-packed-2bit" safetensors file) and
// PackedModel, which runs a whole forward pass on the packed weights (CPU or CUDA)
// with BN and ReLU fused into the packed convolutions and, on CUDA, the pass
// captured in a CUDA graph. Implementation: models/pack.cpp (packing), models/packed_model.cpp (the runner);
// kernels: kernels/packed_conv.h, kernels/packed_ops.h. Tests: tests/test_packed_model.cpp; timing:
// bench/bench_packed_model.cpp.
//
// Using a packed file from an inference tool:
//   if (models::is_packed_file(path)) {
//     auto model = models::PackedModel::load(path, arch_flag, device);
//     model->check_input(x.shape(), "input");          // one-line InputError if wrong
//     Tensor logits = model->forward(x);               // [N, classes], on the CPU
//     std::string classes = model->metadata_value("classes");  // JSON list, may be ""
//   }
// (app/infer.h's tensor and image modes do this for the tools).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "engine/io/safetensors.h"
#include "kernels/int8_conv.h"
#include "kernels/packed_conv.h"
#include "models/model.h"

namespace ttq::models {

inline constexpr const char* kPackedFormat = "ttq-packed-2bit";

// True when `path` is a safetensors file whose metadata says format ttq-packed-2bit
// (reads the header only). Throws ttq::InputError when it is not a readable
// safetensors file.
bool is_packed_file(const std::string& path);

// ---- packing ----------------------------------------------------------------------

struct PackLayerReport {
  std::string name;  // dotted module name of the conv
  Shape shape;
  int64_t numel = 0, zeros = 0, pos = 0, neg = 0;
  float wp = 0, wn = 0;
  int64_t float_bytes = 0;   // numel * 4
  int64_t packed_bytes = 0;  // codes + wp + wn
};
struct PackReport {
  std::string arch;
  std::vector<PackLayerReport> layers;
  int64_t quantized_weights = 0, zeros = 0;
  int64_t float_bytes = 0, packed_bytes = 0;  // quantized layers only
  int64_t input_file_bytes = 0, output_file_bytes = 0;
  // The network's float weights: every tensor of the model (parameters and
  // buffers) as F32, without optimiser state or TTQ latent weights and scales.
  int64_t model_float_bytes = 0;
  double zero_fraction() const { return quantized_weights ? double(zeros) / double(quantized_weights) : 0.0; }
};

// The packed tensors and metadata for a model's weights. `tensors` is a checkpoint's
// or an import's content: the optimiser / scheduler state ("optimizer.*",
// "optimizer_scalar.*", "scheduler.*") and the TTQ training state of quantized
// layers ("<layer>.latent_weight", ".wp", ".wn") are ignored; torchvision's dense-layer
// spelling is accepted. Every quantizable conv (Model::quantizable_convs()) must hold
// at most three distinct values {+a, 0, -b} (a, b > 0): it becomes "<layer>.codes"
// (U8), "<layer>.wp" = a, "<layer>.wn" = b (F32 scalars; 1 when the sign is absent);
// every other tensor the architecture expects is written as F32. The metadata carries
// format, model, model_config and the input's "classes", "preprocess", "data" and
// "ttq.*" entries. Errors: ttq::InputError, one line naming `source` (and the layer).
struct PackedContent {
  io::NamedTensors tensors;
  io::Metadata metadata;
  PackReport report;
};
PackedContent pack_tensors(const io::NamedTensors& tensors, const io::Metadata& metadata,
                           const std::string& arch, const std::string& source);
// Reads `in` (architecture from its metadata or `arch_flag`), packs it, lets `amend` (when
// given) add to the content (ttq_pack --act-bits 8: the calibration) and writes `out`
// atomically. Refuses an already packed input.
PackReport pack_model_file(const std::string& in, const std::string& out, const std::string& arch_flag,
                           const std::function<void(PackedContent&)>& amend = nullptr);
// ttq_pack --weights-only: `in`'s model tensors as a plain safetensors file
// under their PyTorch names, every one F32 (a TTQ checkpoint's quantized layers
// hold their ternary values), in the architecture's order, without optimiser or
// scheduler state and without the TTQ latent weights and scales; the metadata
// keeps "model", "model_config", "classes", "preprocess", "data" and "split".
// ttq_eval and ttq_infer load it as a plain import. Refuses a packed input.
struct WeightsReport {
  std::string arch;
  int64_t tensors = 0;
  int64_t float_bytes = 0;  // the tensors' data, F32
  int64_t input_file_bytes = 0, output_file_bytes = 0;
};
WeightsReport write_weights_file(const std::string& in, const std::string& out, const std::string& arch_flag);
// The table ttq_pack prints: per layer sparsity, Wp, Wn, sizes; then totals.
std::string format_pack_report(const PackReport& report);

// ---- int8 activation calibration (docs/int8.md, "Calibration") -----------------------

// How the clipping range [lo, hi] of an activation is chosen from its histogram over the
// calibration images (always widened to hold 0, so that real 0 (ReLU, padding) is exact):
// Max: the observed min / max; Percentile: the 0.01% / 99.99% quantiles; Mse: the range
// t * [min, max], t in (0, 1], minimising the expected squared quantization error
// (clipping error plus step^2 / 12 inside the range).
enum class CalibMethod : uint8_t { Max, Percentile, Mse };
const char* calib_method_name(CalibMethod m);
// "max", "percentile" or "mse"; anything else is an InputError naming `flag`.
CalibMethod parse_calib_method(const std::string& text, const std::string& flag);

// The observations of one tensor: its min / max and a histogram over them.
struct ActHistogram {
  static constexpr int kBins = 2048;
  double lo = 0, hi = 0;       // observed range
  std::vector<double> counts;  // kBins bins over [lo, hi]
  int64_t values = 0;
};
// The clipping range by `method` (lo <= 0 <= hi).
std::pair<double, double> choose_range(const ActHistogram& h, CalibMethod method);
// The int8 quantization of [lo, hi] (lo <= 0 <= hi): scale = (hi - lo) / 255 (1 when
// hi == lo == 0), zero_point = clamp(round(-128 - lo / scale), -128, 127); a non-negative
// range gives zero_point -128.
kernels::Int8Quant quant_of_range(double lo, double hi);

struct LayerCalibration {
  std::string name;
  double min = 0, max = 0;          // observed
  double clip_lo = 0, clip_hi = 0;  // chosen
  kernels::Int8Quant quant;
};
struct Calibration {
  CalibMethod method = CalibMethod::Mse;
  int64_t images = 0;
  std::vector<LayerCalibration> layers;  // execution order
};
class PackedModel;
// Runs `model` (any precision; observed on its Float path) on `images` [N, C, H, W] in
// batches of `batch`, twice (min / max, then histograms), and picks each packed conv's
// input quantization by `method`. `progress` (may be null) gets (pass, images done).
Calibration calibrate_activations(PackedModel& model, const Tensor& images, CalibMethod method,
                                  int64_t batch = 64,
                                  const std::function<void(int, int64_t)>& progress = nullptr);
// Adds the calibration to a packed file's content: "<layer>.act_scale" (F32 scalar) and
// "<layer>.act_zero_point" (I32 scalar) per packed conv, metadata "act_bits" = "8" and
// "calibration" (JSON: method, images, data, split).
void add_activation_quant(PackedContent& content, const Calibration& c, const std::string& data,
                          const std::string& split);
// The per-layer table ttq_pack prints for a calibration.
std::string format_calibration(const Calibration& c);

// ---- inference ----------------------------------------------------------------------

// Which arithmetic a packed model runs (docs/int8.md, "The whole model"): Float keeps the
// activations in F32 (the packed float kernels); Int8 runs every packed conv on int8
// activations with the file's calibrated scales (ternary x int8, kernels/int8_conv.h),
// CPU only. Auto: Int8 when the file holds activation scales and the device is the CPU,
// else Float.
enum class Precision : uint8_t { Auto, Float, Int8 };
const char* precision_name(Precision p);
// "auto", "float" or "int8"; anything else is an InputError naming `flag`.
Precision parse_precision(const std::string& text, const std::string& flag);

struct PackedRunOptions {
  Precision precision = Precision::Auto;
  kernels::Int8Isa int8_isa = kernels::Int8Isa::Auto;  // the int8 convs' micro-kernel
  kernels::CpuIsa cpu_isa = kernels::CpuIsa::Auto;
  kernels::CudaPath cuda_path = kernels::CudaPath::Auto;
  // CUDA: replay the forward pass as a CUDA graph for batches up to this size (the
  // first call of a shape runs eagerly and the second captures); 0 disables graphs.
  int64_t cuda_graph_max_batch = 32;
};

class PackedModel {
 public:
  // Reads and validates a packed file: format, architecture (metadata "model", else
  // `arch_flag`; a mismatch is an error), every name the architecture expects present
  // with the right dtype and shape and nothing else, codes never 3, scales finite and
  // positive. Builds the kernels' layouts on `device`. Nothing is half-loaded: any
  // defect is one ttq::InputError line naming the file.
  static std::unique_ptr<PackedModel> load(const std::string& path, const std::string& arch_flag,
                                           Device device, const PackedRunOptions& options = {});
  static std::unique_ptr<PackedModel> from_tensors(const io::NamedTensors& tensors,
                                                   const io::Metadata& metadata, const std::string& arch_flag,
                                                   Device device, const std::string& source,
                                                   const PackedRunOptions& options = {});
  ~PackedModel();
  PackedModel(const PackedModel&) = delete;
  PackedModel& operator=(const PackedModel&) = delete;

  const std::string& arch() const;
  const ModelConfig& config() const;
  Device device() const;
  const io::Metadata& metadata() const;
  std::string metadata_value(const std::string& key) const;  // "" when absent
  // Throws ttq::InputError (one line, prefixed by `what`) unless x is
  // [N >= 1, in_channels, H >= min size, W >= min size].
  void check_input(const Shape& x, const std::string& what) const;
  // Bytes the weights take on the device (packed layers in their kernel layouts plus
  // the F32 tensors).
  int64_t weight_bytes() const;
  int quantized_layers() const;
  // What forward runs (Float or Int8; never Auto), and whether the file holds int8
  // activation scales ("act_bits" 8).
  Precision precision() const;
  bool has_int8_scales() const;
  // Calibration's view: runs the Float path on x and calls `fn` once per packed conv
  // with the F32 tensor that conv's int8 path quantizes (its input after the folded
  // BatchNorm / ReLU prologue and the 2x2 pool it runs first, if any), in execution
  // order. requires check_input(x.shape()) passes; CPU only.
  void observe_conv_inputs(const Tensor& x,
                           const std::function<void(const std::string& layer, const Tensor& v)>& fn);
  // Forward passes so far that ran as a CUDA graph replay (0 on the CPU).
  int64_t graph_replays() const;
  // The number of kernel steps one forward pass of an [n, C, h, w] input runs
  // (compiles the plan for that shape if needed): what the graph compiler fused.
  int64_t plan_steps(int64_t n, int64_t h, int64_t w);

  // requires check_input(x.shape()) passes; x F32 (F64 converted) on any device.
  // ensures logits [N, num_classes] F32 on the CPU, eval-mode semantics (BN running
  // statistics, no dropout): the float model's logits up to summation order on the CPU
  // (and on CUDA with CudaPath::Simt), within ~1e-3 on the tensor-core path. With
  // precision Int8: the network with each packed conv's input quantized by the file's
  // scales (docs/int8.md, "The whole model"); the same bits for every int8 micro-kernel
  // and for batch N as for N batches of 1.
  Tensor forward(const Tensor& x);

  struct Impl;

 private:
  explicit PackedModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace ttq::models
