// ttq_train's options: the seed's defaults for unset values and the range of
// every value given (train/options.h). Tests: tests/test_train_loop.cpp
// (library), tests/test_tool_flags.cpp (the tools).
#include "train/options.h"

#include <cmath>

#include "data/augment.h"
#include "models/graph_io.h"
#include "models/model.h"
#include "train/trainer.h"

namespace ttq::train {

TrainOptions resolve_defaults(TrainOptions o) {
  TTQ_INPUT_CHECK(o.phase == "fp" || o.phase == "ttq")
      << "--phase: expected fp or ttq, got '" << o.phase << "'";
  bool known = false;
  std::string names;
  for (const auto& n : models::names()) {
    known = known || n == o.model;
    names += (names.empty() ? "" : ", ") + n;
  }
  known = known || models::is_model_path(o.model);  // an .onnx file, read when the run starts
  TTQ_INPUT_CHECK(known) << "--model: unknown model '" << o.model << "' (expected one of " << names
                         << " or a path to an .onnx file)";
  TTQ_INPUT_CHECK(!o.out.empty()) << "--out: a run folder is required";
  const bool sq = o.model == "squeezenet";
  const bool fp = o.phase == "fp";
  // kUnset (-1 / "") stands for a flag not given; any other value must be in range.
  if (o.epochs == kUnset) o.epochs = fp ? 30 : 20;
  if (o.batch == kUnset) o.batch = fp ? 128 : 512;
  if (o.lr == kUnset) o.lr = fp ? (sq ? 0.04 : 0.1) : (sq ? 1e-4 : 1e-3);
  if (o.weight_decay == kUnset) o.weight_decay = fp ? (sq ? 3e-4 : 1e-4) : 1e-4;
  if (o.momentum == kUnset) o.momentum = 0.95;
  if (o.t == kUnset) o.t = sq ? 0.15 : 0.05;
  if (o.scales_init.empty()) {
    // Wp = Wn = 1 scales every ternary layer's output by about 1 / mean|W|; BatchNorm
    // renormalises that, so a network without any (squeezenet1_1) starts from the means.
    bool has_bn = false;
    // (An .onnx file's graph is read and registered here: its BatchNorms decide too.)
    const models::Graph graph = models::build_graph(models::resolve_model(o.model), models::ModelConfig{});
    for (const auto& n : graph.nodes()) has_bn = has_bn || n.kind == models::NodeKind::BatchNorm2d;
    o.scales_init = has_bn ? "ones" : "mean";
  }
  if (o.wn_grad.empty()) o.wn_grad = "exact";
  if (o.schedule.empty()) o.schedule = "plateau";
  check_flag_range("--epochs", o.epochs, limits::kEpochs);
  check_flag_range("--batch", o.batch, limits::kBatch);
  check_flag_range("--lr", o.lr, limits::kLr);
  check_flag_range("--weight-decay", o.weight_decay, limits::kWeightDecay);
  check_flag_range("--momentum", o.momentum, limits::kMomentum);
  check_flag_range("--t", o.t, limits::kT);
  if (o.dropout != kUnset) check_flag_range("--dropout", o.dropout, limits::kDropout);
  check_flag_range("--workers", static_cast<int64_t>(o.workers), limits::kWorkers);
  if (o.limit_train != 0) check_flag_range("--limit-train", o.limit_train, limits::kLimit);
  if (o.limit_val != 0) check_flag_range("--limit-val", o.limit_val, limits::kLimit);
  if (o.limit_test != 0) check_flag_range("--limit-test", o.limit_test, limits::kLimit);
  if (o.val_size != kUnset) check_flag_range("--val-size", o.val_size, limits::kValSize);
  TTQ_INPUT_CHECK(o.channels == kUnset || o.channels == 1 || o.channels == 3)
      << "--channels: expected 1 (gray) or 3 (RGB), got " << o.channels;
  if (o.image_size != kUnset) check_flag_range("--image-size", o.image_size, limits::kImageSize);
  if (o.crop != kUnset) check_flag_range("--crop", o.crop, limits::kImageSize);
  if (!o.augment.empty()) data::parse_augment(o.augment);
  if (o.log_every != 0) check_flag_range("--log-every", o.log_every, limits::kLogEvery);
  check_flag_range("--eval-batch", o.eval_batch, limits::kEvalBatch);
  check_flag_range("--early-stop-patience", static_cast<int64_t>(o.early_stop_patience),
                   limits::kEarlyStopPatience);
  check_flag_range("--plateau-patience", static_cast<int64_t>(o.plateau_patience), limits::kPlateauPatience);
  TTQ_CHECK(std::isfinite(o.early_stop_threshold) && o.stop_after_steps >= 0)
      << "resolve_defaults: bad testing aids";
  TTQ_INPUT_CHECK(o.schedule == "plateau" || o.schedule == "cosine")
      << "--schedule: expected plateau or cosine, got '" << o.schedule << "'";
  TTQ_INPUT_CHECK(o.wn_grad == "exact" || o.wn_grad == "seed")
      << "--wn-grad: expected exact or seed, got '" << o.wn_grad << "'";
  TTQ_INPUT_CHECK(o.scales_init == "ones" || o.scales_init == "mean")
      << "--scales-init: expected ones or mean, got '" << o.scales_init << "'";
  TTQ_INPUT_CHECK(!(o.resume && o.overwrite)) << "--resume and --overwrite: give one or the other";
  TTQ_INPUT_CHECK(!o.reset_classifier || !o.init.empty() || o.resume)
      << "--reset-classifier: applies to the weights of --init CKPT, which is not given";
  TTQ_INPUT_CHECK(fp || !o.init.empty() || o.resume)
      << "--init: the ttq phase starts from a full-precision checkpoint (--init CKPT)";
  return o;
}

}  // namespace ttq::train
