// The public inference API (include/ttq/ttq.h) on top of app::ImageClassifier:
// the same model loading, transform and top-k as ttq_infer. Engine errors are
// translated at this boundary (ttq::InputError -> std::invalid_argument), so no
// engine type crosses it. Tests: tests/test_api.cpp, tests/test_install.cpp.
#include "include/ttq/ttq.h"

#include <sstream>
#include <stdexcept>

#include "app/infer.h"
#include "data/image.h"
#include "engine/error.h"
#include "engine/ops/ops.h"

#ifndef TTQ_VERSION
#error "TTQ_VERSION must be defined by the build"
#endif

namespace ttq {

const char* version() { return TTQ_VERSION; }

struct Predictor::Impl {
  std::unique_ptr<app::ImageClassifier> model;
};

namespace {

// Runs f, turning the engine's input errors into std::invalid_argument (other
// ttq::Error are std::runtime_error already).
template <class F>
auto translated(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const InputError& e) {
    throw std::invalid_argument(e.what());
  }
}

std::unique_ptr<Predictor::Impl> placed(std::unique_ptr<app::ImageClassifier> model, const LoadOptions& o) {
  std::ostringstream log;  // the device note is the caller's to print
  model->use_device(o.device, log);
  auto impl = std::make_unique<Predictor::Impl>();
  impl->model = std::move(model);
  return impl;
}

}  // namespace

Predictor::Predictor(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
Predictor::Predictor(Predictor&&) noexcept = default;
Predictor& Predictor::operator=(Predictor&&) noexcept = default;
Predictor::~Predictor() = default;

Predictor Predictor::load(const std::string& path, const LoadOptions& o) {
  return translated([&] { return Predictor(placed(app::ImageClassifier::open(path, o.arch), o)); });
}

Predictor Predictor::load(const void* data, size_t size, const LoadOptions& o) {
  return translated([&] {
    TTQ_INPUT_CHECK(data != nullptr || size == 0) << "model buffer: null data";
    return Predictor(placed(
        app::ImageClassifier::open_bytes(static_cast<const uint8_t*>(data), size, "model buffer", o.arch),
        o));
  });
}

const std::string& Predictor::arch() const { return m_impl->model->arch(); }
bool Predictor::packed() const { return m_impl->model->packed(); }
std::string Predictor::device() const { return m_impl->model->device().str(); }
int Predictor::input_channels() const { return m_impl->model->preprocess().channels; }
int Predictor::input_size() const { return m_impl->model->preprocess().crop; }
int Predictor::num_classes() const { return static_cast<int>(m_impl->model->config().num_classes); }
size_t Predictor::input_floats() const {
  const data::Preprocess& p = m_impl->model->preprocess();
  return static_cast<size_t>(p.channels) * p.crop * p.crop;
}
const std::vector<std::string>& Predictor::class_names() const { return m_impl->model->class_names().names; }
const std::vector<std::string>& Predictor::class_descriptions() const {
  return m_impl->model->class_names().descriptions;
}

namespace {

std::vector<float> to_vector(const Tensor& t) { return t.contiguous().to_vector<float>(); }

}  // namespace

std::vector<float> Predictor::preprocess(const uint8_t* pixels, int width, int height, int channels) const {
  return translated([&] {
    TTQ_INPUT_CHECK(channels == 1 || channels == 3 || channels == 4)
        << "preprocess: channels is " << channels << ", expected 1, 3 or 4";
    TTQ_INPUT_CHECK(width >= 1 && height >= 1 && width <= data::kMaxImageSide &&
                    height <= data::kMaxImageSide && int64_t(width) * height <= data::kMaxImagePixels)
        << "preprocess: image " << width << "x" << height << " outside 1.." << data::kMaxImageSide
        << " per side and " << data::kMaxImagePixels << " pixels";
    TTQ_INPUT_CHECK(pixels != nullptr) << "preprocess: null pixels";
    const int kept = channels == 4 ? 3 : channels;
    data::Image img(width, height, kept);
    const size_t n = size_t(width) * height;
    if (channels == 4) {
      for (size_t i = 0; i < n; ++i)
        for (int c = 0; c < 3; ++c) img.pixels[3 * i + c] = pixels[4 * i + c];
    } else {
      img.pixels.assign(pixels, pixels + n * channels);
    }
    return to_vector(m_impl->model->input(img));
  });
}

std::vector<float> Predictor::preprocess_encoded(const void* data, size_t size) const {
  return translated([&] {
    TTQ_INPUT_CHECK(data != nullptr || size == 0) << "preprocess_encoded: null data";
    data::Image img;
    const data::DecodeResult r = data::decode_image(static_cast<const uint8_t*>(data), size,
                                                    m_impl->model->preprocess().channels, &img);
    TTQ_INPUT_CHECK(r.ok) << "preprocess_encoded: " << r.error;
    return to_vector(m_impl->model->input(img));
  });
}

namespace {

// The batch as one [N, C, S, S] tensor; every input must have the model's size.
Tensor batch_tensor(const app::ImageClassifier& model, const std::vector<std::vector<float>>& batch) {
  const data::Preprocess& p = model.preprocess();
  const size_t floats = static_cast<size_t>(p.channels) * p.crop * p.crop;
  Tensor x = Tensor::empty({static_cast<int64_t>(batch.size()), p.channels, p.crop, p.crop}, DType::F32);
  float* d = x.data<float>();
  for (size_t i = 0; i < batch.size(); ++i) {
    TTQ_INPUT_CHECK(batch[i].size() == floats)
        << "run: batch[" << i << "] holds " << batch[i].size() << " floats, the model's input is " << floats
        << " (" << p.channels << "x" << p.crop << "x" << p.crop << ")";
    std::copy(batch[i].begin(), batch[i].end(), d + i * floats);
  }
  return x;
}

}  // namespace

std::vector<float> Predictor::run(const std::vector<std::vector<float>>& batch) {
  return translated([&] {
    if (batch.empty()) return std::vector<float>{};
    return to_vector(m_impl->model->logits(batch_tensor(*m_impl->model, batch)));
  });
}

std::vector<std::vector<Class>> Predictor::classify(const std::vector<std::vector<float>>& batch, int k) {
  return translated([&] {
    TTQ_INPUT_CHECK(k >= 1) << "classify: k is " << k << ", expected at least 1";
    std::vector<std::vector<Class>> out;
    if (batch.empty()) return out;
    const Tensor logits = m_impl->model->logits(batch_tensor(*m_impl->model, batch));
    const std::vector<app::ImagePrediction> preds =
        m_impl->model->top_k(logits, std::vector<std::string>(batch.size()), k);
    for (const app::ImagePrediction& p : preds) {
      std::vector<Class>& row = out.emplace_back();
      for (size_t j = 0; j < p.classes.size(); ++j)
        row.push_back({p.classes[j], p.names[j], p.descriptions[j], static_cast<float>(p.probabilities[j])});
    }
    return out;
  });
}

}  // namespace ttq
