// Library side of ttq_infer (see app/infer.h).
#include "app/infer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/dataset.h"
#include "data/pipeline.h"
#include "engine/autograd.h"
#include "engine/io/write_file.h"
#include "engine/ops/ops.h"
#include "models/model_file.h"
#include "models/packed.h"

namespace ttq::app {

using models::is_packed_file;
using models::load_model_file;
using models::ModelConfig;
using models::ModelPtr;
using models::PackedModel;

namespace {

// A packed file's run options from --precision; int8 asked of a file that is not
// packed is an error (only packed files have an int8 path).
models::PackedRunOptions run_options(const std::string& precision, const std::string& path, bool packed) {
  models::PackedRunOptions ro;
  ro.precision =
      precision.empty() ? models::Precision::Auto : models::parse_precision(precision, "--precision");
  TTQ_INPUT_CHECK(packed || ro.precision != models::Precision::Int8)
      << "--precision int8: " << path << " is not a packed model (ttq_pack --act-bits 8 makes one)";
  return ro;
}

// The input tensor of tensor mode: F32 (F64 converted) [N, C, H, W], checked
// against the model's input by `check` (a message naming the file and tensor).
Tensor read_input_tensor(const TensorInferOptions& o,
                         const std::function<void(const Shape&, const std::string&)>& check) {
  io::SafeTensors in = io::read_safetensors(o.input_path);
  TTQ_INPUT_CHECK(in.contains(o.input_name))
      << o.input_path << ": no tensor named " << io::quoted_name(o.input_name);
  Tensor x = in.at(o.input_name);
  TTQ_INPUT_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64)
      << o.input_path << ": tensor " << io::quoted_name(o.input_name) << " is " << dtype_name(x.dtype())
      << ", expected F32";
  check(x.shape(), o.input_path + ": tensor " + io::quoted_name(o.input_name));
  return x.to(DType::F32);
}

}  // namespace

Tensor run_tensor_inference(const TensorInferOptions& o, std::ostream& log) {
  TTQ_INPUT_CHECK(!o.input_name.empty()) << "--input-name is required with --input-tensors";
  TTQ_INPUT_CHECK(!o.logits_out.empty()) << "--logits-out is required with --input-tensors";
  TTQ_INPUT_CHECK(!io::same_file(o.logits_out, o.model_path))
      << "--logits-out " << o.logits_out << " is the --model file; write the logits to another file";
  TTQ_INPUT_CHECK(!io::same_file(o.logits_out, o.input_path))
      << "--logits-out " << o.logits_out << " is the --input-tensors file; write the logits to another file";
  // Everything the user supplied is validated before the device line is printed,
  // so that a bad input gives exactly one line.
  io::Metadata out_meta{{"weights", o.model_path}, {"input", o.input_path}, {"input_name", o.input_name}};
  Tensor logits;
  Device device;
  const bool is_packed = is_packed_file(o.model_path);
  const models::PackedRunOptions ro = run_options(o.precision, o.model_path, is_packed);
  if (is_packed) {
    // The packed 2-bit kernels run the deployed file itself.
    io::SafeTensors st = io::read_safetensors(o.model_path);
    auto model =
        PackedModel::from_tensors(st.tensors(), st.metadata(), o.arch, Device::cpu(), o.model_path, ro);
    const Tensor x =
        read_input_tensor(o, [&](const Shape& s, const std::string& w) { model->check_input(s, w); });
    device = pick_device(o.device, log);
    if (device.is_cuda())
      model = PackedModel::from_tensors(st.tensors(), st.metadata(), o.arch, device, o.model_path, ro);
    logits = model->forward(x);
    out_meta["model"] = model->arch();
    out_meta["format"] = models::kPackedFormat;
    out_meta["precision"] = models::precision_name(model->precision());
  } else {
    ModelPtr model = load_model_file(o.model_path, o.arch, Device::cpu());
    const Tensor x =
        read_input_tensor(o, [&](const Shape& s, const std::string& w) { model->check_input(s, w); });
    device = pick_device(o.device, log);
    model->to(device);
    autograd::NoGradGuard no_grad;
    logits = model->forward(x.to(device)).to(Device::cpu());
    out_meta["model"] = model->arch();
  }
  out_meta["device"] = device.str();
  io::write_safetensors(o.logits_out, {{"logits", logits}}, out_meta);
  return logits;
}

namespace {

// The validation transform a model file asks for: the "preprocess" metadata
// ttq_train writes, else the default for the model's input. Either way it must
// make sense for images (1 or 3 channels, the model's) and for the model (a crop
// the architecture accepts, checked by the caller); mean finite, std finite and
// positive (it divides).
data::Preprocess preprocess_from(const io::Metadata& meta, const ModelConfig& config,
                                 const std::string& path) {
  TTQ_INPUT_CHECK(config.in_channels == 1 || config.in_channels == 3)
      << path << ": the model takes " << config.in_channels
      << " input channels; image files are read as 1 (gray) or 3 (RGB)";
  auto it = meta.find("preprocess");
  data::Preprocess p =
      data::Preprocess::for_input(static_cast<int>(config.in_channels), static_cast<int>(config.input_size));
  if (it == meta.end()) return p;
  p = data::parse_preprocess_json(it->second, path);  // ranges checked, older files read as then
  TTQ_INPUT_CHECK(p.channels == config.in_channels) << path << ": preprocess metadata says " << p.channels
                                                    << " channels, the model takes " << config.in_channels;
  return p;
}

data::ClassNames class_names_from(const io::Metadata& meta, int64_t num_classes, const std::string& data_spec,
                                  const std::string& path) {
  data::ClassNames names;
  auto it = meta.find("classes");
  if (it != meta.end()) {
    try {
      names.names = nlohmann::json::parse(it->second).get<std::vector<std::string>>();
    } catch (const nlohmann::json::exception& e) {
      TTQ_INPUT_ERROR() << path << ": bad classes metadata: " << e.what();
    }
  }
  if (!data_spec.empty()) {
    data::ClassNames from_data = data::class_names_for(data::parse_data_spec(data_spec));
    if (names.names.empty() || names.names == from_data.names) names = from_data;
  }
  if (names.names.empty()) {
    for (int64_t i = 0; i < num_classes; ++i) names.names.push_back("class " + std::to_string(i));
  }
  TTQ_INPUT_CHECK(static_cast<int64_t>(names.names.size()) == num_classes)
      << path << ": the model has " << num_classes << " classes but " << names.names.size() << " class names";
  if (names.descriptions.size() != names.names.size()) names.descriptions = names.names;
  return names;
}

}  // namespace

struct ImageClassifier::Impl {
  std::string source;
  std::unique_ptr<PackedModel> packed;
  ModelPtr model;
  io::Metadata meta;
  ModelConfig config;
  data::Preprocess pre;
  data::ClassNames names;
  std::string arch_flag;
  models::PackedRunOptions run;
  // A packed model is built again for a CUDA device from these (dropped once placed).
  io::NamedTensors packed_tensors;
  Device device = Device::cpu();
};

namespace {

std::unique_ptr<ImageClassifier::Impl> open_classifier(const models::WeightsSource& st,
                                                       const std::string& source, const std::string& arch,
                                                       const std::string& data_spec,
                                                       const std::string& precision) {
  auto m = std::make_unique<ImageClassifier::Impl>();
  m->source = source;
  m->arch_flag = arch;
  const bool is_packed = models::meta_value(st.metadata, "format") == models::kPackedFormat;
  m->run = run_options(precision, source, is_packed);
  if (is_packed) {
    m->packed = PackedModel::from_tensors(st.tensors, st.metadata, arch, Device::cpu(), source, m->run);
    m->config = m->packed->config();
    m->packed_tensors = st.tensors;
  } else {
    m->model = models::load_model_tensors(st, arch, Device::cpu(), source);
    m->config = m->model->config();
  }
  m->meta = st.metadata;
  m->pre = preprocess_from(m->meta, m->config, source);
  {
    const Shape in{1, m->pre.channels, m->pre.crop, m->pre.crop};
    const std::string what = source + ": preprocess crop " + std::to_string(m->pre.crop);
    m->packed ? m->packed->check_input(in, what) : m->model->check_input(in, what);
  }
  m->names = class_names_from(m->meta, m->config.num_classes, data_spec, source);
  return m;
}

models::WeightsSource weights_of(const io::SafeTensors& st) { return {st.tensors(), st.metadata()}; }

}  // namespace

ImageClassifier::ImageClassifier(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
ImageClassifier::~ImageClassifier() = default;

std::unique_ptr<ImageClassifier> ImageClassifier::open(const std::string& path, const std::string& arch,
                                                       const std::string& data_spec,
                                                       const std::string& precision) {
  return std::unique_ptr<ImageClassifier>(new ImageClassifier(
      open_classifier(models::read_weights_source(path), path, arch, data_spec, precision)));
}

std::unique_ptr<ImageClassifier> ImageClassifier::open_bytes(const uint8_t* data, size_t size,
                                                             const std::string& label,
                                                             const std::string& arch,
                                                             const std::string& data_spec,
                                                             const std::string& precision) {
  return std::unique_ptr<ImageClassifier>(new ImageClassifier(open_classifier(
      weights_of(io::parse_safetensors(data, size, label)), label, arch, data_spec, precision)));
}

void ImageClassifier::use_device(const std::string& flag, std::ostream& log) {
  Impl& m = *m_impl;
  const Device device = pick_device(flag, log);
  if (m.packed) {
    if (device != m.device) {
      TTQ_CHECK(!m.packed_tensors.empty()) << "the packed model's tensors were already released";
      m.packed = PackedModel::from_tensors(m.packed_tensors, m.meta, m.arch_flag, device, m.source, m.run);
    }
    m.packed_tensors.clear();
  } else {
    m.model->to(device);
  }
  m.device = device;
}

Device ImageClassifier::device() const { return m_impl->device; }
const std::string& ImageClassifier::arch() const {
  return m_impl->packed ? m_impl->packed->arch() : m_impl->model->arch();
}
bool ImageClassifier::packed() const { return m_impl->packed != nullptr; }
const ModelConfig& ImageClassifier::config() const { return m_impl->config; }
const data::Preprocess& ImageClassifier::preprocess() const { return m_impl->pre; }
const data::ClassNames& ImageClassifier::class_names() const { return m_impl->names; }
const io::Metadata& ImageClassifier::metadata() const { return m_impl->meta; }

Tensor ImageClassifier::input(const data::Image& img) const { return data::image_tensor(img, m_impl->pre); }
Tensor ImageClassifier::input_file(const std::string& path) const {
  return data::load_image_tensor(path, m_impl->pre);
}

Tensor ImageClassifier::logits(const Tensor& x) {
  Impl& m = *m_impl;
  autograd::NoGradGuard no_grad;
  if (m.packed) return m.packed->forward(x);
  return m.model->forward(x.to(m.device)).to(Device::cpu());
}

std::vector<ImagePrediction> ImageClassifier::top_k(const Tensor& logits,
                                                    const std::vector<std::string>& paths, int top_k) const {
  const int64_t classes = m_impl->config.num_classes;
  TTQ_CHECK(logits.dim() == 2 && logits.shape()[0] == static_cast<int64_t>(paths.size()) &&
            logits.shape()[1] == classes)
      << "top_k: logits " << shape_str(logits.shape()) << " for " << paths.size() << " paths";
  TTQ_CHECK(top_k >= 1) << "top_k: k must be at least 1";
  std::vector<ImagePrediction> out;
  if (paths.empty()) return out;
  autograd::NoGradGuard no_grad;
  const std::vector<float> probs = ops::softmax(logits).to_vector<float>();
  const int64_t k = std::min<int64_t>(top_k, classes);
  const data::ClassNames& names = m_impl->names;
  std::vector<int64_t> order(classes);
  for (size_t i = 0; i < paths.size(); ++i) {
    ImagePrediction p;
    p.path = paths[i];
    for (int64_t c = 0; c < classes; ++c) order[c] = c;
    const float* row = probs.data() + i * classes;
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int64_t a, int64_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    for (int64_t j = 0; j < k; ++j) {
      p.classes.push_back(order[j]);
      p.probabilities.push_back(row[order[j]]);
      p.names.push_back(names.names[order[j]]);
      p.descriptions.push_back(names.descriptions[order[j]]);
    }
    out.push_back(std::move(p));
  }
  return out;
}

namespace {

// The paths of a run: the listed images first, then the lines of --files-from,
// read one at a time (a list of millions of paths is never held).
class PathSource {
 public:
  explicit PathSource(const ImageInferOptions& o) : m_images(o.images), m_list_name(o.files_from) {
    if (o.files_from.empty()) return;
    if (o.files_from == "-") {
      m_list = &std::cin;
      m_list_name = "standard input";
      return;
    }
    // The list must be a regular file (a FIFO from a shell's <(...) is a stream too: allowed).
    std::error_code ec;
    const auto st = std::filesystem::status(o.files_from, ec);
    TTQ_INPUT_CHECK(!ec && (std::filesystem::is_regular_file(st) || std::filesystem::is_fifo(st)))
        << "--files-from " << o.files_from << ": "
        << (ec || !std::filesystem::exists(st) ? "no such file" : "not a regular file");
    m_file.open(o.files_from);
    TTQ_INPUT_CHECK(m_file.is_open()) << "--files-from " << o.files_from << ": cannot be read";
    m_list = &m_file;
  }
  // The next path; false at the end.
  bool next(std::string* path) {
    if (m_next_image < m_images.size()) {
      *path = m_images[m_next_image++];
      return true;
    }
    while (m_list != nullptr && std::getline(*m_list, *path)) {
      ++m_line;
      TTQ_INPUT_CHECK(path->size() <= kMaxLine) << "--files-from " << m_list_name << ": line " << m_line
                                                << " is longer than " << kMaxLine << " bytes";
      if (!path->empty() && path->back() == '\r') path->pop_back();
      if (!path->empty()) return true;
    }
    TTQ_INPUT_CHECK(m_list == nullptr || !m_list->bad()) << "--files-from " << m_list_name << ": read failed";
    return false;
  }

 private:
  static constexpr size_t kMaxLine = 1 << 16;
  const std::vector<std::string>& m_images;
  size_t m_next_image = 0;
  std::string m_list_name;
  std::ifstream m_file;
  std::istream* m_list = nullptr;
  int64_t m_line = 0;
};

}  // namespace

StreamStats run_image_stream(const ImageInferOptions& o,
                             const std::function<void(const std::vector<ImagePrediction>&)>& emit,
                             std::ostream& log) {
  TTQ_INPUT_CHECK(!o.model_path.empty()) << "--model FILE is required";
  TTQ_INPUT_CHECK(o.top_k >= 1) << "--top-k must be at least 1";
  TTQ_INPUT_CHECK(o.batch >= 1) << "--batch must be at least 1";
  TTQ_INPUT_CHECK(!o.images.empty() || !o.files_from.empty()) << "no image files given";
  // Everything the user supplied is read and checked before any work.
  std::unique_ptr<ImageClassifier> model = ImageClassifier::open(o.model_path, o.arch, o.data, o.precision);
  PathSource paths(o);
  bool placed = false;  // the device is picked (and said) when the first batch is ready

  StreamStats stats;
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  double next_progress = o.progress_seconds;
  bool progress_shown = false;
  std::vector<Tensor> inputs;
  std::vector<std::string> names;
  inputs.reserve(static_cast<size_t>(std::min<int64_t>(o.batch, 4096)));
  auto run_batch = [&] {
    if (inputs.empty()) return;
    if (!placed) model->use_device(o.device, log);
    placed = true;
    const Tensor x = inputs.size() == 1 ? inputs[0] : ops::concat(inputs, 0);
    stats.largest_batch = std::max<int64_t>(stats.largest_batch, static_cast<int64_t>(inputs.size()));
    inputs.clear();  // the batch tensor holds the pixels now
    emit(model->top_k(model->logits(x), names, o.top_k));
    stats.images += static_cast<int64_t>(names.size());
    ++stats.batches;
    names.clear();
    if (o.progress_seconds >= 0 && seconds() >= next_progress) {
      log << "classified " << stats.images << " images (" << std::fixed << std::setprecision(1)
          << stats.images / seconds() << " images/s)\n";
      next_progress = seconds() + o.progress_seconds;
      progress_shown = true;
    }
  };
  std::string path;
  while (paths.next(&path)) {
    try {
      inputs.push_back(model->input_file(path));
    } catch (const InputError& e) {
      if (!o.skip_bad) {
        run_batch();  // every image before the bad one gets its result
        throw;
      }
      log << "skipping " << e.what() << "\n";
      ++stats.skipped;
      continue;
    }
    names.push_back(path);
    if (static_cast<int64_t>(inputs.size()) == o.batch) run_batch();
  }
  run_batch();
  TTQ_INPUT_CHECK(stats.images + stats.skipped > 0)
      << "--files-from " << (o.files_from == "-" ? "standard input" : o.files_from) << ": no image paths";
  if (stats.skipped > 0 || progress_shown) {
    log << "classified " << stats.images << " images in " << std::fixed << std::setprecision(1) << seconds()
        << " s";
    if (stats.skipped > 0) log << ", skipped " << stats.skipped << " that could not be read";
    log << "\n";
  }
  return stats;
}

std::vector<ImagePrediction> run_image_inference(const ImageInferOptions& o, std::ostream& log) {
  std::vector<ImagePrediction> out;
  run_image_stream(
      o,
      [&](const std::vector<ImagePrediction>& batch) { out.insert(out.end(), batch.begin(), batch.end()); },
      log);
  return out;
}

std::string format_predictions(const std::vector<ImagePrediction>& predictions) {
  std::ostringstream os;
  for (const auto& p : predictions) {
    // Paths and class names come from outside (file names, metadata): one line each, whatever they hold.
    os << printable(p.path) << "\n";
    for (size_t j = 0; j < p.classes.size(); ++j) {
      os << "  " << j + 1 << ". " << std::fixed << std::setprecision(4) << p.probabilities[j] << "  "
         << printable(p.names[j]);
      if (p.descriptions[j] != p.names[j]) os << " (" << printable(p.descriptions[j]) << ")";
      os << "  [" << p.classes[j] << "]\n";
    }
  }
  return os.str();
}

std::string format_predictions_json(const std::vector<ImagePrediction>& predictions) {
  std::string out;
  for (const auto& p : predictions) {
    nlohmann::json top = nlohmann::json::array();
    for (size_t j = 0; j < p.classes.size(); ++j)
      top.push_back({{"class", p.classes[j]},
                     {"name", p.names[j]},
                     {"description", p.descriptions[j]},
                     {"probability", p.probabilities[j]}});
    const nlohmann::json line = {{"path", p.path}, {"top", std::move(top)}};
    out += line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    out += '\n';
  }
  return out;
}

}  // namespace ttq::app
