// The training loop behind ttq_train: both phases (full precision, TTQ),
// the seed's optimisers and schedules (docs/ttq.md, train/schedule.h), run
// folders (train/run_folder.h: config.json, metrics.jsonl, last / best
// checkpoints, all written atomically), exact resume, signal handling and
// divergence checks.
// Tests: tests/test_train_loop.cpp (resume equivalence, SIGKILL, NaN).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

namespace ttq::train {

// A numeric option left at kUnset (or a text option left empty where noted)
// was not given: resolve_defaults() fills in the seed's default for the model
// and phase, and on --resume the run's own value is kept. Any other value must
// lie in its range (train/options.h).
inline constexpr int kUnset = -1;

// Every knob of a run.
struct TrainOptions {
  std::string model = "small_densenet";
  std::string data = "fashion-mnist";
  std::string phase = "fp";  // fp | ttq
  std::string init;          // checkpoint the run starts from (required for ttq)
  // Load every tensor of `init` but the classifier layers' (models::Graph::classifiers),
  // which keep their fresh initialisation: fine-tuning on a data set with another
  // class count. Without it, an `init` whose classifier does not fit is refused.
  bool reset_classifier = false;
  std::string out;     // run folder
  std::string device;  // "", cpu, cuda, cuda:N ("" = cuda when available)
  int64_t epochs = kUnset;
  int64_t batch = kUnset;
  double lr = kUnset;
  double weight_decay = kUnset;  // fp: conv + classifier weights; ttq: classifier weight
  double momentum = kUnset;      // fp (SGD, Nesterov); default 0.95
  double t = kUnset;             // ttq threshold factor
  double dropout = kUnset;       // every dropout of the model (unset: the architecture's default)
  std::string scales_init;       // ones | mean ("": ones)
  std::string wn_grad;           // exact | seed ("": exact)
  uint64_t seed = 0;
  int workers = 2;
  int64_t limit_train = 0;  // 0 = all (not given)
  int64_t limit_val = 0;
  int64_t limit_test = 0;  // 0 = all (not given)
  // The input pipeline (data/pipeline.h): kUnset / "" = from --init's
  // "preprocess" metadata, else detected from the data.
  int64_t channels = kUnset;    // 1 or 3
  int64_t image_size = kUnset;  // images are resized to this square
  int64_t crop = kUnset;        // the network's input side
  std::string augment;          // none | flip-crop | seed
  std::string mean, std;        // "auto" or comma-separated numbers, one per channel
  // Images held out of the training images for validation when the data set has
  // no validation split of its own (-1: 10%, at most 5000; data/dataset.h).
  int64_t val_size = -1;
  int64_t eval_batch = 256;
  int early_stop_patience = 10;  // the seed's train(patience=10, threshold=0.01)
  double early_stop_threshold = 0.01;
  int plateau_patience = 4;
  // "plateau" (the seed's ReduceLROnPlateau on val top-1) or "cosine" (per-epoch
  // cosine annealing of every group's lr from --lr to 0 over --epochs; the
  // plateau schedule is then not applied). "": plateau.
  std::string schedule;
  // Continue the run in `out` from last.safetensors; the options that shape the
  // data order or the model must agree with the run's config.json.
  bool resume = false;
  // Start a new run in a folder that holds one (its files are replaced once
  // every input has been validated). Without it, such a folder is refused.
  bool overwrite = false;
  bool progress = true;   // a live progress line on a terminal (plain lines otherwise)
  int64_t log_every = 0;  // batches between plain progress lines off a terminal (0: ~10% of an epoch)
  // TensorBoard event file in the run folder (train/tensorboard.h): per-step loss
  // and learning rate, per-epoch metrics, per-layer TTQ statistics and histograms.
  bool tensorboard = true;
  // Data parallel (several ranks, train/distributed.h): BatchNorm with the global
  // batch's statistics instead of each rank's own. No effect in one process.
  bool sync_bn = false;
  // Testing aid: behave as if SIGINT arrived once this many optimiser steps are done (0: never).
  int64_t stop_after_steps = 0;
};

// Fills in the seed's defaults (docs/ttq.md, "Defaults of ttq_train") for every
// unset field and checks every value against its range (train/options.h).
// Throws ttq::InputError naming the flag for an impossible value.
TrainOptions resolve_defaults(TrainOptions o);

struct EpochMetrics {
  int64_t epoch = 0;  // 1-based
  double train_loss = 0, train_top1 = 0;
  double val_loss = 0, val_top1 = 0, val_top5 = 0;
  double lr = 0;
  double seconds = 0, images_per_second = 0;
  bool ttq = false;
  double zero_fraction = 0, mean_wp = 0, mean_wn = 0;
  int64_t skipped = 0;       // unreadable images skipped this epoch (train + val)
  std::string json() const;  // one line
  // The log line: "epoch 3/30: train loss ... (best)".
  std::string line(int64_t epochs, bool best) const;
};

// The test split's verdict on the best checkpoint, once, at the end of a run
// (metrics.jsonl's last line, with "final": true).
struct TestMetrics {
  bool evaluated = false;  // false when the data set has no test split
  int64_t best_epoch = 0;
  double best_val_top1 = 0;
  double loss = 0, top1 = 0, top5 = 0;
  int64_t count = 0;
  std::string from;          // where the test split comes from
  std::string json() const;  // one line
};

struct RunResult {
  int exit_code = 0;  // 0 done, 130 SIGINT, 143 SIGTERM
  int64_t epochs_completed = 0;
  double best_val_top1 = 0;
  EpochMetrics last;
  bool early_stopped = false;
  TestMetrics test;  // filled when the run finished (exit_code 0)
};

// Runs (or resumes) a training run. `log` receives progress and summary lines.
// Model selection (best.safetensors, the plateau schedule, early stop) uses the
// validation split only; when the run finishes, best.safetensors is evaluated
// once on the test split (RunResult::test, metrics.jsonl's final line).
// Throws ttq::InputError (exit code 2) for bad flags, data or checkpoints, and
// when the training or validation loss becomes NaN or infinite (the last good
// checkpoint stays in place and is never saved as best).
RunResult run_training(const TrainOptions& options, std::ostream& log);

// SIGINT / SIGTERM make run_training finish its current step (or stop its
// validation or final test at the next batch), write last.safetensors and
// return 130 / 143. Installed by the tool first thing, before it starts any
// thread: the calling thread and those it starts block both signals, and a
// thread of its own receives them. Tests may call request_stop() directly.
void install_signal_handlers();
void request_stop(int signal_number);
void clear_stop_request();
// The signal that asked to stop (0: none yet).
int stop_signal();

}  // namespace ttq::train
