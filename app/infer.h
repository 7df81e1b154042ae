// Library side of ttq_infer: tensor mode (a tensor from a safetensors file in,
// logits out as safetensors) and image mode (image files in, top-k classes
// out, streamed a batch at a time), for float checkpoints and packed 2-bit
// files alike; ImageClassifier is also the engine behind the public inference
// API (include/ttq/ttq.h, api/ttq.cpp). Tests:
// tests/test_seed_parity.cpp (runs the built tool too), tests/test_infer_images.cpp,
// tests/test_infer_stream.cpp,
// tests/test_packed_model.cpp.
#pragma once

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "data/augment.h"
#include "data/dataset.h"
#include "engine/io/safetensors.h"
#include "engine/tensor.h"
#include "models/model.h"

namespace ttq::app {

struct TensorInferOptions {
  std::string model_path;
  std::string arch;        // optional when the file's metadata names the model
  std::string device;      // "", "cpu", "cuda", "cuda:N"
  std::string input_path;  // safetensors file holding the input
  std::string input_name;  // tensor in it: [N, C, H, W] F32 (F64 converted)
  std::string logits_out;  // written as safetensors, tensor "logits" [N, classes] F32
  std::string precision;   // packed files: "auto" (or ""), "float" or "int8" (models::Precision)
};

// Runs the model on the input tensor in eval mode and writes the logits
// (atomically). A packed file ("ttq-packed-2bit") runs on the packed kernels.
// Returns the logits (CPU).
Tensor run_tensor_inference(const TensorInferOptions& options, std::ostream& log);

struct ImageInferOptions {
  std::string model_path;           // checkpoint, import or packed file
  std::string arch;                 // when the file's metadata has no "model"
  std::string device;               // "", "cpu", "cuda", "cuda:N"
  std::string data;                 // optional data spec naming the classes (e.g. tiny-imagenet:DIR)
  std::vector<std::string> images;  // image files (JPEG, PNG, BMP)
  int top_k = 5;
  // Streaming (run_image_stream): after `images`, one path per line of this file
  // ("-": standard input; empty lines skipped, a trailing CR dropped).
  std::string files_from;
  int64_t batch = 32;            // images decoded and run together; memory is bounded by it
  bool skip_bad = false;         // a file that cannot be decoded: reported and skipped, else the run stops
  double progress_seconds = 10;  // a progress line on the log at most this often (< 0: none)
  std::string precision;         // packed files: "auto" (or ""), "float" or "int8" (models::Precision)
};

struct ImagePrediction {
  std::string path;
  std::vector<int64_t> classes;           // best first
  std::vector<double> probabilities;      // softmax of the logits
  std::vector<std::string> names;         // class names (wnid, folder or label name)
  std::vector<std::string> descriptions;  // human-readable names where known, else the names
};

// A model ready to classify images: the model of a weights file (a packed file
// on the packed kernels, anything else on the float layers), the validation
// transform the file records and its class names. Used by ttq_infer's image mode
// and by the public inference API (include/ttq/ttq.h).
class ImageClassifier {
 public:
  // Reads and checks a model file on the CPU: the model, the "preprocess"
  // metadata written by ttq_train (else the seed's 64 -> 56 centre crop with
  // ImageNet statistics for 3-channel models and Fashion-MNIST's for 1-channel
  // ones; the crop must suit the model) and the class names (the "classes"
  // metadata, else `data_spec`'s, else "class N"). Every defect is one
  // ttq::InputError line naming the file.
  // `precision`: a packed file's activations, as ttq_eval's --precision ("" is auto).
  static std::unique_ptr<ImageClassifier> open(const std::string& path, const std::string& arch,
                                               const std::string& data_spec = "",
                                               const std::string& precision = "");
  // The same from a file's bytes held in memory (not kept); messages name `label`.
  static std::unique_ptr<ImageClassifier> open_bytes(const uint8_t* data, size_t size,
                                                     const std::string& label, const std::string& arch,
                                                     const std::string& data_spec = "",
                                                     const std::string& precision = "");
  ~ImageClassifier();
  ImageClassifier(const ImageClassifier&) = delete;
  ImageClassifier& operator=(const ImageClassifier&) = delete;

  // Moves the model to the device `flag` names (engine/device.h pick_device:
  // "" is cuda:0 when present, else the CPU, said on `log`).
  void use_device(const std::string& flag, std::ostream& log);
  Device device() const;
  const std::string& arch() const;
  bool packed() const;
  const models::ModelConfig& config() const;
  const data::Preprocess& preprocess() const;
  const data::ClassNames& class_names() const;
  const io::Metadata& metadata() const;

  // The model's input for one decoded image (1 or 3 channels, any size):
  // [1, C, crop, crop] F32 through data::image_tensor, the one transform.
  Tensor input(const data::Image& img) const;
  // Decodes `path` and transforms it; a ttq::InputError naming it when it cannot be decoded.
  Tensor input_file(const std::string& path) const;
  // requires x [N, C, crop, crop] F32 on the CPU. ensures logits [N, classes]
  // F32 on the CPU, eval-mode semantics.
  Tensor logits(const Tensor& x);
  // Per row of `logits` ([paths.size(), classes]): the top min(k, classes)
  // classes of the softmax, best first (equal probabilities: lower index first).
  std::vector<ImagePrediction> top_k(const Tensor& logits, const std::vector<std::string>& paths,
                                     int k) const;

  struct Impl;

 private:
  explicit ImageClassifier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

// What one streaming run did.
struct StreamStats {
  int64_t images = 0;         // classified
  int64_t skipped = 0;        // files that could not be decoded (skip_bad)
  int64_t batches = 0;        // forward passes
  int64_t largest_batch = 0;  // the most images held at once: at most options.batch
};

// Image mode, streaming: the paths (options.images, then options.files_from's
// lines) are read, decoded and run `batch` at a time, and `emit` gets each
// batch's predictions in input order, so memory is bounded by the batch, never
// by the number of files. The model file, its metadata and the options are
// checked before the device is picked and before any image is read. A file
// that cannot be decoded is a ttq::InputError naming it, thrown after the
// images before it have been run and emitted; with skip_bad it is reported on
// `log` ("skipping PATH: REASON") and the run goes on. A run longer than
// progress_seconds writes a progress line to `log` after a batch when that
// long has passed since the last, and a summary at the end; skipped files are
// always summarised. No paths at all is an error.
StreamStats run_image_stream(const ImageInferOptions& options,
                             const std::function<void(const std::vector<ImagePrediction>&)>& emit,
                             std::ostream& log);

// Image mode over the files of `options.images` (and files_from), every
// prediction returned at once (run_image_stream collected).
std::vector<ImagePrediction> run_image_inference(const ImageInferOptions& options, std::ostream& log);
// The text ttq_infer prints: per image its path, then one line per class. Paths,
// names and descriptions pass through printable(): a class name holding a
// newline cannot add a line.
std::string format_predictions(const std::vector<ImagePrediction>& predictions);
// ttq_infer --json: one JSON object per image and line,
// {"path": P, "top": [{"class": I, "name": N, "description": D, "probability": p}, ...]}
// best first (invalid UTF-8 in paths and names replaced by U+FFFD).
std::string format_predictions_json(const std::vector<ImagePrediction>& predictions);

}  // namespace ttq::app
