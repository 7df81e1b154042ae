// ttq_train: trains a model in full precision (--phase fp) or quantizes a
// full-precision checkpoint with TTQ (--phase ttq). Flags only: the loop is in
// train/trainer.cpp. Exit codes: 0 done, 2 bad input or a diverged loss,
// 130 / 143 stopped by SIGINT / SIGTERM (last.safetensors written), 1 internal error.
#include <CLI/CLI.hpp>
#include <iostream>

#include "engine/process.h"
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
      "Unset numeric flags take the seed project's defaults for the model and phase."};
  ttq::train::TrainOptions o;
  bool quiet = false;
  app.add_option("--model", o.model, "small_densenet | squeezenet | densenet121")->capture_default_str();
  app.add_option("--data", o.data, "fashion-mnist[:DIR] | tiny-imagenet:DIR | folder:DIR | mnist:DIR")
      ->capture_default_str();
  app.add_option("--phase", o.phase, "fp (full precision) or ttq")->capture_default_str();
  app.add_option("--init", o.init, "Checkpoint to start from (required for --phase ttq)");
  app.add_option("--out", o.out, "Run folder (created)")->required();
  app.add_option("--device", o.device, "cpu, cuda or cuda:N (default: cuda when available, else cpu)");
  app.add_option("--epochs", o.epochs, "Epochs (default: fp 30, ttq 20)");
  app.add_option("--batch", o.batch, "Batch size (default: fp 128, ttq 512)");
  app.add_option("--lr", o.lr, "Learning rate (default: fp 0.1 / SqueezeNet 0.04; ttq 1e-3 / SqueezeNet 1e-4)");
  app.add_option("--weight-decay", o.weight_decay,
                 "L2 decay (default: fp 1e-4 / SqueezeNet 3e-4 on conv and classifier weights; ttq 1e-4 on "
                 "the classifier weight)");
  app.add_option("--momentum", o.momentum, "fp: Nesterov momentum")->capture_default_str();
  app.add_option("--t", o.t, "ttq: threshold factor, delta = t * max|W| (default 0.05, SqueezeNet 0.15)");
  app.add_option("--dropout", o.dropout,
                 "Drop probability of every dropout (default: the architecture's, 0.25 / SqueezeNet 0.6)");
  app.add_option("--scales-init", o.scales_init, "ttq: initial Wp, Wn: ones (the seed) or mean")
      ->capture_default_str();
  app.add_option("--wn-grad", o.wn_grad, "ttq: dL/dWn sign: exact (-sum_N G) or seed (+sum_N G)")
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Random seed (init, data order, augmentation, dropout)")->capture_default_str();
  app.add_option("--workers", o.workers, "Data loader threads")->capture_default_str();
  app.add_option("--limit-train", o.limit_train, "Use N training images (0: all)")->capture_default_str();
  app.add_option("--limit-val", o.limit_val, "Use N validation images (0: all)")->capture_default_str();
  app.add_option("--limit-test", o.limit_test, "Test the final model on N test images (0: all)")
      ->capture_default_str();
  app.add_option("--val-size", o.val_size,
                 "Images held out of the training images for validation when the data set has no validation "
                 "split of its own (fashion-mnist, mnist, tiny-imagenet, folder:DIR without DIR/val); stratified "
                 "by class, seeded, the same in every run (default: 10% of the training images, at most 5000)");
  app.add_option("--eval-batch", o.eval_batch, "Validation batch size")->capture_default_str();
  app.add_option("--early-stop-patience", o.early_stop_patience,
                 "Stop when val top-1 has not beaten the 5-epoch mean of N epochs earlier by 0.01")
      ->capture_default_str();
  app.add_option("--plateau-patience", o.plateau_patience, "ReduceLROnPlateau patience")->capture_default_str();
  app.add_option("--schedule", o.schedule,
                 "Learning-rate schedule: plateau (the seed's ReduceLROnPlateau) or cosine (to 0 over --epochs)")
      ->capture_default_str();
  app.add_flag("--resume", o.resume, "Continue the run in --out from last.safetensors");
  app.add_flag("--quiet", quiet, "No progress lines, only one line per epoch");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "ttq_train: " << ttq::printable(e.what()) << " (see --help)\n";
    return 2;
  }
  o.progress = !quiet;
  try {
    ttq::train::install_signal_handlers();
    ttq::train::RunResult r = ttq::train::run_training(o, std::cerr);
    if (r.exit_code == 0) {
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
  } catch (const ttq::InputError& e) {
    std::cerr << "ttq_train: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ttq_train: internal error: " << ttq::printable(e.what()) << "\n";
    return 1;
  }
}
