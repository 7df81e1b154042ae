// Library side of ttq_infer: loading a model file (architecture from the
// file's metadata or --arch, config from the weights' shapes), picking the
// device, and tensor mode (a tensor from a safetensors file in, logits out as
// safetensors). Tests: tests/test_seed_parity.cpp (runs the built tool too).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "models/model.h"

namespace ttq::models {

// "" picks cuda when available, else cpu, and then writes one line to `log`
// saying so. "cuda" without a device is a ttq::InputError (never a silent fallback).
Device pick_device(const std::string& flag, std::ostream& log);

// Reads `path` and builds the model it holds, in eval mode, on `device`.
// The architecture is the metadata's "model" value, else `arch` (a mismatch of
// the two is an error); in_channels and num_classes come from the weights. A
// training checkpoint's optimizer / scheduler state and TTQ training state
// (latent weights, scales) are skipped; packed models are refused (they run
// through models/packed.h). Every defect is one ttq::InputError line naming the file.
ModelPtr load_model_file(const std::string& path, const std::string& arch, Device device);

struct TensorInferOptions {
  std::string model_path;
  std::string arch;        // optional when the file's metadata names the model
  std::string device;      // "", "cpu", "cuda", "cuda:N"
  std::string input_path;  // safetensors file holding the input
  std::string input_name;  // tensor in it: [N, C, H, W] F32 (F64 converted)
  std::string logits_out;  // written as safetensors, tensor "logits" [N, classes] F32
};

// Runs the model on the input tensor in eval mode and writes the logits
// (atomically). Packed files ("ttq-packed-2bit") go to run_packed_tensor_inference.
// Returns the logits (CPU).
Tensor run_tensor_inference(const TensorInferOptions& options, std::ostream& log);

struct ImageInferOptions {
  std::string model_path;           // checkpoint, import or packed file
  std::string arch;                 // when the file's metadata has no "model"
  std::string device;               // "", "cpu", "cuda", "cuda:N"
  std::string data;                 // optional data spec naming the classes (e.g. tiny-imagenet:DIR)
  std::vector<std::string> images;  // image files (JPEG, PNG, BMP)
  int top_k = 5;
};

struct ImagePrediction {
  std::string path;
  std::vector<int64_t> classes;             // best first
  std::vector<double> probabilities;        // softmax of the logits
  std::vector<std::string> names;           // class names (wnid, folder or label name)
  std::vector<std::string> descriptions;    // human-readable names where known, else the names
};

// Image mode: each image is preprocessed as validation does for the model (the
// file's "preprocess" metadata written by ttq_train, else the seed's 64 -> 56
// centre crop with ImageNet statistics for 3-channel models and Fashion-MNIST's
// for 1-channel ones), run in eval mode, and its top-k classes returned. Class
// names come from the file's "classes" metadata, else from `data`, else
// "class N". A file that cannot be decoded is a ttq::InputError naming it.
std::vector<ImagePrediction> run_image_inference(const ImageInferOptions& options, std::ostream& log);
// The text ttq_infer prints: per image its path, then one line per class. Paths,
// names and descriptions pass through printable(): a class name holding a
// newline cannot add a line.
std::string format_predictions(const std::vector<ImagePrediction>& predictions);

}  // namespace ttq::models
