// ttq_train: trains a model in full precision (--phase fp) or quantizes a
// full-precision checkpoint with TTQ (--phase ttq). Flags only: the loop is in
// train/trainer.cpp, the ranges in train/options.h. Exit codes: 0 done, 2 bad
// input or a diverged loss, 130 / 143 stopped by SIGINT / SIGTERM
// (last.safetensors written), 1 internal error.
#include <CLI/CLI.hpp>
#include <iostream>

#include "engine/dist/comm.h"
#include "engine/process.h"
#include "models/model.h"
#include "tools/flags.h"
#include "train/distributed.h"
#include "train/options.h"
#include "train/run_folder.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  ttq::configure_openmp_wait(argv, ttq::OpenMpWait::ShortSpin);
  CLI::App app{
      "Train a ttq model: full precision (--phase fp) or Trained Ternary Quantization from a\n"
      "full-precision checkpoint (--phase ttq). Writes RUN_DIR/config.json, metrics.jsonl,\n"
      "last.safetensors (every epoch) and best.safetensors (best validation top-1).\n"
      "Splits: the validation split (best checkpoint, schedule, early stop) is the data set's own\n"
      "(folder:DIR/val) or held out of the training images (--val-size); the test split\n"
      "(fashion-mnist/mnist t10k, tiny-imagenet's val/, folder:DIR/test) is used once, at the end,\n"
      "on best.safetensors, and reported in the summary and as metrics.jsonl's last line.\n"
      "Numeric flags left out take the seed project's defaults for the model and phase.\n"
      "A folder that holds a run is continued with --resume (flags left out take the run's\n"
      "values; those that shape the data order or the model must match them) or replaced\n"
      "with --overwrite. One ttq_train at a time per folder (RUN_DIR/.lock).\n"
      "Data parallel: mpirun -np N ttq_train ... (or srun) trains on N ranks, each on its shard of\n"
      "every global batch of N x --batch; rank 0 writes RUN_DIR (README.md, \"Data-parallel training\")."};
  namespace L = ttq::train::limits;
  ttq::train::TrainOptions o;
  bool quiet = false;
  ttq::tools::Flags f(app);
  std::string models;
  for (const auto& n : ttq::models::names()) models += (models.empty() ? "" : " | ") + n;
  f.text("--model", o.model,
         models + " | FILE.onnx (the network of an ONNX file; --init FILE.onnx also starts from its weights)",
         o.model);
  f.text("--data", o.data, "fashion-mnist[:DIR] | tiny-imagenet:DIR | folder:DIR | mnist:DIR", o.data);
  f.text("--phase", o.phase, "fp (full precision) or ttq", o.phase);
  f.text("--init", o.init, "Checkpoint to start from (required for --phase ttq)");
  app.add_flag("--reset-classifier", o.reset_classifier,
               "With --init: leave the classifier layers at fresh initialisation and load everything else "
               "(fine-tuning on a data set with another class count)");
  f.text("--out", o.out, "Run folder (created)")->required();
  f.text("--device", o.device, "cpu, cuda or cuda:N", "cuda when available, else cpu");
  f.integer("--epochs", o.epochs, L::kEpochs, "Epochs", "fp 30, ttq 20");
  f.integer("--batch", o.batch, L::kBatch, "Batch size (per rank under mpirun: the global batch is N x this)",
            "fp 128, ttq 512");
  f.real("--lr", o.lr, L::kLr, "Learning rate", "fp 0.1 / SqueezeNet 0.04; ttq 1e-3 / SqueezeNet 1e-4");
  f.real("--weight-decay", o.weight_decay, L::kWeightDecay,
         "L2 decay (fp: conv and classifier weights; ttq: the classifier weight)",
         "fp 1e-4 / SqueezeNet 3e-4; ttq 1e-4");
  f.real("--momentum", o.momentum, L::kMomentum, "fp: Nesterov momentum (0: plain SGD)", "0.95");
  f.real("--t", o.t, L::kT, "ttq: threshold factor, delta = t * max|W|", "0.05, SqueezeNet 0.15");
  f.real("--dropout", o.dropout, L::kDropout, "Drop probability of every dropout",
         "the architecture's, 0.25 / SqueezeNet 0.6");
  f.text("--scales-init", o.scales_init, "ttq: initial Wp, Wn: ones (the seed) or mean",
         "ones; mean for networks without BatchNorm (squeezenet1_1)");
  f.text("--wn-grad", o.wn_grad, "ttq: dL/dWn sign: exact (-sum_N G) or seed (+sum_N G)", "exact");
  f.seed("--seed", o.seed, "Random seed (init, data order, augmentation, dropout)", "0");
  f.integer("--workers", o.workers, L::kWorkers, "Data loader threads", std::to_string(o.workers));
  f.integer("--limit-train", o.limit_train, L::kLimit, "Train on a seeded subset of N training images",
            "all");
  f.integer("--limit-val", o.limit_val, L::kLimit, "Validate on a seeded subset of N validation images",
            "all");
  f.integer("--limit-test", o.limit_test, L::kLimit,
            "Test the final model on a seeded subset of N test images", "all");
  f.integer(
      "--val-size", o.val_size, L::kValSize,
      "Images held out of the training images for validation when the data set has no validation split "
      "of its own (fashion-mnist, mnist, tiny-imagenet, folder:DIR without DIR/val); stratified by class, "
      "seeded, the same in every run; fewer than the training images",
      "10% of the training images, at most 5000");
  f.integer("--channels", o.channels, L::kChannels,
            "Input channels: 1 (images converted to gray) or 3 (to RGB)",
            "--init's, else the data's: 1 when every probed image is gray");
  f.integer(
      "--image-size", o.image_size, L::kImageSize,
      "Images are resized to this square (shorter side, centre square) before cropping",
      "--init's, else the data's own size when all are one square size (IDX 28, Tiny ImageNet 64), else 64");
  f.integer("--crop", o.crop, L::kImageSize,
            "The network's input side: random crops in training, the centre crop "
            "in validation",
            "image size * 7/8 with --augment seed (56 of 64), else the image size");
  f.text("--augment", o.augment,
         "Training augmentation: none, flip-crop (zero-pad, random crop, horizontal flip) or seed (the seed "
         "project's rotation, crop, flip and colour changes)",
         "seed for 3x64x64 images, else flip-crop");
  f.text("--mean", o.mean,
         "Normalisation mean per channel: comma-separated numbers (one for all) or auto (computed from up to "
         "10000 training images and recorded)",
         "Fashion-MNIST's for 1-channel IDX, ImageNet's for 3 channels, else auto");
  f.text("--std", o.std, "Normalisation standard deviation per channel, like --mean", "as --mean");
  f.integer("--eval-batch", o.eval_batch, L::kEvalBatch, "Validation batch size",
            std::to_string(o.eval_batch));
  f.integer("--early-stop-patience", o.early_stop_patience, L::kEarlyStopPatience,
            "Stop when val top-1 has not beaten the 5-epoch mean of N epochs earlier by 0.01",
            std::to_string(o.early_stop_patience));
  f.integer("--plateau-patience", o.plateau_patience, L::kPlateauPatience, "ReduceLROnPlateau patience",
            std::to_string(o.plateau_patience));
  f.text("--schedule", o.schedule,
         "Learning-rate schedule: plateau (the seed's ReduceLROnPlateau) or cosine (to 0 over --epochs)",
         "plateau");
  std::string config_file;
  f.text("--config", config_file,
         "A run's config.json: start from the options it records (flags given here override them; --out "
         "and --device are never taken from it)");
  app.add_flag("--resume", o.resume, "Continue the run in --out from last.safetensors");
  app.add_flag(
      "--overwrite", o.overwrite,
      "Start a new run in an --out that holds one (its files are replaced once the inputs are checked)");
  app.add_flag("--quiet", quiet, "No progress lines, only one line per epoch");
  f.integer("--log-every", o.log_every, L::kLogEvery,
            "Off a terminal (a log file, a pipe): one progress line every N batches", "~10% of an epoch");
  bool no_tensorboard = false;
  app.add_flag("--no-tensorboard", no_tensorboard,
               "No TensorBoard event file in RUN_DIR (written by default: per-step loss and lr, per-epoch "
               "metrics, per-layer TTQ zero fraction, Wp, Wn and weight histograms)");
  app.add_flag("--sync-bn", o.sync_bn,
               "Under mpirun: batch norm with the statistics of the global batch (every rank's shard) "
               "instead of each rank's own; no effect in one process");
  if (int rc = ttq::tools::parse(app, f, argc, argv, "ttq_train"); rc >= 0) return rc;
  o.progress = !quiet;
  o.tensorboard = !no_tensorboard;
  const int rc = ttq::tools::run("ttq_train", [&] {
    if (!config_file.empty()) {
      TTQ_INPUT_CHECK(!o.resume) << "--config and --resume: a resumed run takes its own config.json";
      o = ttq::train::options_from_config(o, config_file,
                                          [&](const std::string& flag) { return app.count(flag) > 0; });
      // Under mpirun the file's (global) batch is kept: --batch is per rank.
      if (app.count("--batch") == 0) o.batch = ttq::train::per_rank_batch(o.batch, "--config " + config_file);
    }
    ttq::train::install_signal_handlers();
    ttq::train::RunResult r;
    try {
      r = ttq::train::run_training(o, std::cerr);
    } catch (const ttq::train::PeerError& e) {  // rank 0 reports it
      return e.code;
    }
    if (r.exit_code == 0 && ttq::dist::world().rank() == 0) {
      std::cout << "done: " << r.epochs_completed << " epochs, best val top1 " << 100.0 * r.best_val_top1
                << "% (epoch " << r.test.best_epoch << "), last val top1 " << 100.0 * r.last.val_top1 << "%";
      if (r.last.ttq) std::cout << ", zeros " << 100.0 * r.last.zero_fraction << "%";
      if (r.test.evaluated) {
        std::cout << "; test top1 " << 100.0 * r.test.top1 << "% top5 " << 100.0 * r.test.top5 << "% ("
                  << r.test.count << " images, best checkpoint)";
      } else {
        std::cout << "; no test split";
      }
      std::cout << "\n";
    }
    return r.exit_code;
  });
  // Under mpirun: an error on this rank ends every rank now (no rank waits for it).
  return ttq::train::end_rank(rc);
}
