// ttq_eval's library side: a weights file (checkpoint, TTQ checkpoint, plain
// import or packed 2-bit file) evaluated on one split of a data set. The packed
// file runs on the packed kernels, so the deployed artefact is what is measured.
// Tests: tests/test_train_loop.cpp (splits, packed files), tests/test_tool_flags.cpp.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "train/evaluate.h"

namespace ttq::app {

struct EvalOptions {
  std::string model;    // architecture; optional when the file's metadata names it
  std::string weights;  // checkpoint, TTQ checkpoint or plain import (safetensors)
  std::string data = "fashion-mnist";
  std::string split = "val";  // val | test | all
  // Held-out validation size (-1: what the weights' metadata records, else the default).
  int64_t val_size = -1;
  std::string device;
  int64_t batch = 256;
  int64_t limit = 0;  // evaluate a seeded subset of this many images (0: the whole split)
  int workers = 2;
  uint64_t seed = 0;  // for --limit's subset
  // Overrides of the file's preprocessing (0 / "": the file's; data/pipeline.h).
  int64_t image_size = 0, crop = 0;
  std::string mean, std;  // comma-separated numbers, one per channel (one: every channel)
  // Packed files: "auto" (or ""), "float" or "int8" (models::Precision; int8 needs
  // activation scales, ttq_pack --act-bits 8).
  std::string precision;
};
struct EvalReport {
  train::EvalResult result;
  std::string split;                     // the split evaluated and where it comes from
  std::vector<std::string> class_names;  // the data set's, in label order (result.confusion's rows)
  std::string precision;                 // a packed file's: "float" or "int8" ("" otherwise)
};
// Top-1 of one class: of the `count` images whose true class it is, the
// fraction whose strict top-1 prediction is that class (0 when count is 0).
struct ClassAccuracy {
  int64_t label = 0;
  std::string name;
  int64_t count = 0;
  double top1 = 0;
};
// Every class in label order, from the report's confusion matrix.
std::vector<ClassAccuracy> per_class(const EvalReport& report);
// The `n` classes with images that have the lowest top-1 (ties: lower label first).
std::vector<ClassAccuracy> worst_classes(const EvalReport& report, size_t n);
// Loads the weights (a training checkpoint's optimiser state is ignored; a TTQ
// checkpoint runs with its ternary weights) and evaluates them on one split of
// the data: val (as training formed it: the held-out size comes from the
// weights' metadata), test (touch it once, for the final number) or all (every
// image of the data set). A packed 2-bit file (ttq_pack) runs on the packed
// kernels, so the deployed artefact is what is measured.
EvalReport run_eval(const EvalOptions& options, std::ostream& log);

}  // namespace ttq::app
