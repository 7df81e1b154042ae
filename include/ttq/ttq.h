// ttq inference API: load a ttq model file (a packed 2-bit model, a training
// checkpoint or a PyTorch import, all safetensors) from a path or from memory,
// turn images into the model's input exactly as ttq_infer does, run batches and
// read the class names. This header is the whole public interface of libttq
// (C++17, no engine types); docs/api.md describes it and the CMake package
// (find_package(ttq), target ttq::ttq). Implementation: api/ttq.cpp;
// tests: tests/test_api.cpp, tests/test_install.cpp (examples/consumer/).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#if defined(_WIN32)
#define TTQ_API
#else
#define TTQ_API __attribute__((visibility("default")))
#endif

namespace ttq {

// The library's version, "MAJOR.MINOR.PATCH".
TTQ_API const char* version();

// One class of a prediction.
struct Class {
  int64_t index = 0;        // the model's output index
  std::string name;         // class name (wnid, folder or label name; "class N" when the file names none)
  std::string description;  // human-readable name where known, else the name
  float probability = 0;    // softmax of the logits
};

struct LoadOptions {
  // "cpu", "cuda", "cuda:N", or "" for cuda:0 when a CUDA device is present and
  // the CPU otherwise. A CUDA device that is not there is an error.
  std::string device = "cpu";
  // The architecture ("small_densenet", "squeezenet", "densenet121") when the
  // file's metadata does not name it; ttq's own files always do.
  std::string arch;
};

// A loaded model. Errors are exceptions: std::invalid_argument for bad input (a
// file or buffer that is not a usable model, an image that cannot be decoded,
// a batch of the wrong size), its message one line naming the file or the
// argument; std::runtime_error for anything else. One Predictor runs one batch
// at a time: use one per thread (they share nothing).
class TTQ_API Predictor {
 public:
  // Reads a model file: the model and what its metadata records (the
  // validation transform, class names). A packed file runs on the 2-bit kernels.
  static Predictor load(const std::string& path, const LoadOptions& options = {});
  // The same from a model file's bytes held in memory (copied; the buffer may be
  // freed afterwards). Messages name the buffer "model buffer".
  static Predictor load(const void* data, size_t size, const LoadOptions& options = {});

  Predictor(Predictor&&) noexcept;
  Predictor& operator=(Predictor&&) noexcept;
  ~Predictor();

  const std::string& arch() const;  // architecture name
  bool packed() const;              // true for a packed 2-bit model
  std::string device() const;       // "cpu" or "cuda:N"
  int input_channels() const;       // 1 (grey) or 3 (RGB)
  int input_size() const;           // the model's input is input_size x input_size
  int num_classes() const;
  // input_channels() * input_size() * input_size(): the floats of one input.
  size_t input_floats() const;
  const std::vector<std::string>& class_names() const;         // num_classes() entries
  const std::vector<std::string>& class_descriptions() const;  // num_classes() entries

  // One image as the model's input: `pixels` row-major, interleaved, 8 bits per
  // channel (1 grey, 3 RGB or 4 RGBA; alpha is dropped), width x height, at most
  // 16384 per side. Converted to the model's channels, resized so that the
  // shorter side is the file's stored image size, centre-cropped and normalised
  // with the file's mean and std. Returns input_floats() floats, CHW.
  std::vector<float> preprocess(const uint8_t* pixels, int width, int height, int channels) const;
  // The same from an encoded image (PNG, JPEG or BMP bytes).
  std::vector<float> preprocess_encoded(const void* data, size_t size) const;

  // Runs a batch of inputs (each input_floats() floats, from preprocess()) and
  // returns the logits, batch.size() rows of num_classes() floats, row-major.
  std::vector<float> run(const std::vector<std::vector<float>>& batch);
  // Runs a batch and returns each input's top min(k, num_classes()) classes,
  // best first (equal probabilities: the lower index first). k >= 1.
  std::vector<std::vector<Class>> classify(const std::vector<std::vector<float>>& batch, int k = 5);

  struct Impl;

 private:
  explicit Predictor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace ttq
