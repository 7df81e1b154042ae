// One evaluation pass over a loader (mean loss, top-1 / top-5 by
// ops::topk_correct: ties and non-finite rows count as wrong), shared by the
// training loop's validation and final test and by ttq_eval (app/eval.h).
// Tests: tests/test_train_loop.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

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
  // Top-1 counts per (true class, predicted class): `classes` rows (the logits'
  // width) of classes + 1 columns, row-major. The prediction is the strict argmax
  // of a row; a row whose maximum is tied or that holds a NaN or an infinity has
  // no prediction and counts in the last column ("none"), as ops::topk_correct
  // counts it wrong. The matrix sums to `count`; its trace is top1 * count.
  int64_t classes = 0;
  std::vector<int64_t> confusion;
  int64_t confusion_at(int64_t truth, int64_t predicted) const {
    return confusion[static_cast<size_t>(truth * (classes + 1) + predicted)];
  }
};

// The strict argmax of each row of 2-D logits: the column that scores higher
// than every other, or -1 when the maximum is tied or the row holds a NaN or an
// infinity (the rule of ops::topk_correct with k = 1).
std::vector<int64_t> strict_top1(const Tensor& logits);

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
