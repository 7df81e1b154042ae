// ttq_eval: loss, top-1 and top-5 of a checkpoint on one split of a data set
// (--split val|test|all). Flags only: the logic is in train/trainer.cpp (run_eval).
// Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "engine/process.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  ttq::configure_openmp_wait(argv, ttq::OpenMpWait::ShortSpin);
  CLI::App app{"Evaluate a ttq checkpoint (full precision or TTQ), a packed 2-bit model or a PyTorch import."};
  ttq::train::EvalOptions o;
  std::string json_out;
  app.add_option("--model", o.model, "Architecture (optional when the file's metadata names it)");
  app.add_option("--weights", o.weights, "Checkpoint, packed 2-bit model or PyTorch import (.safetensors)")
      ->required();
  app.add_option("--data", o.data, "fashion-mnist[:DIR] | tiny-imagenet:DIR | folder:DIR | mnist:DIR")
      ->capture_default_str();
  app.add_option("--device", o.device, "cpu, cuda or cuda:N (default: cuda when available, else cpu)");
  app.add_option("--batch", o.batch, "Batch size")->capture_default_str();
  app.add_option("--split", o.split,
                 "val: the validation split as training formed it (held out of the training images when the data "
                 "set has no validation split of its own); test: the test split (fashion-mnist/mnist t10k, "
                 "tiny-imagenet's val/, folder:DIR/test); all: every image of the data set")
      ->capture_default_str();
  app.add_option("--val-size", o.val_size,
                 "Held-out validation size (default: what the weights' metadata records, else 10% of the "
                 "training images, at most 5000)");
  app.add_option("--limit", o.limit, "Evaluate a seeded subset of N images of the split (0: all)")
      ->capture_default_str();
  app.add_option("--workers", o.workers, "Data loader threads")->capture_default_str();
  app.add_option("--json", json_out, "Also write the result as JSON to this file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::cerr << "ttq_eval: " << ttq::printable(e.what()) << " (see --help)\n";
    return 2;
  }
  try {
    const ttq::train::EvalReport report = ttq::train::run_eval(o, std::cerr);
    const ttq::train::EvalResult& r = report.result;
    std::printf("%s split, images %lld  loss %.4f  top1 %.2f%%  top5 %.2f%%\n", o.split.c_str(),
                static_cast<long long>(r.count), r.loss, 100 * r.top1, 100 * r.top5);
    if (!json_out.empty()) {
      nlohmann::json j;
      j["weights"] = o.weights;
      j["data"] = o.data;
      j["split"] = o.split;
      j["split_from"] = report.split;
      j["images"] = r.count;
      j["loss"] = r.loss;
      j["top1"] = r.top1;
      j["top5"] = r.top5;
      j["seconds"] = r.seconds;
      std::ofstream f(json_out);
      f << j.dump(2) << "\n";
      TTQ_INPUT_CHECK(f.good()) << "--json: cannot write " << json_out;
    }
    return 0;
  } catch (const ttq::InputError& e) {
    std::cerr << "ttq_eval: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ttq_eval: internal error: " << ttq::printable(e.what()) << "\n";
    return 1;
  }
}
