// ttq_eval: loss, top-1 and top-5 of a checkpoint on one split of a data set
// (--split val|test|all). Flags only: the logic is in train/trainer.cpp
// (app/eval.h run_eval), the ranges in train/options.h.
// Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "app/eval.h"
#include "engine/io/write_file.h"
#include "engine/process.h"
#include "tools/flags.h"
#include "train/options.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  ttq::configure_openmp_wait(argv, ttq::OpenMpWait::ShortSpin);
  CLI::App app{
      "Evaluate a ttq checkpoint (full precision or TTQ), a packed 2-bit model or a PyTorch import."};
  namespace L = ttq::train::limits;
  ttq::app::EvalOptions o;
  std::string json_out;
  ttq::tools::Flags f(app);
  f.text("--model", o.model, "Architecture (optional when the file's metadata names it)");
  f.text("--weights", o.weights, "Checkpoint, packed 2-bit model or PyTorch import (.safetensors)")
      ->required();
  f.text("--data", o.data, "fashion-mnist[:DIR] | tiny-imagenet:DIR | folder:DIR | mnist:DIR", o.data);
  f.text("--device", o.device, "cpu, cuda or cuda:N", "cuda when available, else cpu");
  f.integer("--batch", o.batch, L::kEvalBatch, "Batch size", std::to_string(o.batch));
  f.text(
      "--split", o.split,
      "val: the validation split as training formed it (held out of the training images when the data set "
      "has no validation split of its own); test: the test split (fashion-mnist/mnist t10k, tiny-imagenet's "
      "val/, folder:DIR/test); all: every image of the data set",
      o.split);
  f.integer("--val-size", o.val_size, L::kValSize, "Held-out validation size, fewer than the training images",
            "what the weights' metadata records, else 10% of the training images, at most 5000");
  f.integer("--limit", o.limit, L::kLimit, "Evaluate a seeded subset of N images of the split", "all");
  f.integer("--workers", o.workers, L::kWorkers, "Data loader threads", std::to_string(o.workers));
  f.text("--json", json_out, "Also write the result as JSON to this file (replaced atomically)");
  if (int rc = ttq::tools::parse(app, f, argc, argv, "ttq_eval"); rc >= 0) return rc;
  return ttq::tools::run("ttq_eval", [&] {
    if (!json_out.empty()) {
      // Checked before the evaluation, which may take long.
      TTQ_INPUT_CHECK(!ttq::io::same_file(json_out, o.weights))
          << "--json " << json_out << " is the --weights file; write the report to another file";
      const std::filesystem::path dir = std::filesystem::absolute(json_out).parent_path();
      TTQ_INPUT_CHECK(std::filesystem::is_directory(dir))
          << "--json " << json_out << ": no folder " << dir.string();
      TTQ_INPUT_CHECK(!std::filesystem::is_directory(json_out)) << "--json " << json_out << ": is a folder";
    }
    const ttq::app::EvalReport report = ttq::app::run_eval(o, std::cerr);
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
      ttq::io::write_file_atomic(json_out, j.dump(2) + "\n");
    }
    return 0;
  });
}
