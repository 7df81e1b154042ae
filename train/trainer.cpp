// The training loop (train/trainer.h): a run is set up in parts (run folder,
// data, model, optimiser and schedule, run files), then trains epoch by epoch
// (train_epoch, end_epoch) and ends with one test of the best checkpoint
// (final_test). Options: train/options.cpp; schedules: train/schedule.cpp;
// signals: train/signals.cpp; metrics lines: train/metrics.cpp.
#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "data/pipeline.h"
#include "engine/io/safetensors.h"
#include "engine/nn/layers.h"
#include "engine/ops/ops.h"
#include "models/graph_io.h"
#include "models/model_file.h"
#include "train/checkpoint.h"
#include "train/distributed.h"
#include "train/evaluate.h"
#include "train/progress.h"
#include "train/run_folder.h"
#include "train/schedule.h"
#include "train/tensorboard.h"

namespace ttq::train {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

io::NamedTensors read_init_weights(const std::string& path, const std::string& arch) {
  if (models::is_onnx_path(path)) {
    models::WeightsSource w = models::read_weights_source(path);
    const std::string held = models::meta_value(w.metadata, "model");
    TTQ_INPUT_CHECK(held == arch) << path << ": holds a " << held << ", not a " << arch << " (--model)";
    return std::move(w.tensors);
  }
  io::Header h = io::read_safetensors_header(path);
  auto fmt = h.metadata.find("format");
  if (fmt != h.metadata.end() && fmt->second == "ttq-checkpoint") {
    CheckpointContent c = read_checkpoint(path);
    TTQ_INPUT_CHECK(c.arch == arch) << path << ": holds a " << c.arch << ", not a " << arch << " (--model)";
    return c.model_tensors;
  }
  TTQ_INPUT_CHECK(fmt == h.metadata.end() || fmt->second != "ttq-packed-2bit")
      << path << ": a packed model cannot initialise training";
  auto m = h.metadata.find("model");
  TTQ_INPUT_CHECK(m == h.metadata.end() || m->second == arch)
      << path << ": holds a " << m->second << ", not a " << arch << " (--model)";
  return io::read_safetensors(path).tensors();
}

// --init's tensors as `model` loads them: with `reset`, the classifier layers'
// (models::Graph::classifiers) are the model's fresh ones; without it, a
// classifier tensor whose shape is not the model's is refused with a hint.
io::NamedTensors fit_classifier(models::Model& model, io::NamedTensors init, const std::string& path,
                                bool reset) {
  std::vector<std::string> prefixes;
  for (int i : model.graph().classifiers()) prefixes.push_back(model.graph().node(i).name + ".");
  auto in_classifier = [&](const std::string& name) {
    for (const std::string& p : prefixes)
      if (name.rfind(p, 0) == 0) return true;
    return false;
  };
  std::map<std::string, Tensor> fresh;
  for (auto& [name, t] : model.state_dict())
    if (in_classifier(name)) fresh.emplace(name, t);
  if (!reset) {
    for (const auto& [name, t] : init) {
      auto f = fresh.find(name);
      TTQ_INPUT_CHECK(f == fresh.end() || f->second.shape() == t.shape())
          << path << ": " << name << " is " << shape_str(t.shape()) << ", the model's for "
          << model.config().num_classes << " classes is " << shape_str(f->second.shape())
          << " (use --reset-classifier to fine-tune on a data set with another class count)";
    }
    return init;
  }
  io::NamedTensors out;
  for (auto& [name, t] : init)
    if (!in_classifier(name)) out.emplace_back(name, std::move(t));
  for (auto& [name, t] : fresh) out.emplace_back(name, t.clone());
  return out;
}

// Everything a run works with, set up once by run_training.
struct Run {
  TrainOptions o;
  bool ttq_phase = false;
  std::string last_path, best_path;
  // data
  data::DataSpec spec;
  data::Preprocess pre;
  std::string stats_from;  // where pre's mean / std come from
  std::string detected;    // what the data's images were found to be ("" when not looked at)
  data::SplitOptions split_options;
  data::Splits splits;
  std::shared_ptr<const data::Dataset> train_set, val_set, test_set;
  // model, optimiser, schedule and where the run stands
  std::string arch;  // --model resolved (a name, or an .onnx file's graph)
  models::ModelPtr model;
  models::TtqModel ttq;
  Device device;
  std::unique_ptr<optim::Optimizer> opt;
  std::unique_ptr<optim::ReduceLROnPlateau> sched;
  RunState st;
  io::Metadata extra;                       // stored in every checkpoint: classes, data, preprocessing, split
  std::unique_ptr<tb::EventWriter> events;  // null with --no-tensorboard
  double last_epoch_seconds = -1, last_val_seconds = -1;  // of the last whole epoch, for the run's ETA
  Distributed dist;  // the ranks of a data-parallel job (a world of one: no-ops)

  void save(const std::string& path) {
    if (!dist.writer()) return;
    save_checkpoint(path, *model, ttq_phase ? &ttq : nullptr, *opt, *sched, st, extra);
  }
  void record_rng() {
    auto g = nn::global_generator();
    st.rng_seed = g.seed();
    st.rng_offset = g.offset();
  }
};

// The data sets (subsets for --limit-*), checked against a resumed run.
void open_run_data(Run& r, const RunFolder& folder) {
  const TrainOptions& o = r.o;
  r.spec = data::parse_data_spec(o.data);
  // A new run from --init takes the unset pipeline options from the file's
  // "preprocess" metadata (a resumed run has them all from its config.json).
  std::optional<data::Preprocess> init_pre;
  if (!o.resume && !o.init.empty()) {
    const io::Metadata meta = io::read_safetensors_header(o.init).metadata;
    if (auto it = meta.find("preprocess"); it != meta.end())
      init_pre = data::parse_preprocess_json(it->second, o.init);
  }
  data::PipelineOptions po;
  po.channels = o.channels == kUnset ? 0 : static_cast<int>(o.channels);
  po.image_size = o.image_size == kUnset ? 0 : static_cast<int>(o.image_size);
  po.crop = o.crop == kUnset ? 0 : static_cast<int>(o.crop);
  po.augment = o.augment;
  po.mean = o.mean;
  po.std = o.std;
  const data::ResolvedPreprocess rp = data::resolve_preprocess(po, r.spec, init_pre ? &*init_pre : nullptr);
  r.pre = rp.pre;
  r.stats_from = rp.stats_from;
  r.detected = rp.detected;
  r.split_options.val_size = o.val_size;
  r.splits = data::open_data(r.spec, r.pre.image_size, r.split_options, r.pre.channels);
  TTQ_INPUT_CHECK(r.splits.train && r.splits.train->size() > 0) << o.data << ": no training images";
  TTQ_INPUT_CHECK(r.splits.val && r.splits.val->size() > 0) << o.data << ": no validation images";
  r.train_set = r.splits.train;
  r.val_set = r.splits.val;
  r.test_set = r.splits.test;
  if (o.limit_train > 0) r.train_set = data::random_subset(r.train_set, o.limit_train, o.seed);
  if (o.limit_val > 0) r.val_set = data::random_subset(r.val_set, o.limit_val, o.seed + 1);
  if (r.test_set && o.limit_test > 0) r.test_set = data::random_subset(r.test_set, o.limit_test, o.seed + 2);
  if (o.resume)
    check_run_data(folder.run_config(), r.train_set->size(), r.val_set->size(), folder.config_path());
  if (rp.auto_stats) {
    const data::ChannelStats cs = data::channel_stats(*r.train_set, r.pre, data::kStatsImages, o.seed);
    for (int c = 0; c < 3; ++c) {
      if (!rp.mean_given) r.pre.mean[c] = cs.mean[c];
      if (!rp.std_given) r.pre.std[c] = cs.std[c];
    }
    r.stats_from = "auto (" + std::to_string(cs.images) + " training images)";
  }
}

// "1x28x28, crop 28, augment flip-crop (pad 2), mean [0.286] std [0.353] (Fashion-MNIST's)"
std::string pipeline_text(const Run& r) {
  const data::Preprocess& p = r.pre;
  std::ostringstream os;
  os << p.channels << "x" << p.image_size << "x" << p.image_size << ", crop " << p.crop << ", augment "
     << data::augment_name(p.augment);
  if (p.pad > 0) os << " (pad " << p.pad << ")";
  os << std::setprecision(4) << ", mean [";
  for (int c = 0; c < p.channels; ++c) os << (c ? " " : "") << p.mean[c];
  os << "] std [";
  for (int c = 0; c < p.channels; ++c) os << (c ? " " : "") << p.std[c];
  os << "] (" << r.stats_from << ")";
  if (!r.detected.empty()) os << "; the data: " << r.detected;
  return os.str();
}

// The model of the phase: from --init (or fresh), quantized for TTQ; on
// --resume, the checkpoint's weights (and TTQ state).
void build_model(Run& r, const CheckpointContent* resume) {
  const TrainOptions& o = r.o;
  models::ModelConfig mc;
  mc.in_channels = r.pre.channels;
  mc.input_size = r.pre.crop;
  mc.num_classes = r.train_set->num_classes();
  mc.dropout = o.dropout;
  // Synchronised BN runs through batch_norm2d: the naive graph, no fused dense bottleneck.
  if (o.sync_bn && r.dist.active()) mc.memory_efficient = false;
  nn::manual_seed(o.seed);
  r.model = models::create(r.arch, mc, nn::global_generator());
  if (resume) {
    if (r.ttq_phase) {
      r.ttq = models::quantize_model(*r.model, resume->ttq);
      models::load_ttq_checkpoint(*r.model, r.ttq, resume->model_tensors, r.last_path);
    } else {
      models::load_weights(*r.model, resume->model_tensors, r.last_path);
    }
    return;
  }
  if (!o.init.empty())
    models::load_weights(
        *r.model, fit_classifier(*r.model, read_init_weights(o.init, r.arch), o.init, o.reset_classifier),
        o.init);
  if (r.ttq_phase) {
    models::TtqOptions topt;
    topt.t = o.t;
    topt.wn_grad = o.wn_grad == "seed" ? kernels::WnGradMode::Seed : kernels::WnGradMode::Exact;
    topt.scale_init = models::parse_scale_init(o.scales_init);
    r.ttq = models::quantize_model(*r.model, topt);
  }
}

// What every checkpoint of the run records beside the weights: enough for the
// tools that read it later (ttq_eval, ttq_infer, ttq_pack) to need no flags.
io::Metadata checkpoint_metadata(const Run& r) {
  io::Metadata extra;
  nlohmann::json classes = r.train_set->class_names();
  extra["classes"] = classes.dump();
  extra["data"] = r.spec.str();
  extra["preprocess"] = data::preprocess_json(r.pre);
  nlohmann::json sj;
  sj["val_size"] = r.splits.val_size;  // 0: the data set's own validation split
  sj["seed"] = r.split_options.seed;
  extra["split"] = sj.dump();
  return extra;
}

// config.json: the resolved options and what the run found (read back by
// adopt_run_options on --resume).
std::string run_config_text(const Run& r) {
  const TrainOptions& o = r.o;
  nlohmann::json cj;
  cj["model"] = o.model;
  cj["data"] = r.spec.str();
  cj["phase"] = o.phase;
  cj["init"] = o.init;
  cj["reset_classifier"] = o.reset_classifier;
  cj["device"] = r.device.str();
  cj["epochs"] = o.epochs;
  cj["batch"] = o.batch;
  cj["lr"] = o.lr;
  cj["weight_decay"] = o.weight_decay;
  cj["dropout"] = r.model->config().dropout;
  if (!r.ttq_phase) cj["momentum"] = o.momentum;
  if (r.ttq_phase) {
    cj["t"] = r.ttq.options.t;
    cj["scales_init"] = models::scale_init_name(r.ttq.options.scale_init);
    cj["wn_grad"] = o.wn_grad;
  }
  cj["seed"] = o.seed;
  cj["workers"] = o.workers;
  cj["limit_train"] = o.limit_train;
  cj["limit_val"] = o.limit_val;
  cj["limit_test"] = o.limit_test;
  cj["val_size"] = r.splits.val_size;
  cj["val_from"] = r.splits.val_from;
  cj["test_from"] = r.splits.test_from;
  cj["train_images"] = r.train_set->size();
  cj["val_images"] = r.val_set->size();
  cj["test_images"] = r.test_set ? r.test_set->size() : 0;
  cj["classes"] = r.train_set->num_classes();
  cj["parameters"] = r.model->num_parameters();
  cj["early_stop_patience"] = o.early_stop_patience;
  cj["plateau_patience"] = o.plateau_patience;
  cj["schedule"] = o.schedule;
  // The input pipeline as resolved (data/pipeline.h); --resume and --config read it back.
  const nlohmann::json pj = nlohmann::json::parse(data::preprocess_json(r.pre));
  for (const auto& [k, v] : pj.items()) cj[k] = v;
  cj["mean_std_from"] = r.stats_from;
  cj["input_detected"] = r.detected;
  cj["ranks"] = r.dist.size();  // data parallel: "batch" is the global batch, "ranks" x the per-rank one
  cj["sync_bn"] = o.sync_bn;
  return cj.dump(2) + "\n";
}

// Data parallel: every rank trains the same run (flags but --device) on the
// same data from the same weights; a difference is one line from rank 0.
void check_ranks_agree(Run& r) {
  if (!r.dist.active()) return;
  nlohmann::json cj = nlohmann::json::parse(run_config_text(r));
  cj.erase("device");
  r.dist.check_same("the flags", cj.dump(1));
  nlohmann::json ej(r.extra);
  r.dist.check_same("the data",
                    ej.dump(1) + "\n" + fingerprint(*r.train_set) + "\n" + fingerprint(*r.val_set));
  r.dist.check_same("the initial weights (--init)", fingerprint(*r.model));
}

// The running sums of one epoch (those of its batches before a mid-epoch resume included).
struct EpochSums {
  int64_t first = 0;  // the batch the epoch (re)starts at
  double loss_sum = 0, correct = 0, count = 0;
  double seconds_before = 0;   // time spent before a mid-epoch resume
  int64_t skipped_before = 0;  // unreadable training images of the batches before it
  Clock::time_point t0 = Clock::now();
};

// SIGINT / SIGTERM inside epoch `epoch` after `done` batches: last.safetensors
// records them and their partial sums, so that --resume carries on exactly
// (done == batches per epoch: stopped in the validation, which --resume redoes).
// Returns the exit code.
int stop_in_epoch(Run& r, const EpochSums& s, const data::Loader& train_loader, int64_t epoch, int sig,
                  int64_t done, std::ostream& log) {
  r.st.batch = done;
  r.st.part_loss_sum = s.loss_sum;
  r.st.part_correct = s.correct;
  r.st.part_count = s.count;
  r.st.part_skipped = s.skipped_before + train_loader.skipped_in_epoch();
  r.st.part_seconds = s.seconds_before + seconds_since(s.t0);
  r.record_rng();
  r.save(r.last_path);
  log << "stopped by signal " << sig << " at epoch " << epoch + 1
      << (done < train_loader.batches_per_epoch() ? ", batch " + std::to_string(done)
                                                  : std::string(", in the validation"))
      << "; " << r.last_path << " written (resume with --resume)\n";
  return 128 + sig;
}

// The training batches of one epoch. Returns the batches done when a stop
// signal came before the last one (the caller then stops the run), else nothing.
std::optional<int64_t> train_epoch(Run& r, data::Loader& loader, int64_t epoch, EpochSums& s,
                                   Progress& progress) {
  const int64_t nb = loader.batches_per_epoch();
  r.model->train();
  while (auto b = loader.next()) {
    Tensor x = b->images.to(r.device), y = b->labels.to(r.device);
    Tensor logits = (*r.model)(x);
    Tensor loss = ops::cross_entropy(logits, y);
    // The global batch's numbers (every rank's shard; this batch alone in a world of one).
    const StepAgreement ag =
        r.dist.agree_step(b->index, b->size(), loss.item(),
                          static_cast<double>(ops::topk_correct(logits, y, 1)), stop_signal() != 0);
    const double lv = ag.loss;
    if (!std::isfinite(lv)) {
      progress.finish_line();
      TTQ_INPUT_ERROR() << "training diverged: loss is " << lv << " at epoch " << epoch + 1 << ", batch "
                        << b->index + 1 << " (lower --lr; " << r.last_path << " holds the last good state)";
    }
    r.opt->zero_grad();
    r.dist.backward(loss, ag);  // with several ranks: the gradients summed over them
    r.opt->step();
    r.st.global_step++;
    if (r.events) {
      r.events->scalar("train/loss", r.st.global_step, lv);
      r.events->scalar("train/lr", r.st.global_step, r.opt->lr(0));
    }
    const double n = ag.count;
    s.loss_sum += lv * n;
    s.correct += ag.correct;
    s.count += n;
    const int64_t done = b->index + 1;
    const double el = seconds_since(s.t0);
    const double ips = (s.count - r.st.part_count) / std::max(el, 1e-9);
    std::ostringstream tail;
    tail << ", loss " << std::fixed << std::setprecision(4) << s.loss_sum / s.count << ", top1 "
         << std::setprecision(2) << 100.0 * s.correct / s.count << "%";
    // The run's ETA: this epoch, its validation and the epochs left, each as
    // long as the last whole one (before one has finished: this one's pace, and a
    // validation image at a third of a training image's time).
    const double per_batch = el / static_cast<double>(std::max<int64_t>(1, done - s.first));
    const double val_s = r.last_val_seconds >= 0
                             ? r.last_val_seconds
                             : per_batch * static_cast<double>(nb) * static_cast<double>(r.val_set->size()) /
                                   (3.0 * static_cast<double>(r.train_set->size()));
    const double epoch_s = r.last_epoch_seconds >= 0 ? r.last_epoch_seconds : per_batch * nb + val_s;
    progress.update("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(r.o.epochs), done, nb, ips,
                    (nb - done) * per_batch, tail.str(),
                    run_eta_seconds((nb - done) * per_batch, val_s, r.o.epochs - epoch - 1, epoch_s));
    const bool aid = r.o.stop_after_steps > 0 && r.st.global_step == r.o.stop_after_steps;
    if (aid) request_stop(SIGINT);
    // Ranks stop together: at a signal any of them saw before this step, or at the testing aid.
    const bool stop = r.dist.active() ? ag.stop || aid : stop_signal() != 0;
    if (stop && done < nb) return done;
  }
  return std::nullopt;
}

// The epoch's metrics in the event file, at the step the epoch ended on; in the
// TTQ phase each ternary layer's zero fraction, Wp, Wn and latent weight histogram.
void write_epoch_events(Run& r, const EpochMetrics& m, const models::TtqStats* ts) {
  if (!r.events) return;
  tb::EventWriter& w = *r.events;
  const int64_t step = r.st.global_step;
  w.scalar("epoch", step, static_cast<double>(m.epoch));
  w.scalar("epoch/train_loss", step, m.train_loss);
  w.scalar("epoch/train_top1", step, m.train_top1);
  w.scalar("epoch/val_loss", step, m.val_loss);
  w.scalar("epoch/val_top1", step, m.val_top1);
  w.scalar("epoch/val_top5", step, m.val_top5);
  w.scalar("epoch/lr", step, m.lr);
  w.scalar("epoch/seconds", step, m.seconds);
  w.scalar("epoch/images_per_second", step, m.images_per_second);
  if (ts) {
    w.scalar("ttq/zero_fraction", step, ts->zero_fraction);
    w.scalar("ttq/mean_wp", step, ts->mean_wp);
    w.scalar("ttq/mean_wn", step, ts->mean_wn);
    for (size_t i = 0; i < ts->layers.size(); ++i) {
      const models::TtqLayerStats& l = ts->layers[i];
      const std::string tag = "ttq/" + l.name + "/";
      w.scalar(tag + "zero_fraction", step,
               l.numel > 0 ? static_cast<double>(l.zeros) / static_cast<double>(l.numel) : 0.0);
      w.scalar(tag + "wp", step, l.wp);
      w.scalar(tag + "wn", step, l.wn);
      const std::vector<float> latent = r.ttq.layers[i].conv->weight().to(Device::cpu()).to_vector<float>();
      w.histogram(tag + "latent_weight", step, latent.data(), static_cast<int64_t>(latent.size()));
    }
  }
  w.flush(/*sync=*/true);
}

// After the training batches of epoch `epoch`: validation, the epoch's metrics,
// the schedule and early-stop decisions, metrics.jsonl and the checkpoints.
EpochMetrics end_epoch(Run& r, const EpochSums& s, data::Loader& train_loader, data::Loader& val_loader,
                       int64_t epoch, const EvalResult& ev, double train_seconds, RunResult& result,
                       RunFolder& folder, std::ostream& log) {
  if (!std::isfinite(ev.loss)) {
    TTQ_INPUT_ERROR() << "training diverged: validation loss is " << ev.loss << " after epoch " << epoch + 1
                      << " (lower --lr; " << r.last_path << " holds the last good state)";
  }
  check_some_loaded(static_cast<double>(ev.count), val_loader, r.o.data, "validation");
  EpochMetrics m;
  m.epoch = epoch + 1;
  m.train_loss = s.count > 0 ? s.loss_sum / s.count : 0;
  m.train_top1 = s.count > 0 ? s.correct / s.count : 0;
  m.val_loss = ev.loss;
  m.val_top1 = ev.top1;
  m.val_top5 = ev.top5;
  m.lr = r.opt->lr(0);
  m.seconds = train_seconds + ev.seconds;
  m.images_per_second = s.count / std::max(train_seconds, 1e-9);
  // The loaders count every skipped sample, also those of batches that had none left.
  m.skipped = s.skipped_before + train_loader.skipped_in_epoch() + val_loader.skipped_in_epoch();
  models::TtqStats ts;
  if (r.ttq_phase) {
    ts = models::ttq_stats(r.ttq);
    m.ttq = true;
    m.zero_fraction = ts.zero_fraction;
    m.mean_wp = ts.mean_wp;
    m.mean_wn = ts.mean_wn;
  }
  RunState& st = r.st;
  st.val_top1_history.push_back(ev.top1);
  const bool best = ev.top1 > st.best_val_top1;
  if (best) st.best_val_top1 = ev.top1;
  result.early_stopped = early_stop(st.val_top1_history, r.o.early_stop_patience, r.o.early_stop_threshold);
  // The seed steps the schedule after the stop check.
  if (!result.early_stopped && r.o.schedule == "plateau") r.sched->step(ev.top1);

  st.epoch = epoch + 1;
  st.batch = 0;
  st.part_loss_sum = st.part_correct = st.part_count = st.part_seconds = 0;
  st.part_skipped = 0;
  r.record_rng();
  // The metrics line first and last.safetensors last: a run stopped in
  // between resumes from the previous epoch, whose --resume drops the extra
  // line and writes best.safetensors again.
  folder.append_metrics(m.json());
  write_epoch_events(r, m, r.ttq_phase ? &ts : nullptr);
  if (best) r.save(r.best_path);
  r.save(r.last_path);
  log << m.line(r.o.epochs, best) << "\n" << std::flush;
  result.last = m;
  result.epochs_completed = st.epoch;
  if (s.first == 0) {  // a whole epoch in this process: its times predict the next
    r.last_epoch_seconds = m.seconds;
    r.last_val_seconds = ev.seconds;
  }
  result.best_val_top1 = st.best_val_top1;
  return m;
}

// The test split, touched once: the best checkpoint's verdict. Returns false
// when a stop signal ended it early (every epoch is in last.safetensors:
// --resume with the same --epochs redoes only this test).
bool final_test(Run& r, TestMetrics& tm, std::ostream& log) {
  if (!r.dist.writer()) return true;  // rank 0 tests; the others are done
  const RunState& st = r.st;
  tm.from = r.splits.test_from;
  tm.best_val_top1 = st.best_val_top1;
  for (size_t e = 0; e < st.val_top1_history.size(); ++e) {
    if (tm.best_epoch == 0 || st.val_top1_history[e] > st.val_top1_history[tm.best_epoch - 1])
      tm.best_epoch = static_cast<int64_t>(e) + 1;
  }
  if (!r.test_set) {
    log << "no test split (" << r.splits.test_from << ")\n";
    return true;
  }
  CheckpointContent best = read_checkpoint(r.best_path);
  if (r.ttq_phase) {
    models::load_ttq_checkpoint(*r.model, r.ttq, best.model_tensors, r.best_path);
  } else {
    models::load_weights(*r.model, best.model_tensors, r.best_path);
  }
  r.model->to(r.device);
  data::Loader test_loader(r.test_set, r.pre, loader_options(r.o.eval_batch, r.o.workers, r.o.seed, false));
  log << "testing " << r.best_path << " (epoch " << tm.best_epoch << ") on " << r.test_set->size()
      << " test images\n"
      << std::flush;
  EvalResult te = evaluate(*r.model, test_loader, r.device, [] { return stop_signal() != 0; });
  if (te.stopped) {
    log << "stopped by signal " << stop_signal() << " in the final test; " << r.last_path
        << " holds every epoch (--resume redoes the test)\n";
    return false;
  }
  check_some_loaded(static_cast<double>(te.count), test_loader, r.o.data, "test");
  tm.evaluated = true;
  tm.loss = te.loss;
  tm.top1 = te.top1;
  tm.top5 = te.top5;
  tm.count = te.count;
  if (r.events) {
    r.events->scalar("test/loss", st.global_step, te.loss);
    r.events->scalar("test/top1", st.global_step, te.top1);
    r.events->scalar("test/top5", st.global_step, te.top5);
    r.events->flush(/*sync=*/true);
  }
  log << std::fixed << std::setprecision(2) << "test (" << te.count << " images, best epoch " << tm.best_epoch
      << " by val top1 " << 100 * tm.best_val_top1 << "%): loss " << std::setprecision(4) << te.loss
      << " top1 " << std::setprecision(2) << 100 * te.top1 << "% top5 " << 100 * te.top5 << "%\n";
  return true;
}

}  // namespace

RunResult run_training(const TrainOptions& raw_options, std::ostream& log_all) {
  // ---- run folder: checked (and locked for --resume / --overwrite) before
  // anything is read; nothing in it changes until every input is validated.
  Run r;
  // Data parallel: --batch is per rank, the run's batch the global one; rank 0 logs and writes.
  const TrainOptions raw = r.dist.global_options(raw_options);
  std::ostream& log = r.dist.writer() ? log_all : null_log();
  r.o = resolve_defaults(raw);  // every value given is in range
  RunFolder folder(r.o, r.dist.writer());
  if (r.o.resume) r.o = resolve_defaults(adopt_run_options(raw, folder.run_config(), folder.config_path()));
  r.dist.check_batch(r.o);
  const TrainOptions& o = r.o;
  if (!o.device.empty()) Device::parse(o.device);  // the spelling now; availability (and its log line) below
  r.ttq_phase = o.phase == "ttq";
  r.arch = models::resolve_model(o.model);
  r.last_path = folder.last_path();
  r.best_path = folder.best_path();

  // ---- resume: the checkpoint decides everything that shapes the run.
  CheckpointContent resume_ckpt;
  if (o.resume) {
    resume_ckpt = read_checkpoint(r.last_path);
    TTQ_INPUT_CHECK(resume_ckpt.arch == r.arch)
        << r.last_path << ": holds a " << resume_ckpt.arch << " run, not " << r.arch << " (--model)";
    TTQ_INPUT_CHECK(resume_ckpt.phase == o.phase)
        << r.last_path << ": holds a " << resume_ckpt.phase << " run, not " << o.phase << " (--phase)";
  }

  open_run_data(r, folder);
  data::Loader train_loader(r.train_set, r.pre,
                            r.dist.shard(loader_options(o.batch, o.workers, o.seed, true), true));
  data::Loader val_loader(r.val_set, r.pre,
                          r.dist.shard(loader_options(o.eval_batch, o.workers, o.seed, false), false));
  const int64_t nb = train_loader.batches_per_epoch();
  if (o.resume) {
    const RunState& rs = resume_ckpt.state;
    TTQ_INPUT_CHECK(rs.batch <= nb) << r.last_path << ": the run stopped after batch " << rs.batch
                                    << " of an epoch, but " << o.data << " gives " << nb
                                    << " batches per epoch";
    // As many epochs as done: the run only redoes its final test.
    TTQ_INPUT_CHECK(rs.epoch <= o.epochs) << "--epochs " << o.epochs << ": the run in " << o.out
                                          << " has completed " << rs.epoch << " epochs already";
  }

  build_model(r, o.resume ? &resume_ckpt : nullptr);
  // The data's crop must fit the architecture (torchvision's DenseNet needs 29x29).
  r.model->check_input({1, r.pre.channels, r.pre.crop, r.pre.crop}, o.data + " images");
  // Every input is valid: pick the device (a line on the log when it falls back to the CPU).
  r.device = pick_device(r.dist.device_flag(o.device), log);
  r.model->to(r.device);
  r.model->train();

  // ---- optimiser and schedule (the seed's)
  r.opt = make_optimizer(o, *r.model, r.ttq);
  r.sched = make_plateau(o, *r.opt);
  if (o.resume) {
    r.opt->load_state(resume_ckpt.optimizer_tensors, resume_ckpt.optimizer_scalars, r.last_path);
    r.sched->load_state_scalars(resume_ckpt.scheduler_scalars, r.last_path);
    r.st = resume_ckpt.state;
    nn::global_generator().set_state(r.st.rng_seed, r.st.rng_offset);
  }
  // Data parallel: the same flags, data and weights on every rank, then the gradient reducer.
  r.extra = checkpoint_metadata(r);
  check_ranks_agree(r);
  r.dist.attach(*r.opt, r.device, o.sync_bn, log);

  // ---- run folder files: every input is valid, the folder may change now.
  folder.open_for_writing();
  folder.write_config(run_config_text(r));
  folder.start_metrics(r.st.epoch);
  if (o.tensorboard && r.dist.writer()) {  // rank 0 alone writes the run folder
    r.events = std::make_unique<tb::EventWriter>(o.out);
    // A resumed run takes over from its checkpoint's step: what an earlier
    // process logged after it is dropped by TensorBoard's reader.
    if (o.resume) r.events->session_start(r.st.global_step + 1);
  }

  if (o.resume)
    log << "resuming " << o.out << " at epoch " << r.st.epoch + 1 << ", batch " << r.st.batch << "\n";
  Progress progress(log, o.progress, isatty(STDERR_FILENO) != 0, o.log_every);
  log << r.arch << " " << o.phase << " on " << r.device.str() << ": " << r.train_set->size() << " train / "
      << r.val_set->size() << " val / " << (r.test_set ? r.test_set->size() : 0) << " test images, "
      << r.train_set->num_classes() << " classes, " << nb << " batches of " << o.batch << " per epoch, "
      << r.model->num_parameters() << " parameters\n"
      << "validation: " << r.splits.val_from << "; test: " << r.splits.test_from << "\n"
      << "input: " << pipeline_text(r) << "\n";

  // ---- the epochs
  RunResult result;
  result.best_val_top1 = r.st.best_val_top1;
  result.epochs_completed = r.st.epoch;
  for (int64_t epoch = r.st.epoch; epoch < o.epochs; ++epoch) {
    set_epoch_lr(o, epoch, *r.opt);
    EpochSums s;
    s.first = r.st.batch;
    s.loss_sum = r.st.part_loss_sum;
    s.correct = r.st.part_correct;
    s.count = r.st.part_count;
    s.seconds_before = r.st.part_seconds;
    s.skipped_before = r.st.part_skipped;
    train_loader.start_epoch(epoch, s.first);
    const std::optional<int64_t> stopped_after = train_epoch(r, train_loader, epoch, s, progress);
    progress.finish_line();
    if (stopped_after) {
      result.exit_code = stop_in_epoch(r, s, train_loader, epoch, stop_signal(), *stopped_after, log);
      result.epochs_completed = r.st.epoch;
      return result;
    }
    check_some_loaded(s.count, train_loader, o.data, "training");
    const double train_seconds = s.seconds_before + seconds_since(s.t0);
    // Sharded over the ranks, which all finish the pass (a stop waits for its end).
    const EvalResult ev = r.dist.reduce(evaluate(
        *r.model, val_loader, r.device,
        r.dist.active() ? std::function<bool()>() : [] { return stop_signal() != 0; }));
    if (ev.stopped) {
      result.exit_code = stop_in_epoch(r, s, train_loader, epoch, stop_signal(), nb, log);
      result.epochs_completed = r.st.epoch;
      return result;
    }
    end_epoch(r, s, train_loader, val_loader, epoch, ev, train_seconds, result, folder, log);
    if (r.dist.active())
      log << "data parallel: " << std::fixed << std::setprecision(2)
          << 1e3 * r.dist.take_wait_seconds() / std::max<int64_t>(1, nb - s.first)
          << " ms per step waiting for gradient sums after backward\n";
    if (result.early_stopped) {
      log << "early stop: val top1 has not beaten its running mean of " << o.early_stop_patience
          << " epochs ago by " << o.early_stop_threshold << "\n";
      break;
    }
    if (int sig = r.dist.agreed_stop_signal(); sig != 0) {
      log << "stopped by signal " << sig << " after epoch " << r.st.epoch << "; " << r.last_path
          << " written\n";
      result.exit_code = 128 + sig;
      return result;
    }
  }

  if (!final_test(r, result.test, log)) {
    result.exit_code = 128 + stop_signal();
    return result;
  }
  folder.append_metrics(result.test.json());
  return result;
}

}  // namespace ttq::train
