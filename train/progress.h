// The training loop's progress line: a live line on a terminal (rewritten in
// place), a plain line every N batches otherwise (logs, pipes; N = ~10% of an
// epoch unless given), with the epoch's ETA and the whole run's.
// Tests: tests/test_progress.cpp.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

namespace ttq::train {

// "m:ss" or "h:mm:ss"; "?" for a negative or non-finite time.
std::string format_duration(double seconds);

// Seconds left in a run: the rest of this epoch's training (`epoch_left_s`),
// its validation, and `epochs_after` more epochs of `epoch_s` each.
double run_eta_seconds(double epoch_left_s, double validation_s, int64_t epochs_after, double epoch_s);

class Progress {
 public:
  // every: batches between two plain lines (0: ~10% of an epoch).
  Progress(std::ostream& log, bool enabled, bool tty, int64_t every = 0)
      : m_log(log), m_enabled(enabled), m_tty(tty), m_every(every) {}
  // "<head> [done/total] <rate> img/s, ETA <eta>[, run ETA <run_eta>]<tail>"
  // (the run's ETA when run_eta_s >= 0).
  void update(const std::string& head, int64_t done, int64_t total, double images_per_s, double eta_s,
              const std::string& tail, double run_eta_s = -1);
  // Clears a live line before other output.
  void finish_line();

 private:
  std::ostream& m_log;
  bool m_enabled, m_tty;
  int64_t m_every;
  bool m_dirty = false;
};

}  // namespace ttq::train
