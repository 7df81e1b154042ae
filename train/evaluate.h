// One evaluation pass over a loader (mean loss, top-1 / top-5 by
// ops::topk_correct: ties and non-finite rows count as wrong), shared by the
// training loop's validation and final test and by ttq_eval (app/eval.h).
// Tests: tests/test_train_loop.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "data/loader.h"
#include "engine/device.h"
#include "engine/nn/module.h"
#include "engine/tensor.h"

namespace ttq::train {

struct EvalResult {
  double loss = 0, top1 = 0, top5 = 0;
  int64_t count = 0;
  double seconds = 0;
  bool stopped = false;  // `stop` said so before the pass was complete (the numbers are partial)
};

// Images of a batch in, logits out (on any device: the labels follow them).
using Forward = std::function<Tensor(const Tensor&)>;

// Mean loss and top-1 / top-5 accuracy (fractions) over one pass of `loader`
// (images moved to `device` first), without gradients. `stop`, when given, is
// asked before every batch; once it says true the pass ends with `stopped` set.
EvalResult evaluate(const Forward& forward, data::Loader& loader, Device device,
                    const std::function<bool()>& stop = {});
// The same for a model, in eval mode (its training mode is restored after).
EvalResult evaluate(nn::Module& model, data::Loader& loader, Device device,
                    const std::function<bool()>& stop = {});

// Options of a loader over a split: training batches are shuffled and augmented,
// evaluation batches are neither.
data::LoaderOptions loader_options(int64_t batch, int workers, uint64_t seed, bool training);

// An epoch or an evaluation pass that met items but could load none of them is
// an error, not an accuracy: every item of the split was unreadable.
void check_some_loaded(double loaded, const data::Loader& loader, const std::string& data, const char* split);

}  // namespace ttq::train
