// The training loop's progress line (train/progress.h).
#include "train/progress.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

namespace ttq::train {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  std::ostringstream os;
  if (t >= 3600)
    os << t / 3600 << ":" << std::setw(2) << std::setfill('0') << (t / 60) % 60;
  else
    os << t / 60;
  os << ":" << std::setw(2) << std::setfill('0') << t % 60;
  return os.str();
}

double run_eta_seconds(double epoch_left_s, double validation_s, int64_t epochs_after, double epoch_s) {
  return epoch_left_s + validation_s + static_cast<double>(std::max<int64_t>(0, epochs_after)) * epoch_s;
}

void Progress::update(const std::string& head, int64_t done, int64_t total, double images_per_s, double eta_s,
                      const std::string& tail, double run_eta_s) {
  if (!m_enabled) return;
  std::ostringstream os;
  os << head << " [" << done << "/" << total << "] " << std::fixed << std::setprecision(1) << images_per_s
     << " img/s, ETA " << format_duration(eta_s);
  if (run_eta_s >= 0) os << ", run ETA " << format_duration(run_eta_s);
  os << tail;
  if (m_tty) {
    m_log << "\r\033[K" << os.str() << std::flush;
    m_dirty = true;
  } else {
    const int64_t step = m_every > 0 ? m_every : std::max<int64_t>(1, total / 10);
    if (done % step == 0 || done == total) m_log << os.str() << "\n" << std::flush;
  }
}

void Progress::finish_line() {
  if (m_dirty) m_log << "\r\033[K" << std::flush;
  m_dirty = false;
}

}  // namespace ttq::train
