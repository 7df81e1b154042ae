// Library side of ttq_infer (see app/infer.h).
#include "app/infer.h"

#include <cmath>
#include <functional>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/dataset.h"
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

// An integer field of the preprocess metadata inside [lo, hi].
int preprocess_int(const nlohmann::json& j, const char* key, int lo, int hi, const std::string& path) {
  const nlohmann::json& v = j.at(key);
  TTQ_INPUT_CHECK(v.is_number_integer() && v.get<int64_t>() >= lo && v.get<int64_t>() <= hi)
      << path << ": preprocess metadata: " << key << " is " << v.dump() << ", expected an integer in [" << lo
      << ", " << hi << "]";
  return static_cast<int>(v.get<int64_t>());
}

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
  try {
    auto j = nlohmann::json::parse(it->second);
    const int max_size = static_cast<int>(models::kMaxInputSize);
    p.channels = preprocess_int(j, "channels", 1, 3, path);
    p.image_size = preprocess_int(j, "image_size", 1, max_size, path);
    p.crop = preprocess_int(j, "crop", 1, p.image_size, path);
    auto mean = j.at("mean").get<std::vector<float>>();
    auto stdev = j.at("std").get<std::vector<float>>();
    TTQ_INPUT_CHECK(p.channels == config.in_channels) << path << ": preprocess metadata says " << p.channels
                                                      << " channels, the model takes " << config.in_channels;
    TTQ_INPUT_CHECK(static_cast<int>(mean.size()) == p.channels &&
                    static_cast<int>(stdev.size()) == p.channels)
        << path << ": preprocess metadata: mean and std need " << p.channels << " values each";
    for (int c = 0; c < p.channels; ++c) {
      TTQ_INPUT_CHECK(std::isfinite(mean[c]))
          << path << ": preprocess metadata: mean[" << c << "] is not finite";
      TTQ_INPUT_CHECK(std::isfinite(stdev[c]) && stdev[c] > 0)
          << path << ": preprocess metadata: std[" << c << "] is " << stdev[c]
          << ", expected a positive number";
      p.mean[c] = mean[c];
      p.std[c] = stdev[c];
    }
  } catch (const nlohmann::json::exception& e) {
    TTQ_INPUT_ERROR() << path << ": bad preprocess metadata: " << e.what();
  }
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

std::vector<ImagePrediction> run_image_inference(const ImageInferOptions& o, std::ostream& log) {
  TTQ_INPUT_CHECK(!o.model_path.empty()) << "--model FILE is required";
  TTQ_INPUT_CHECK(!o.images.empty()) << "no image files given";
  TTQ_INPUT_CHECK(o.top_k >= 1) << "--top-k must be at least 1";
  // Everything the user supplied is read and checked before any work.
  std::unique_ptr<PackedModel> packed;
  ModelPtr model;
  io::Metadata meta;
  ModelConfig config;
  const bool is_packed = is_packed_file(o.model_path);
  const models::PackedRunOptions ro = run_options(o.precision, o.model_path, is_packed);
  if (is_packed) {
    packed = PackedModel::load(o.model_path, o.arch, Device::cpu(), ro);
    meta = packed->metadata();
    config = packed->config();
  } else {
    model = load_model_file(o.model_path, o.arch, Device::cpu());
    meta = io::read_safetensors_header(o.model_path).metadata;
    config = model->config();
  }
  const data::Preprocess pre = preprocess_from(meta, config, o.model_path);
  {
    const Shape in{1, pre.channels, pre.crop, pre.crop};
    const std::string what = o.model_path + ": preprocess crop " + std::to_string(pre.crop);
    packed ? packed->check_input(in, what) : model->check_input(in, what);
  }
  const data::ClassNames names = class_names_from(meta, config.num_classes, o.data, o.model_path);
  std::vector<Tensor> inputs;
  for (const auto& path : o.images) inputs.push_back(data::load_image_tensor(path, pre));
  const Device device = pick_device(o.device, log);
  if (packed) {
    if (device != Device::cpu()) packed = PackedModel::load(o.model_path, o.arch, device, ro);
  } else {
    model->to(device);
  }
  std::vector<ImagePrediction> out;
  autograd::NoGradGuard no_grad;
  Tensor x = ops::concat(inputs, 0);
  Tensor logits = packed ? packed->forward(x) : model->forward(x.to(device)).to(Device::cpu());
  const std::vector<float> probs = ops::softmax(logits).to_vector<float>();
  const int64_t k = std::min<int64_t>(o.top_k, config.num_classes);
  for (size_t i = 0; i < o.images.size(); ++i) {
    ImagePrediction p;
    p.path = o.images[i];
    std::vector<int64_t> order(config.num_classes);
    for (int64_t c = 0; c < config.num_classes; ++c) order[c] = c;
    const float* row = probs.data() + i * config.num_classes;
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

}  // namespace ttq::app
