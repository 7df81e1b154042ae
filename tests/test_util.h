// Shared test helpers: seeded random tensors, normalised-error comparisons,
// device lists for device-parameterised tests, output poisoning, the seed
// fixtures' folder and the runner for the built tools.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/cuda/runtime.h"
#include "engine/tensor.h"

namespace ttq::test {

// The folder of the seed fixtures (tests/fixtures/seed/README.md): the
// environment variable TTQ_SEED_DIR when it is set and not empty, else the
// source tree's tests/fixtures/seed as configured. The variable serves a test
// program run from a copy of the repository at another path (tools/gpu_check.sh).
std::string seed_dir();

// Fresh seeded generator; each call site passes its own seed.
inline Generator gen(uint64_t seed) { return Generator(seed); }

// U[-1, 1) of the given dtype/device.
Tensor rand(const Shape& shape, uint64_t seed, DType dtype = DType::F32, Device device = Device::cpu());

// max|a - b| / max(max|b|, tiny): the normalised error used throughout.
double max_rel_error(const Tensor& a, const Tensor& b);
double max_abs_diff(const Tensor& a, const Tensor& b);

// Fills a tensor with NaN (floats) or 0xAB bytes so unwritten elements show.
void poison(Tensor& t);
bool all_finite(const Tensor& t);

// Devices to run device-parameterised tests on: cpu always, cuda:0 always listed
// (tests on it call GTEST_SKIP when no device is present).
std::vector<Device> all_devices();
#define TTQ_SKIP_IF_NO_DEVICE(dev)                                                      \
  do {                                                                                  \
    if ((dev).is_cuda() && !::ttq::cuda::available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

// Central finite differences in float64 of a scalar function f(inputs) with
// respect to input `which`; returns the numeric gradient (same shape).
Tensor numeric_grad(const std::function<double(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                    size_t which, double eps = 1e-6);

std::string device_name(const testing::TestParamInfo<Device>& info);

// A built tool run through the shell: its exit code (-1 when it did not exit) and
// what it wrote to stdout and stderr, captured in files under `dir`.
struct ToolRun {
  int code = -1;
  std::string out, err;
};
ToolRun run_tool(const std::string& command_line, const std::string& dir);

// A fresh folder under gtest's temporary directory, named `prefix` plus a unique
// suffix, removed with everything in it when the object goes.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "ttq");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return m_path + "/" + name; }
  const std::string& path() const { return m_path; }

 private:
  std::string m_path;
};
int count_lines(const std::string& s);

// The message of the ttq::InputError `f` throws, "no error", or "not an InputError: ..."
std::string input_error_message(const std::function<void()>& f);
#define EXPECT_INPUT_ERROR_MENTIONS(stmt, text)                               \
  do {                                                                        \
    const std::string msg_ = ::ttq::test::input_error_message([&] { stmt; }); \
    EXPECT_NE(msg_.find(text), std::string::npos) << "message: " << msg_;     \
    EXPECT_EQ(msg_.find("not an InputError"), std::string::npos) << msg_;     \
  } while (0)

// A small data set in the mnist:DIR layout (28x28 grey images, 10 classes; class
// k is a bright 6x6 square at a class-specific place plus noise), written to
// `dir` (created). Returns `dir`.
std::string make_tiny_idx(const std::string& dir, int64_t n_train, int64_t n_test, uint64_t seed = 1234);

// The path of a built tool: $TTQ_TOOLS_DIR/NAME when that is set (to run the
// tool tests against another build), else the build's tools/NAME.
std::string tool_path(const std::string& name);

struct RunLimits {
  double timeout_s = 120;        // then SIGKILL (code -1)
  int64_t file_size_limit = -1;  // >= 0: RLIMIT_FSIZE in the child with SIGXFSZ ignored, so a
                                 // write past it fails with EFBIG as on a full disk
};
// Runs argv (argv[0] a path) without a shell; stdout and stderr come back
// through pipes, so a file size limit does not touch them.
ToolRun run_argv(const std::vector<std::string>& argv, const RunLimits& limits = {});

// Ternary codes (kernels/packed_format.h: 0 zero, 1 +1, 2 -1): 0 with probability
// zero_frac, else +1 / -1 evenly; drawn from Generator(seed).
std::vector<uint8_t> random_codes(int64_t n, double zero_frac, uint64_t seed);
// The canonical 2-bit packing of `codes` (kernels::pack_codes_ref).
std::vector<uint8_t> canonical_of(const std::vector<uint8_t>& codes);

}  // namespace ttq::test
