// Every numeric flag of every tool against bad values (0 or negatives where
// they are out of range, huge, overflowing, nan, inf, text, empty): one line on
// stderr naming the flag and its range, exit code 2, never "internal error",
// nothing written. Text flags given an empty value likewise. --help states the
// ranges. Set TTQ_TOOLS_DIR to run these against another build's tools.
// Tools: tools/*.cpp; parsing: engine/flags.cpp, tools/flags.h.
#include <unistd.h>

#include <filesystem>
#include <map>

#include "data/image.h"
#include "tests/test_util.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

struct BadFlag {
  std::string flag;
  std::vector<std::string> values;
};

// Values no numeric flag of the tools accepts: a few per flag here; every
// kind of malformed text is in tests/test_flags.cpp, and on --batch and --lr below.
const std::vector<std::string> kNeverValid = {"-1", "9223372036854775808", "nan", "12abc", ""};
const std::vector<std::string> kMalformed = {
    "-7", "99999999999999999999", "inf", "-inf", "1e999", " 5", "5 ", "0x10", "+5", "1e-999"};

std::vector<std::string> with(std::vector<std::string> extra) {
  std::vector<std::string> v = kNeverValid;
  v.insert(v.end(), extra.begin(), extra.end());
  return v;
}

class ToolFlags : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    s_dir = (fs::temp_directory_path() / ("ttq_tool_flags_" + std::to_string(getpid()))).string();
    fs::remove_all(s_dir);
    test::make_tiny_idx(s_dir + "/data", 48, 24);
  }
  // A checkpoint and an image for ttq_eval and ttq_infer to succeed on.
  static void make_checkpoint() {
    train::TrainOptions o;
    o.data = "mnist:" + s_dir + "/data";
    o.out = s_dir + "/run";
    o.device = "cpu";
    o.epochs = 1;
    o.batch = 16;
    o.limit_train = 16;
    o.progress = false;
    std::ostringstream log;
    train::run_training(o, log);
    data::Image img;
    img.width = img.height = 28;
    img.channels = 1;
    img.pixels.assign(28 * 28, 128);
    data::save_image(s_dir + "/x.png", img);
  }
  static void TearDownTestSuite() { fs::remove_all(s_dir); }

  // Runs `tool` with `base` (flag -> value) minus `flag`, plus `flag value`,
  // and expects one line naming the flag, exit code 2 and no new files.
  void expect_refused(const std::string& tool, const std::map<std::string, std::string>& base,
                      const std::string& flag, const std::string& value, const std::string& says,
                      const std::vector<std::string>& positional = {}) {
    const std::string out = s_dir + "/out_" + std::to_string(m_count++);
    std::vector<std::string> argv = {test::tool_path(tool)};
    for (const auto& [k, v] : base) {
      if (k == flag) continue;
      argv.push_back(k);
      if (!v.empty()) argv.push_back(v == "OUT" ? out : v);  // "": a switch such as --summary
    }
    argv.push_back(flag);
    argv.push_back(value);
    for (const auto& p : positional) argv.push_back(p);
    test::RunLimits limits;
    limits.timeout_s = 60;
    const test::ToolRun r = test::run_argv(argv, limits);
    const std::string what = tool + " " + flag + " '" + value + "'";
    EXPECT_EQ(r.code, 2) << what << "\n" << r.err;
    EXPECT_EQ(test::count_lines(r.err), 1) << what << "\n" << r.err;
    EXPECT_EQ(r.err.rfind(tool + ": " + flag + ": " + says, 0), 0u) << what << "\n" << r.err;
    EXPECT_EQ(r.err.find("internal error"), std::string::npos) << what << "\n" << r.err;
    EXPECT_FALSE(fs::exists(out)) << what << ": wrote " << out;
  }

  void check_all(const std::string& tool, const std::map<std::string, std::string>& base,
                 const std::vector<BadFlag>& cases, const std::vector<std::string>& positional = {}) {
    for (const BadFlag& c : cases)
      for (const std::string& v : c.values) expect_refused(tool, base, c.flag, v, "expected", positional);
  }

  std::map<std::string, std::string> train_base() const {
    return {{"--data", "mnist:" + s_dir + "/data"},
            {"--out", "OUT"},
            {"--device", "cpu"},
            {"--epochs", "1"},
            {"--batch", "16"},
            {"--limit-train", "16"},
            {"--limit-val", "16"},
            {"--quiet", ""}};
  }

  static std::string s_dir;
  int m_count = 0;
};
std::string ToolFlags::s_dir;

TEST_F(ToolFlags, TrainIntegers) {
  std::vector<std::string> batch = with({"0", "4097", "9223372036854775807"});
  batch.insert(batch.end(), kMalformed.begin(), kMalformed.end());
  check_all("ttq_train", train_base(),
            {{"--epochs", with({"0", "100001"})},
             {"--batch", batch},
             {"--seed", {"-1", "18446744073709551616", "nan", "1e3", "12abc", ""}},
             {"--workers", with({"0", "65", "4294967297"})},
             {"--limit-train", with({"0", "1000000001"})},
             {"--limit-val", with({"0", "1000000001"})},
             {"--limit-test", with({"0", "1000000001"})},
             {"--val-size", with({"0", "1000000001"})},
             {"--eval-batch", with({"0", "4097"})},
             {"--early-stop-patience", with({"0", "100001", "4294967296"})},
             {"--plateau-patience", with({"100001", "4294967296"})},
             {"--channels", with({"0", "2", "4"})},
             {"--image-size", with({"0", "2049"})},
             {"--crop", with({"0", "2049"})},
             {"--log-every", with({"0"})}});
}

TEST_F(ToolFlags, TrainPipelineTexts) {
  check_all("ttq_train", train_base(),
            {{"--augment", {"spin", "flip"}},
             {"--mean", {"x", "0.1,0.2", "nan", "auto,1"}},
             {"--std", {"0", "-1", "inf", "0.1,0.2,0.3"}}});
}

TEST_F(ToolFlags, TrainReals) {
  // No upper bound on --lr: a huge rate is a diverged loss, exit code 2, in the loop.
  std::vector<std::string> lr = {"0", "-5", "-1", "nan", "12abc", ""};
  for (const std::string& v : kMalformed)
    if (v != "99999999999999999999") lr.push_back(v);  // a valid (if absurd) rate
  check_all("ttq_train", train_base(),
            {{"--lr", lr},
             {"--weight-decay", with({"1.5"})},
             {"--momentum", with({"1", "50"})},
             {"--t", with({"1"})},
             {"--dropout", with({"1"})}});
}

TEST_F(ToolFlags, TrainTexts) {
  for (const char* flag : {"--model", "--data", "--phase", "--init", "--out", "--device", "--scales-init",
                           "--wn-grad", "--schedule"})
    expect_refused("ttq_train", train_base(), flag, "", "empty value");
}

TEST_F(ToolFlags, EvalNumbersAndTexts) {
  make_checkpoint();
  const std::map<std::string, std::string> base = {{"--weights", s_dir + "/run/last.safetensors"},
                                                   {"--data", "mnist:" + s_dir + "/data"},
                                                   {"--device", "cpu"},
                                                   {"--json", "OUT"}};
  // The base command works.
  const test::ToolRun ok = test::run_argv({test::tool_path("ttq_eval"), "--weights", base.at("--weights"),
                                           "--data", base.at("--data"), "--device", "cpu"});
  ASSERT_EQ(ok.code, 0) << ok.err;
  check_all("ttq_eval", base,
            {{"--batch", with({"0", "4097"})},
             {"--limit", with({"0", "1000000001"})},
             {"--val-size", with({"0", "1000000001"})},
             {"--workers", with({"0", "65"})}});
  for (const char* flag : {"--model", "--weights", "--data", "--device", "--split", "--json"})
    expect_refused("ttq_eval", base, flag, "", "empty value");
  // Without --device: no "running on the CPU" line before the error either.
  const test::ToolRun r = test::run_argv({test::tool_path("ttq_eval"), "--weights", base.at("--weights"),
                                          "--data", "mnist:" + s_dir + "/no_such_data"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
}

TEST_F(ToolFlags, InferNumbersAndTexts) {
  make_checkpoint();
  const std::string weights = s_dir + "/run/last.safetensors";
  const test::ToolRun ok =
      test::run_argv({test::tool_path("ttq_infer"), "--model", weights, "--device", "cpu", s_dir + "/x.png"});
  ASSERT_EQ(ok.code, 0) << ok.err;
  check_all("ttq_infer", {{"--model", weights}, {"--device", "cpu"}},
            {{"--top-k", with({"0", "1001"})}, {"--batch", with({"0", "4097"})}}, {s_dir + "/x.png"});
  check_all("ttq_infer", {{"--summary", ""}, {"--arch", "small_densenet"}},
            {{"--classes", with({"0", "100001", "9223372036854775807"})}});
  for (const char* flag : {"--model", "--arch", "--device", "--input-tensors", "--input-name", "--logits-out",
                           "--data", "--input", "--files-from"})
    expect_refused("ttq_infer", {{"--model", weights}, {"--device", "cpu"}}, flag, "", "empty value",
                   {s_dir + "/x.png"});
  // Image-mode flags elsewhere are refused, not ignored.
  for (const char* flag : {"--json", "--skip-bad"}) {
    const test::ToolRun r =
        test::run_argv({test::tool_path("ttq_infer"), "--summary", "--arch", "small_densenet", flag});
    EXPECT_EQ(r.code, 2) << flag << "\n" << r.err;
    EXPECT_EQ(r.err,
              std::string("ttq_infer: ") + flag + " is for image mode (image files or --files-from)\n");
  }
  // --input's sides: a huge input used to end in std::bad_alloc (exit 1).
  for (const char* v : {"3x100000x100000", "1048576x56x56", "3x56x2000"}) {
    const test::ToolRun r =
        test::run_argv({test::tool_path("ttq_infer"), "--summary", "--arch", "densenet121", "--input", v});
    EXPECT_EQ(r.code, 2) << v << "\n" << r.err;
    EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
    EXPECT_EQ(r.err.rfind("ttq_infer: --input ", 0), 0u) << r.err;
  }
}

TEST_F(ToolFlags, PackTexts) {
  const std::map<std::string, std::string> base = {
      {"--in", test::seed_dir() + "/small_densenet_ttq.safetensors"}, {"--out", "OUT"}};
  for (const char* flag : {"--in", "--out", "--arch", "--calibrate", "--calib-method"})
    expect_refused("ttq_pack", base, flag, "", "empty value");
  // The int8 flags' numbers (with a calibration that would otherwise run).
  std::map<std::string, std::string> int8 = base;
  int8["--act-bits"] = "8";
  int8["--calibrate"] = "mnist:" + s_dir + "/data";
  check_all("ttq_pack", int8, {{"--act-bits", with({"9", "256"})}, {"--calib-images", with({"0"})}});
}

TEST_F(ToolFlags, HelpStatesRangesAndDefaults) {
  const test::ToolRun t = test::run_argv({test::tool_path("ttq_train"), "--help"});
  EXPECT_EQ(t.code, 0);
  for (const char* s :
       {"--epochs INT", "(1..100000; default fp 30, ttq 20)", "(1..4096; default fp 128, ttq 512)",
        "--lr FLOAT", "(> 0; default fp 0.1", "--momentum FLOAT", "([0, 1); default 0.95)",
        "(1..64; default 2)", "(1..4096; default 256)", "--overwrite", "--limit-train INT"})
    EXPECT_NE(t.out.find(s), std::string::npos) << s << "\n" << t.out;
  const test::ToolRun e = test::run_argv({test::tool_path("ttq_eval"), "--help"});
  EXPECT_NE(e.out.find("(1..4096; default 256)"), std::string::npos) << e.out;
  const test::ToolRun i = test::run_argv({test::tool_path("ttq_infer"), "--help"});
  EXPECT_NE(i.out.find("(1..1000; default 5)"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("--batch INT"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("(1..4096; default 32)"), std::string::npos) << i.out;
}

}  // namespace
}  // namespace ttq
