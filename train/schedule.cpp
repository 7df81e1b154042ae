// The seed's optimisers and schedules (train/schedule.h).
#include "train/schedule.h"

#include <cmath>

namespace ttq::train {

std::unique_ptr<optim::Optimizer> make_optimizer(const TrainOptions& o, models::Model& model,
                                                 models::TtqModel& ttq) {
  if (o.phase == "ttq") return models::make_ttq_optimizer(model, ttq, o.lr, o.weight_decay);
  // Nesterov SGD; weight decay on conv and classifier weights only.
  std::vector<Tensor> decay, no_decay;
  for (auto& [name, t] : model.named_parameters()) {
    if (!t->requires_grad()) continue;
    const bool is_weight = name.size() >= 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
    (is_weight && t->dim() >= 2 ? decay : no_decay).push_back(*t);
  }
  optim::SGDOptions so;
  so.lr = o.lr;
  so.momentum = o.momentum;
  so.nesterov = o.momentum > 0;
  auto sgd = std::make_unique<optim::SGD>(so);
  sgd->add_param_group(decay).weight_decay = o.weight_decay;
  if (!no_decay.empty()) sgd->add_param_group(no_decay).weight_decay = 0;
  return sgd;
}

std::unique_ptr<optim::ReduceLROnPlateau> make_plateau(const TrainOptions& o, optim::Optimizer& opt) {
  optim::PlateauOptions po;
  po.mode = optim::PlateauMode::Max;
  po.factor = 0.1;
  po.patience = o.plateau_patience;
  po.threshold = 0.01;
  po.threshold_mode = optim::ThresholdMode::Abs;
  return std::make_unique<optim::ReduceLROnPlateau>(opt, po);
}

void set_epoch_lr(const TrainOptions& o, int64_t epoch, optim::Optimizer& opt) {
  if (o.schedule != "cosine") return;
  const double lr =
      o.lr * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(epoch) / static_cast<double>(o.epochs)));
  for (size_t g = 0; g < opt.num_groups(); ++g) opt.set_lr(g, lr);
}

bool early_stop(const std::vector<double>& acc, int patience, double threshold) {
  const int64_t n = static_cast<int64_t>(acc.size());
  if (n <= patience + 4) return false;
  double avg = 0;
  for (int k = patience; k <= patience + 4; ++k) avg += acc[n - k];
  avg /= 5.0;
  return acc[n - 1] < avg + threshold;
}

}  // namespace ttq::train
