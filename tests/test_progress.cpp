// The training loop's progress line (train/progress.h): rewritten in place on a
// terminal, one plain line every N batches in a log, the epoch's and the whole
// run's ETA.
#include <gtest/gtest.h>

#include <random>
#include <sstream>

#include "tests/test_util.h"
#include "train/progress.h"

namespace ttq::train {
namespace {

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(Progress, LogFileGetsOneLinePerNBatches) {
  const int64_t every = 2 + static_cast<int64_t>(std::random_device{}() % 4);  // 2..5
  const int64_t total = 17;
  std::ostringstream log;
  Progress p(log, true, /*tty=*/false, every);
  for (int64_t done = 1; done <= total; ++done) p.update("epoch 1/2", done, total, 10.0, 1.0, "", 100.0);
  // Lines at every multiple of N and at the last batch, none rewritten.
  const int64_t want = total / every + (total % every != 0 ? 1 : 0);
  EXPECT_EQ(test::count_lines(log.str()), want) << log.str();
  EXPECT_EQ(count(log.str(), "\r"), 0);
  std::ostringstream first;
  first << "[" << every << "/17]";
  EXPECT_NE(log.str().find(first.str()), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("[17/17]"), std::string::npos);
  // Without N: about a tenth of the epoch.
  std::ostringstream tenth;
  Progress q(tenth, true, false);
  for (int64_t done = 1; done <= 100; ++done) q.update("e", done, 100, 1.0, 1.0, "");
  EXPECT_EQ(test::count_lines(tenth.str()), 10);
}

TEST(Progress, TerminalLineIsRewrittenInPlace) {
  std::ostringstream tty;
  Progress p(tty, true, /*tty=*/true, 1);
  p.update("epoch 1/3", 1, 4, 12.5, 30.0, ", loss 1.0", 3725.0);
  p.update("epoch 1/3", 2, 4, 12.5, 20.0, ", loss 0.9", 3700.0);
  EXPECT_EQ(count(tty.str(), "\n"), 0);
  EXPECT_EQ(count(tty.str(), "\r\033[K"), 2);
  EXPECT_NE(tty.str().find("epoch 1/3 [2/4] 12.5 img/s, ETA 0:20, run ETA 1:01:40, loss 0.9"),
            std::string::npos)
      << tty.str();
  p.finish_line();
  EXPECT_EQ(count(tty.str(), "\r\033[K"), 3);
  // Disabled (--quiet): nothing.
  std::ostringstream quiet;
  Progress off(quiet, false, true);
  off.update("e", 1, 2, 1.0, 1.0, "");
  EXPECT_TRUE(quiet.str().empty());
}

TEST(Progress, RunEtaCountsTheEpochsLeft) {
  std::mt19937 rng(std::random_device{}());
  const double left = rng() % 100, val = rng() % 10, epoch = 50 + rng() % 100;
  const int64_t after = rng() % 7;
  EXPECT_DOUBLE_EQ(run_eta_seconds(left, val, after, epoch), left + val + after * epoch);
  EXPECT_DOUBLE_EQ(run_eta_seconds(left, val, -1, epoch), left + val);  // the last epoch
  EXPECT_EQ(format_duration(59.6), "1:00");
  EXPECT_EQ(format_duration(3725), "1:02:05");
  EXPECT_EQ(format_duration(-1), "?");
}

}  // namespace
}  // namespace ttq::train
