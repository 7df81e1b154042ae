// ReduceLROnPlateau, PyTorch's semantics. Contract: engine/optim/plateau.h.
// Tests: tests/test_optim.cpp.
#include "engine/optim/plateau.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace ttq::optim {

ReduceLROnPlateau::ReduceLROnPlateau(Optimizer& optimizer, PlateauOptions options)
    : m_optimizer(&optimizer), m_opt(options) {
  TTQ_CHECK(options.factor < 1 && options.factor >= 0)
      << "ReduceLROnPlateau: factor must be in [0, 1), got " << options.factor;
  TTQ_CHECK(options.patience >= 0 && options.cooldown >= 0 && options.min_lr >= 0 && options.eps >= 0)
      << "ReduceLROnPlateau: patience, cooldown, min_lr and eps must be non-negative";
  m_best = m_opt.mode == PlateauMode::Max ? -std::numeric_limits<double>::infinity()
                                          : std::numeric_limits<double>::infinity();
}

bool ReduceLROnPlateau::is_better(double a, double best) const {
  const double t = m_opt.threshold;
  if (m_opt.mode == PlateauMode::Max)
    return m_opt.threshold_mode == ThresholdMode::Abs ? a > best + t : a > best * (1 + t);
  return m_opt.threshold_mode == ThresholdMode::Abs ? a < best - t : a < best * (1 - t);
}

bool ReduceLROnPlateau::step(double metric) {
  ++m_last_epoch;
  if (is_better(metric, m_best)) {
    m_best = metric;
    m_num_bad_epochs = 0;
  } else {
    ++m_num_bad_epochs;
  }
  if (m_cooldown_counter > 0) {
    --m_cooldown_counter;
    m_num_bad_epochs = 0;  // no bad epochs counted during cooldown
  }
  bool reduced = false;
  if (m_num_bad_epochs > m_opt.patience) {
    for (size_t g = 0; g < m_optimizer->num_groups(); ++g) {
      const double old_lr = m_optimizer->lr(g);
      const double new_lr = std::max(old_lr * m_opt.factor, m_opt.min_lr);
      if (old_lr - new_lr > m_opt.eps) {
        m_optimizer->set_lr(g, new_lr);
        reduced = true;
      }
    }
    m_cooldown_counter = m_opt.cooldown;
    m_num_bad_epochs = 0;
  }
  return reduced;
}

std::vector<std::pair<std::string, double>> ReduceLROnPlateau::state_scalars() const {
  return {{"best", m_best},
          {"num_bad_epochs", static_cast<double>(m_num_bad_epochs)},
          {"cooldown_counter", static_cast<double>(m_cooldown_counter)},
          {"last_epoch", static_cast<double>(m_last_epoch)}};
}

void ReduceLROnPlateau::load_state_scalars(const std::map<std::string, double>& state,
                                           const std::string& source) {
  std::vector<std::string> errors;
  auto count = [&](const char* key) -> double {
    auto it = state.find(key);
    if (it == state.end()) {
      errors.push_back(std::string("missing ") + key);
      return 0;
    }
    const double v = it->second;
    if (!(v >= 0 && v == std::floor(v) && v < 2.0e9)) errors.push_back(std::string(key) + " is not a count");
    return v;
  };
  const double bad = count("num_bad_epochs");
  const double cool = count("cooldown_counter");
  const double epoch = count("last_epoch");
  auto best = state.find("best");
  if (best == state.end())
    errors.push_back("missing best");
  else if (std::isnan(best->second))
    errors.push_back("best is NaN");
  for (const auto& [key, v] : state)
    if (key != "best" && key != "num_bad_epochs" && key != "cooldown_counter" && key != "last_epoch")
      errors.push_back("unexpected '" + key + "'");
  if (!errors.empty()) {
    std::ostringstream os;
    os << (source.empty() ? "ReduceLROnPlateau state" : source) << ": ";
    for (size_t i = 0; i < errors.size(); ++i) os << (i ? "; " : "") << errors[i];
    TTQ_INPUT_ERROR() << os.str();
  }
  m_best = best->second;
  m_num_bad_epochs = static_cast<int>(bad);
  m_cooldown_counter = static_cast<int>(cool);
  m_last_epoch = static_cast<int64_t>(epoch);
}

}  // namespace ttq::optim
