// One evaluation pass over a loader (train/evaluate.h).
#include "train/evaluate.h"

#include <algorithm>
#include <chrono>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/ops.h"

namespace ttq::train {

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
