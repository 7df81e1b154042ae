// One evaluation pass over a loader (train/evaluate.h).
#include "train/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/ops.h"

namespace ttq::train {

std::vector<int64_t> strict_top1(const Tensor& logits) {
  TTQ_CHECK(logits.dim() == 2) << "strict_top1: logits of " << logits.dim() << " dimensions, not 2";
  const std::vector<double> v = logits.to_vector<double>();
  const int64_t n = logits.size(0), c = logits.size(1);
  std::vector<int64_t> out(static_cast<size_t>(n), -1);
  for (int64_t i = 0; i < n; ++i) {
    const double* row = v.data() + i * c;
    bool finite = true;
    int64_t best = 0, at_best = 0;
    for (int64_t j = 0; j < c; ++j) {
      finite = finite && std::isfinite(row[j]);
      if (j == 0 || row[j] > row[best]) {
        best = j;
        at_best = 1;
      } else if (row[j] == row[best]) {
        ++at_best;
      }
    }
    if (finite && c > 0 && at_best == 1) out[static_cast<size_t>(i)] = best;
  }
  return out;
}

EvalResult evaluate(const Forward& forward, data::Loader& loader, Device device,
                    const std::function<bool()>& stop) {
  autograd::NoGradGuard no_grad;
  const auto t0 = std::chrono::steady_clock::now();
  EvalResult r;
  double loss_sum = 0, c1 = 0, c5 = 0;
  loader.start_epoch(0, 0);
  while (true) {
    if (stop && stop()) {
      r.stopped = true;
      break;
    }
    auto b = loader.next();
    if (!b) break;
    Tensor logits = forward(b->images.to(device));
    Tensor y = b->labels.to(logits.device());
    const int64_t n = b->size();
    loss_sum += ops::cross_entropy(logits, y).item() * static_cast<double>(n);
    c1 += static_cast<double>(ops::topk_correct(logits, y, 1));
    c5 += static_cast<double>(ops::topk_correct(logits, y, std::min<int64_t>(5, logits.size(1))));
    if (r.classes == 0) {
      r.classes = logits.size(1);
      r.confusion.assign(static_cast<size_t>(r.classes * (r.classes + 1)), 0);
    }
    TTQ_CHECK(logits.size(1) == r.classes)
        << "evaluate: the logits' width changed from " << r.classes << " to " << logits.size(1);
    const std::vector<int64_t> pred = strict_top1(logits);
    const std::vector<int64_t> truth = y.to_vector<int64_t>();
    for (size_t i = 0; i < pred.size(); ++i) {
      TTQ_CHECK(truth[i] >= 0 && truth[i] < r.classes)
          << "evaluate: label " << truth[i] << " out of range [0, " << r.classes << ")";
      const int64_t p = pred[i] < 0 ? r.classes : pred[i];
      ++r.confusion[static_cast<size_t>(truth[i] * (r.classes + 1) + p)];
    }
    r.count += n;
  }
  if (r.count > 0) {
    r.loss = loss_sum / r.count;
    r.top1 = c1 / r.count;
    r.top5 = c5 / r.count;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

EvalResult evaluate(nn::Module& model, data::Loader& loader, Device device,
                    const std::function<bool()>& stop) {
  const bool was_training = model.is_training();
  model.eval();
  EvalResult r = evaluate([&](const Tensor& x) { return model(x); }, loader, device, stop);
  model.train(was_training);
  return r;
}

data::LoaderOptions loader_options(int64_t batch, int workers, uint64_t seed, bool training) {
  data::LoaderOptions lo;
  lo.batch_size = batch;
  lo.workers = workers;
  lo.shuffle = training;
  lo.augment = training;
  lo.seed = seed;
  return lo;
}

void check_some_loaded(double loaded, const data::Loader& loader, const std::string& data,
                       const char* split) {
  TTQ_INPUT_CHECK(loaded > 0) << data << ": no readable image in the " << split << " split ("
                              << loader.skipped_in_epoch() << " unreadable skipped)";
}

}  // namespace ttq::train
