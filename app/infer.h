// Library side of ttq_infer: tensor mode (a tensor from a safetensors file in,
// logits out as safetensors) and image mode (image files in, top-k classes
// out), for float checkpoints and packed 2-bit files alike. Tests:
// tests/test_seed_parity.cpp (runs the built tool too), tests/test_infer_images.cpp,
// tests/test_packed_model.cpp.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "engine/tensor.h"

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
  std::string precision;  // packed files: "auto" (or ""), "float" or "int8" (models::Precision)
};

struct ImagePrediction {
  std::string path;
  std::vector<int64_t> classes;           // best first
  std::vector<double> probabilities;      // softmax of the logits
  std::vector<std::string> names;         // class names (wnid, folder or label name)
  std::vector<std::string> descriptions;  // human-readable names where known, else the names
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

}  // namespace ttq::app
