// The training loop's progress line: a live line on a terminal, a plain line
// every ~10% of an epoch otherwise (logs, pipes). Tests: tests/test_train_loop.cpp.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

namespace ttq::train {

// "m:ss" or "h:mm:ss"; "?" for a negative or non-finite time.
std::string format_duration(double seconds);

class Progress {
 public:
  Progress(std::ostream& log, bool enabled, bool tty) : m_log(log), m_enabled(enabled), m_tty(tty) {}
  // "<head> [done/total] <rate> img/s, ETA <eta><tail>"
  void update(const std::string& head, int64_t done, int64_t total, double images_per_s, double eta_s,
              const std::string& tail);
  // Clears a live line before other output.
  void finish_line();

 private:
  std::ostream& m_log;
  bool m_enabled, m_tty;
  bool m_dirty = false;
};

}  // namespace ttq::train
