// ttq_eval: loss, top-1 and top-5 of a checkpoint on one split of a data set
// (--split val|test|all), per-class top-1 and the confusion matrix. Flags only: the logic is in
// train/trainer.cpp (app/eval.h run_eval), the ranges in train/options.h. Exit codes: 0 success, 2 bad input
// (one line on stderr), 1 internal error.
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
      "Evaluate a ttq checkpoint (full precision or TTQ), a packed 2-bit model or a PyTorch import: loss, "
      "top-1, top-5 and the classes with the lowest top-1 (--json adds per-class top-1 and the confusion "
      "matrix)."};
  namespace L = ttq::train::limits;
  ttq::app::EvalOptions o;
  std::string json_out;
  ttq::tools::Flags f(app);
  f.text("--model", o.model, "Architecture or .onnx file (optional when the file's metadata names it)");
  f.text("--weights", o.weights,
         "Checkpoint, packed 2-bit model or PyTorch import (.safetensors), or an ONNX model (.onnx)")
      ->required();
  f.text("--data", o.data, "fashion-mnist[:DIR] | tiny-imagenet:DIR | folder:DIR | mnist:DIR", o.data);
  f.text("--device", o.device, "cpu, cuda or cuda:N", "cuda when available, else cpu");
  f.integer("--batch", o.batch, L::kEvalBatch, "Batch size", std::to_string(o.batch));
  f.text("--precision", o.precision,
         "Packed files: auto, float (float activations) or int8 (ternary x int8 kernels, CPU only; the file "
         "needs ttq_pack --act-bits 8)",
         "int8 when the file holds activation scales and the device is the CPU, else float");
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
  f.integer("--image-size", o.image_size, L::kImageSize,
            "Resize images to this square before the centre crop", "the file's preprocess metadata");
  f.integer("--crop", o.crop, L::kImageSize, "Centre crop side (the network's input)",
            "the file's, at most --image-size");
  f.text("--mean", o.mean, "Normalisation mean per channel, comma-separated (one number: every channel)",
         "the file's");
  f.text("--std", o.std, "Normalisation standard deviation per channel, like --mean", "the file's");
  f.text("--json", json_out,
         "Also write the result as JSON to this file (replaced atomically): loss, top1, top5, per_class "
         "(name, count, top1) and confusion (counts[true][predicted]; the last column, none, counts images "
         "without a strict top-1: a tied maximum or a non-finite logit)");
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
    std::printf("%s split, images %lld  loss %.4f  top1 %.2f%%  top5 %.2f%%%s\n", o.split.c_str(),
                static_cast<long long>(r.count), r.loss, 100 * r.top1, 100 * r.top5,
                report.precision.empty() ? "" : ("  (packed, " + report.precision + ")").c_str());
    const auto worst = ttq::app::worst_classes(report, 5);
    if (!worst.empty()) {
      std::printf("worst classes (top1):");
      for (const auto& c : worst)
        std::printf("  %s %.2f%% of %lld", c.name.c_str(), 100 * c.top1, static_cast<long long>(c.count));
      std::printf("\n");
    }
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
      if (!report.precision.empty()) j["precision"] = report.precision;
      j["seconds"] = r.seconds;
      nlohmann::json per_class = nlohmann::json::array();
      for (const auto& c : ttq::app::per_class(report))
        per_class.push_back({{"label", c.label}, {"name", c.name}, {"count", c.count}, {"top1", c.top1}});
      j["per_class"] = per_class;
      // counts[true][predicted]; the last column is "none": no strict top-1 (a tie or a non-finite logit).
      nlohmann::json counts = nlohmann::json::array();
      for (int64_t t = 0; t < r.classes; ++t) {
        nlohmann::json row = nlohmann::json::array();
        for (int64_t p = 0; p <= r.classes; ++p) row.push_back(r.confusion_at(t, p));
        counts.push_back(row);
      }
      nlohmann::json predicted = nlohmann::json::array();
      for (const auto& c : ttq::app::per_class(report)) predicted.push_back(c.name);
      nlohmann::json classes = predicted;
      predicted.push_back("none");
      j["confusion"] = {{"classes", classes}, {"predicted", predicted}, {"counts", counts}};
      ttq::io::write_file_atomic(json_out, j.dump(2) + "\n");
    }
    return 0;
  });
}
