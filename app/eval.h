// ttq_eval's library side: a weights file (checkpoint, TTQ checkpoint, plain
// import or packed 2-bit file) evaluated on one split of a data set. The packed
// file runs on the packed kernels, so the deployed artefact is what is measured.
// Tests: tests/test_train_loop.cpp (splits, packed files), tests/test_tool_flags.cpp.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

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
};
struct EvalReport {
  train::EvalResult result;
  std::string split;  // the split evaluated and where it comes from
};
// Loads the weights (a training checkpoint's optimiser state is ignored; a TTQ
// checkpoint runs with its ternary weights) and evaluates them on one split of
// the data: val (as training formed it: the held-out size comes from the
// weights' metadata), test (touch it once, for the final number) or all (every
// image of the data set). A packed 2-bit file (ttq_pack) runs on the packed
// kernels, so the deployed artefact is what is measured.
EvalReport run_eval(const EvalOptions& options, std::ostream& log);

}  // namespace ttq::app
