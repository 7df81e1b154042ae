// The seed's optimisers and schedules (docs/ttq.md, "Training"): Nesterov SGD
// with weight decay on conv and classifier weights (full precision), Adam over
// the TTQ groups (models/ttq.h), ReduceLROnPlateau on val top-1 or a per-epoch
// cosine schedule, and the seed's early stop. Tests: tests/test_train_loop.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/optim/optimizer.h"
#include "engine/optim/plateau.h"
#include "models/model.h"
#include "models/ttq.h"
#include "train/trainer.h"

namespace ttq::train {

// The optimiser of the phase: `ttq` is used in the TTQ phase only.
std::unique_ptr<optim::Optimizer> make_optimizer(const TrainOptions& o, models::Model& model,
                                                 models::TtqModel& ttq);

// The seed's plateau schedule: factor 0.1 after --plateau-patience epochs
// without an absolute gain of 0.01 in val top-1.
std::unique_ptr<optim::ReduceLROnPlateau> make_plateau(const TrainOptions& o, optim::Optimizer& opt);

// --schedule cosine: every group's lr for the epoch (0-based) about to start,
// from --lr down to 0 over --epochs. The plateau schedule changes nothing here.
void set_epoch_lr(const TrainOptions& o, int64_t epoch, optim::Optimizer& opt);

// The seed's early stop: with more than patience + 4 epochs, stop when the last
// top-1 does not beat the mean of the 5 epochs ending `patience` epochs ago by
// `threshold`.
bool early_stop(const std::vector<double>& acc, int patience, double threshold);

}  // namespace ttq::train
