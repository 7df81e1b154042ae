// The lines of metrics.jsonl and of the log (train/trainer.h).
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "train/trainer.h"

namespace ttq::train {

// JSON through nlohmann::json throughout: a non-finite number becomes null, so
// every line stays valid JSON whatever the values.
std::string EpochMetrics::json() const {
  nlohmann::ordered_json j;
  j["epoch"] = epoch;
  j["train_loss"] = train_loss;
  j["train_top1"] = train_top1;
  j["val_loss"] = val_loss;
  j["val_top1"] = val_top1;
  j["val_top5"] = val_top5;
  j["lr"] = lr;
  j["seconds"] = seconds;
  j["images_per_second"] = images_per_second;
  if (ttq) {
    j["zero_fraction"] = zero_fraction;
    j["mean_wp"] = mean_wp;
    j["mean_wn"] = mean_wn;
  }
  j["skipped"] = skipped;
  return j.dump();
}

std::string TestMetrics::json() const {
  nlohmann::ordered_json j;
  j["final"] = true;
  j["best_epoch"] = best_epoch;
  j["best_val_top1"] = best_val_top1;
  if (evaluated) {
    j["test_loss"] = loss;
    j["test_top1"] = top1;
    j["test_top5"] = top5;
    j["test_images"] = count;
  } else {
    j["test_loss"] = nullptr;
    j["test_top1"] = nullptr;
    j["test_top5"] = nullptr;
    j["test_images"] = 0;
  }
  j["test_from"] = from;
  return j.dump();
}

std::string EpochMetrics::line(int64_t epochs, bool best) const {
  std::ostringstream os;
  os << std::fixed << "epoch " << epoch << "/" << epochs << ": train loss " << std::setprecision(4)
     << train_loss << " top1 " << std::setprecision(2) << 100 * train_top1 << "% | val loss "
     << std::setprecision(4) << val_loss << " top1 " << std::setprecision(2) << 100 * val_top1 << "% top5 "
     << 100 * val_top5 << "% | lr " << std::defaultfloat << lr << " | " << std::fixed << std::setprecision(1)
     << images_per_second << " img/s, " << seconds << " s";
  if (ttq) os << " | zeros " << std::setprecision(1) << 100 * zero_fraction << "%";
  if (skipped) os << " | " << skipped << " images skipped";
  if (best) os << " (best)";
  return os.str();
}

}  // namespace ttq::train
