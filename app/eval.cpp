// ttq_eval's library side (app/eval.h).
#include "app/eval.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/dataset.h"
#include "data/pipeline.h"
#include "engine/io/safetensors.h"
#include "models/graph_io.h"
#include "models/model_file.h"
#include "models/packed.h"
#include "train/checkpoint.h"
#include "train/options.h"
#include "train/trainer.h"

namespace ttq::app {

EvalReport run_eval(const EvalOptions& o, std::ostream& log) {
  TTQ_INPUT_CHECK(!o.weights.empty()) << "--weights: a checkpoint file is required";
  check_flag_range("--batch", o.batch, train::limits::kEvalBatch);
  if (o.limit != 0) check_flag_range("--limit", o.limit, train::limits::kLimit);
  if (o.val_size != train::kUnset) check_flag_range("--val-size", o.val_size, train::limits::kValSize);
  check_flag_range("--workers", static_cast<int64_t>(o.workers), train::limits::kWorkers);
  TTQ_INPUT_CHECK(o.split == "val" || o.split == "test" || o.split == "all")
      << "--split: expected val, test or all, got '" << o.split << "'";
  const io::Header h =
      models::is_onnx_path(o.weights) ? io::Header{} : io::read_safetensors_header(o.weights);
  models::PackedRunOptions run_options;
  if (!o.precision.empty()) run_options.precision = models::parse_precision(o.precision, "--precision");
  TTQ_INPUT_CHECK(run_options.precision != models::Precision::Int8 || models::is_packed_file(o.weights))
      << "--precision int8: " << o.weights << " is not a packed model (ttq_pack --act-bits 8 makes one)";
  // The CPU fallback line goes to the log once the inputs are known good, so
  // that a bad input is one line.
  std::ostringstream device_note;
  const Device device = pick_device(o.device, device_note);
  data::DataSpec spec = data::parse_data_spec(o.data);
  // What validation applied when the model was trained: the file's "preprocess"
  // metadata; a file without it gets the preprocessing runs had before it existed.
  data::Preprocess pre = data::preprocess_for(spec);
  if (auto it = h.metadata.find("preprocess"); it != h.metadata.end())
    pre = data::parse_preprocess_json(it->second, o.weights);
  if (o.image_size != 0) {
    check_flag_range("--image-size", o.image_size, train::limits::kImageSize);
    pre.image_size = static_cast<int>(o.image_size);
    if (o.crop == 0) pre.crop = std::min(pre.crop, pre.image_size);
  }
  if (o.crop != 0) {
    check_flag_range("--crop", o.crop, train::limits::kImageSize);
    pre.crop = static_cast<int>(o.crop);
  }
  TTQ_INPUT_CHECK(pre.crop <= pre.image_size)
      << "--crop " << pre.crop << ": larger than the image size " << pre.image_size << " (--image-size)";
  if (!o.mean.empty()) {
    const auto v = data::parse_channel_values("--mean", o.mean, pre.channels, false);
    std::copy(v.begin(), v.end(), pre.mean.begin());
  }
  if (!o.std.empty()) {
    const auto v = data::parse_channel_values("--std", o.std, pre.channels, true);
    std::copy(v.begin(), v.end(), pre.std.begin());
  }
  // The validation split as training formed it: its held-out size is in the
  // weights' metadata (checkpoints and packed files carry it), unless --val-size says.
  data::SplitOptions split_options;
  split_options.val_size = o.val_size;
  if (auto it = h.metadata.find("split"); it != h.metadata.end() && o.val_size < 0) {
    try {
      const auto j = nlohmann::json::parse(it->second);
      const int64_t v = j.at("val_size").get<int64_t>();
      if (v > 0) split_options.val_size = v;
      split_options.seed = j.at("seed").get<uint64_t>();
    } catch (const nlohmann::json::exception& e) {
      TTQ_INPUT_ERROR() << o.weights << ": metadata 'split' is not {\"val_size\": N, \"seed\": S}";
    }
  }
  data::Splits splits = data::open_data(spec, pre.image_size, split_options, pre.channels);
  std::shared_ptr<const data::Dataset> eval_set;
  EvalReport report;
  if (o.split == "val") {
    eval_set = splits.val;
    report.split = "val: " + splits.val_from;
  } else if (o.split == "test") {
    TTQ_INPUT_CHECK(splits.test) << "--split test: " << o.data << " has no test split (" << splits.test_from
                                 << ")";
    eval_set = splits.test;
    report.split = "test: " + splits.test_from;
  } else {
    eval_set = splits.all;
    report.split = "all: every image of " + spec.str();
  }
  TTQ_INPUT_CHECK(eval_set && eval_set->size() > 0) << o.data << ": no images in the " << o.split << " split";
  if (o.limit > 0) eval_set = data::random_subset(eval_set, o.limit, o.seed + 1);

  auto check_fits = [&](const models::ModelConfig& config) {
    TTQ_INPUT_CHECK(config.in_channels == pre.channels)
        << o.weights << ": the model takes " << config.in_channels << " input channels, " << o.data << " has "
        << pre.channels;
    TTQ_INPUT_CHECK(config.num_classes == eval_set->num_classes())
        << o.weights << ": the model has " << config.num_classes << " classes, " << o.data << " has "
        << eval_set->num_classes();
  };
  // Checked here so that the message names ttq_eval's flag (the loaders' name --arch).
  auto named = h.metadata.find("model");
  const std::string want = o.model.empty() ? "" : models::resolve_model(o.model);
  TTQ_INPUT_CHECK(want.empty() || named == h.metadata.end() || named->second == want)
      << o.weights << ": holds a " << named->second << ", not a " << want << " (--model)";
  data::Loader loader(eval_set, pre, train::loader_options(o.batch, o.workers, o.seed, false));
  train::EvalResult r;
  if (models::is_packed_file(o.weights)) {
    // The deployed artefact itself: the packed 2-bit kernels, not the float layers.
    auto packed = models::PackedModel::load(o.weights, o.model, device, run_options);
    check_fits(packed->config());
    packed->check_input(Shape{1, pre.channels, pre.crop, pre.crop}, o.data);
    log << device_note.str();
    report.precision = models::precision_name(packed->precision());
    r = train::evaluate([&](const Tensor& x) { return packed->forward(x); }, loader, device);
  } else {
    models::ModelPtr model;
    auto fmt = h.metadata.find("format");
    if (fmt != h.metadata.end() && fmt->second == "ttq-checkpoint") {
      // The checkpoint's own config, checked against its weights.
      train::CheckpointContent c = train::read_checkpoint(o.weights);
      model = models::create(c.arch, c.config);
      models::LoadOptions lo;
      lo.ignore_ttq_state = true;
      models::load_weights(*model, c.model_tensors, o.weights, lo);
      model->to(device);
    } else {
      model = models::load_model_file(o.weights, o.model, device);
    }
    check_fits(model->config());
    log << device_note.str();
    r = train::evaluate(*model, loader, device);
  }
  train::check_some_loaded(static_cast<double>(r.count), loader, o.data, o.split.c_str());
  if (loader.skipped_in_epoch() > 0) log << loader.skipped_in_epoch() << " unreadable images skipped\n";
  report.result = r;
  report.class_names = eval_set->class_names();
  return report;
}

std::vector<ClassAccuracy> per_class(const EvalReport& report) {
  const train::EvalResult& r = report.result;
  std::vector<ClassAccuracy> out;
  for (int64_t k = 0; k < r.classes; ++k) {
    ClassAccuracy a;
    a.label = k;
    a.name = k < static_cast<int64_t>(report.class_names.size()) ? report.class_names[static_cast<size_t>(k)]
                                                                 : std::to_string(k);
    for (int64_t p = 0; p <= r.classes; ++p) a.count += r.confusion_at(k, p);
    a.top1 = a.count > 0 ? static_cast<double>(r.confusion_at(k, k)) / static_cast<double>(a.count) : 0.0;
    out.push_back(a);
  }
  return out;
}

std::vector<ClassAccuracy> worst_classes(const EvalReport& report, size_t n) {
  std::vector<ClassAccuracy> all = per_class(report);
  std::erase_if(all, [](const ClassAccuracy& a) { return a.count == 0; });
  std::stable_sort(all.begin(), all.end(),
                   [](const ClassAccuracy& a, const ClassAccuracy& b) { return a.top1 < b.top1; });
  if (all.size() > n) all.resize(n);
  return all;
}

}  // namespace ttq::app
