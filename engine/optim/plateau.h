// ReduceLROnPlateau with PyTorch's exact semantics (torch.optim.lr_scheduler),
// acting on every group of an Optimizer, with checkpointable state.
// Implementation: engine/optim/plateau.cpp. Tests: tests/test_optim.cpp (lr sequence
// produced by PyTorch, regenerated with bench/peers/optim_reference.py).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/optim/optimizer.h"

namespace ttq::optim {

enum class PlateauMode { Min, Max };
enum class ThresholdMode { Rel, Abs };

struct PlateauOptions {
  PlateauMode mode = PlateauMode::Min;
  double factor = 0.1;  // requires factor < 1
  int patience = 10;
  double threshold = 1e-4;
  ThresholdMode threshold_mode = ThresholdMode::Rel;
  int cooldown = 0;
  double min_lr = 0;  // every group
  double eps = 1e-8;  // reductions smaller than this are skipped
};

// step(metric), once per epoch:
//   last_epoch += 1
//   if is_better(metric, best): best = metric, num_bad_epochs = 0 else num_bad_epochs += 1
//   if cooldown_counter > 0: cooldown_counter -= 1, num_bad_epochs = 0
//   if num_bad_epochs > patience: for each group new = max(lr * factor, min_lr),
//       applied when lr - new > eps; cooldown_counter = cooldown; num_bad_epochs = 0
// is_better: Max/Abs a > best + threshold, Max/Rel a > best * (1 + threshold),
//            Min/Abs a < best - threshold, Min/Rel a < best * (1 - threshold).
// best starts at -inf (Max) or +inf (Min).
class ReduceLROnPlateau {
 public:
  // The optimizer must outlive the scheduler.
  ReduceLROnPlateau(Optimizer& optimizer, PlateauOptions options);
  // Returns true when at least one group's lr was reduced.
  bool step(double metric);
  bool is_better(double a, double best) const;

  double best() const { return m_best; }
  int num_bad_epochs() const { return m_num_bad_epochs; }
  int cooldown_counter() const { return m_cooldown_counter; }
  int64_t last_epoch() const { return m_last_epoch; }
  const PlateauOptions& options() const { return m_opt; }

  // "best", "num_bad_epochs", "cooldown_counter", "last_epoch". best may be +-inf
  // before the first step (JSON writers must encode it, e.g. as a string).
  std::vector<std::pair<std::string, double>> state_scalars() const;
  // Every key required, none unknown; one ttq::InputError line otherwise, nothing changed.
  void load_state_scalars(const std::map<std::string, double>& state, const std::string& source = "");

 private:
  Optimizer* m_optimizer;
  PlateauOptions m_opt;
  double m_best;
  int m_num_bad_epochs = 0;
  int m_cooldown_counter = 0;
  int64_t m_last_epoch = 0;
};

}  // namespace ttq::optim
