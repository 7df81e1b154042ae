// ttq_pack --act-bits 8's library side (app/calibrate.h).
#include "app/calibrate.h"

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/pipeline.h"
#include "train/evaluate.h"
#include "train/options.h"

namespace ttq::app {

Tensor calibration_images(const CalibrationOptions& o, const io::Metadata& meta,
                          const models::ModelConfig& config, const std::string& source) {
  check_flag_range("--calib-images", o.images, train::limits::kLimit);
  if (o.val_size != -1) check_flag_range("--val-size", o.val_size, train::limits::kValSize);
  data::DataSpec spec = data::parse_data_spec(o.data);
  // What training applied: the file's "preprocess" metadata (data/pipeline.h), else
  // the preprocessing of files from before it.
  data::Preprocess pre = data::preprocess_for(spec);
  if (auto it = meta.find("preprocess"); it != meta.end())
    pre = data::parse_preprocess_json(it->second, source);
  // The split as training formed it (checkpoints and packed files record it), so that
  // the validation images stay unseen.
  data::SplitOptions split_options;
  split_options.val_size = o.val_size;
  if (auto it = meta.find("split"); it != meta.end() && o.val_size < 0) {
    try {
      const auto j = nlohmann::json::parse(it->second);
      const int64_t v = j.at("val_size").get<int64_t>();
      if (v > 0) split_options.val_size = v;
      split_options.seed = j.at("seed").get<uint64_t>();
    } catch (const nlohmann::json::exception&) {
      TTQ_INPUT_ERROR() << source << ": metadata 'split' is not {\"val_size\": N, \"seed\": S}";
    }
  }
  data::Splits splits = data::open_data(spec, pre.image_size, split_options, pre.channels);
  TTQ_INPUT_CHECK(splits.train && splits.train->size() > 0)
      << "--calibrate " << o.data << ": no training images";
  TTQ_INPUT_CHECK(config.in_channels == pre.channels)
      << source << ": the model takes " << config.in_channels << " input channels, --calibrate " << o.data
      << " has " << pre.channels;
  auto subset =
      data::random_subset(splits.train, std::min<int64_t>(o.images, splits.train->size()), o.seed + 7);
  data::Loader loader(subset, pre, train::loader_options(64, o.workers, o.seed, false));
  loader.start_epoch(0, 0);
  std::vector<Tensor> parts;
  int64_t n = 0;
  while (auto b = loader.next()) {
    n += b->size();
    parts.push_back(b->images);
  }
  TTQ_INPUT_CHECK(n > 0) << "--calibrate " << o.data << ": no calibration image could be read";
  Tensor x = Tensor::empty({n, parts[0].size(1), parts[0].size(2), parts[0].size(3)});
  int64_t at = 0;
  for (const Tensor& t : parts) {
    x.narrow(0, at, t.size(0)).copy_(t);
    at += t.size(0);
  }
  return x;
}

Int8PackResult pack_int8_file(const std::string& in, const std::string& out, const std::string& arch_flag,
                              const CalibrationOptions& o, std::ostream& log) {
  TTQ_INPUT_CHECK(!o.data.empty()) << "--act-bits 8 needs --calibrate DATA (images of the training split)";
  Int8PackResult r;
  r.report = models::pack_model_file(in, out, arch_flag, [&](models::PackedContent& content) {
    auto model = models::PackedModel::from_tensors(content.tensors, content.metadata, "", Device::cpu(), in,
                                                   {.precision = models::Precision::Float});
    model->check_input(
        {1, model->config().in_channels, model->config().input_size, model->config().input_size}, in);
    const Tensor x = calibration_images(o, content.metadata, model->config(), in);
    model->check_input(x.shape(), "--calibrate " + o.data);
    log << "calibrating int8 activations on " << x.size(0) << " training images of " << o.data << " ("
        << models::calib_method_name(o.method) << ")\n";
    int64_t last = -1;
    r.calibration = models::calibrate_activations(*model, x, o.method, 64, [&](int pass, int64_t done) {
      const int64_t pct = (pass * x.size(0) + done) * 100 / (2 * x.size(0));
      if (pct / 25 != last) log << "  calibration " << pct << "%\n" << std::flush;
      last = pct / 25;
    });
    models::add_activation_quant(content, r.calibration, o.data, "train");
  });
  return r;
}

}  // namespace ttq::app
