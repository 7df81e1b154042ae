// Numeric flag parsing and range checks (engine/flags.h) and the option ranges
// of ttq_train / ttq_eval as the libraries apply them (train/options.h).
// The tools themselves: tests/test_tool_flags.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/error.h"
#include "engine/flags.h"
#include "train/options.h"
#include "train/trainer.h"

namespace ttq {
namespace {

// The InputError message of `f`, or "" when it does not throw one.
template <class F>
std::string input_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Flags, IntegersAreParsedWholeAndInRange) {
  const IntRange r{1, 4096};
  EXPECT_EQ(parse_int_flag("--batch", "1", r), 1);
  EXPECT_EQ(parse_int_flag("--batch", "4096", r), 4096);
  EXPECT_EQ(parse_int_flag("--x", "-3", IntRange{-5, 5}), -3);
  for (const char* bad :
       {"0", "-1", "-7", "4097", "12abc", "", " 5", "5 ", "+5", "0x10", "1e3", "1.0", "nan",
        "9223372036854775807", "9223372036854775808", "-9223372036854775809", "99999999999999999999999"}) {
    const std::string msg = input_error([&] { parse_int_flag("--batch", bad, r); });
    EXPECT_EQ(msg, std::string("--batch: expected an integer in 1..4096, got '") + bad + "'") << bad;
  }
  EXPECT_EQ(range_text(IntRange{0, std::numeric_limits<int64_t>::max()}), "0 or more");
}

TEST(Flags, SeedsTakeTheWholeUnsignedRange) {
  EXPECT_EQ(parse_uint64_flag("--seed", "0"), 0u);
  EXPECT_EQ(parse_uint64_flag("--seed", "18446744073709551615"), 18446744073709551615ull);
  for (const char* bad : {"-1", "18446744073709551616", "", "1x", "+1", "nan"}) {
    const std::string msg = input_error([&] { parse_uint64_flag("--seed", bad); });
    EXPECT_NE(msg.find("--seed: expected an integer in 0..18446744073709551615"), std::string::npos) << bad;
  }
}

TEST(Flags, RealsAreFiniteDecimalsInRange) {
  const RealRange unit{0, 1, false, true};
  EXPECT_EQ(parse_real_flag("--t", "0", unit), 0.0);
  EXPECT_EQ(parse_real_flag("--t", "0.05", unit), 0.05);
  EXPECT_EQ(parse_real_flag("--t", "5e-2", unit), 0.05);
  EXPECT_EQ(parse_real_flag("--t", "5E-2", unit), 0.05);
  EXPECT_EQ(parse_real_flag("--lr", "1e30", train::limits::kLr), 1e30);
  EXPECT_EQ(parse_real_flag("--x", "-2.5", RealRange{-3, 3}), -2.5);
  for (const char* bad :
       {"1",  "-0.1", "nan", "NaN",   "inf", "-inf", "infinity", "1e999", "-1e999", "0x1p-3",
        "1e", "e5",   "--1", "1.2.3", "",    " 0.1", "0.1 ",     "+0.1",  "0.1abc", "1e-999"}) {
    const std::string msg = input_error([&] { parse_real_flag("--t", bad, unit); });
    EXPECT_EQ(msg, std::string("--t: expected a number in [0, 1), got '") + bad + "'") << bad;
  }
  EXPECT_EQ(input_error([] { parse_real_flag("--lr", "0", train::limits::kLr); }),
            "--lr: expected a number > 0, got '0'");
  EXPECT_EQ(range_text(RealRange{0, 1}), "[0, 1]");
  EXPECT_EQ(range_text(RealRange{0, INFINITY, true}), "> 0");
}

TEST(Flags, ChecksOfValuesSetByCode) {
  EXPECT_EQ(input_error([] {
              check_flag_range("--workers", int64_t{0}, IntRange{1, 64});
            }),
            "--workers: expected an integer in 1..64, got 0");
  EXPECT_EQ(input_error([] {
              check_flag_range("--momentum", NAN, RealRange{0, 1, false, true});
            }),
            "--momentum: expected a number in [0, 1), got nan");
  EXPECT_EQ(input_error([] { check_flag_range("--workers", int64_t{64}, IntRange{1, 64}); }), "");
}

// The library refuses what the tools refuse: a value given is in range, only
// kUnset means "the default".
TEST(Flags, ResolveDefaultsChecksEveryRange) {
  train::TrainOptions base;
  base.out = "/tmp/unused";
  const train::TrainOptions d = train::resolve_defaults(base);
  EXPECT_EQ(d.epochs, 30);
  EXPECT_EQ(d.batch, 128);
  EXPECT_EQ(d.momentum, 0.95);
  EXPECT_EQ(d.schedule, "plateau");
  EXPECT_EQ(d.scales_init, "ones");
  EXPECT_EQ(d.wn_grad, "exact");
  struct Case {
    const char* flag;
    std::function<void(train::TrainOptions&)> set;
  };
  const Case cases[] = {
      {"--epochs", [](auto& o) { o.epochs = -7; }},
      {"--epochs", [](auto& o) { o.epochs = 0; }},
      {"--batch", [](auto& o) { o.batch = -7; }},
      {"--batch", [](auto& o) { o.batch = 9223372036854775807; }},
      {"--lr", [](auto& o) { o.lr = -5; }},
      {"--lr", [](auto& o) { o.lr = NAN; }},
      {"--weight-decay", [](auto& o) { o.weight_decay = NAN; }},
      {"--weight-decay", [](auto& o) { o.weight_decay = -2; }},
      {"--momentum", [](auto& o) { o.momentum = 50; }},
      {"--momentum", [](auto& o) { o.momentum = -2; }},
      {"--t", [](auto& o) { o.t = -2; }},
      {"--dropout", [](auto& o) { o.dropout = -0.5; }},
      {"--workers", [](auto& o) { o.workers = 0; }},
      {"--limit-train", [](auto& o) { o.limit_train = -1; }},
      {"--limit-val", [](auto& o) { o.limit_val = -1; }},
      {"--limit-test", [](auto& o) { o.limit_test = -3; }},
      {"--val-size", [](auto& o) { o.val_size = 0; }},
      {"--eval-batch", [](auto& o) { o.eval_batch = 0; }},
      {"--early-stop-patience", [](auto& o) { o.early_stop_patience = 0; }},
      {"--plateau-patience", [](auto& o) { o.plateau_patience = -1; }},
  };
  for (const Case& c : cases) {
    train::TrainOptions o = base;
    c.set(o);
    const std::string msg = input_error([&] { train::resolve_defaults(o); });
    EXPECT_EQ(msg.rfind(std::string(c.flag) + ": expected", 0), 0u) << c.flag << ": " << msg;
  }
}

}  // namespace
}  // namespace ttq
