#include "tests/test_util.h"

#include "engine/process.h"

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace ttq::test {

std::string seed_dir() {
  const char* env = std::getenv("TTQ_SEED_DIR");
  return env != nullptr && env[0] != '\0' ? std::string(env) : std::string(TTQ_SEED_DIR);
}

Tensor rand(const Shape& shape, uint64_t seed, DType dtype, Device device) {
  Generator g(seed);
  return Tensor::uniform(shape, g, -1.0, 1.0, dtype, device);
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  auto x = a.to_vector<double>(), y = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
    double d = std::fabs(x[i] - y[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

double max_rel_error(const Tensor& a, const Tensor& b) {
  auto y = b.to_vector<double>();
  double scale = 1e-30;
  for (double v : y) scale = std::max(scale, std::fabs(v));
  return max_abs_diff(a, b) / scale;
}

void poison(Tensor& t) {
  if (t.dtype() == DType::F32 || t.dtype() == DType::F64) {
    t.fill_(NAN);
  } else {
    Tensor h = Tensor::empty(t.shape(), t.dtype());
    std::memset(h.raw_data(), 0xAB, h.nbytes());
    t.copy_(h);
  }
}

bool all_finite(const Tensor& t) {
  for (double v : t.to_vector<double>())
    if (!std::isfinite(v)) return false;
  return true;
}

std::vector<Device> all_devices() { return {Device::cpu(), Device::cuda(0)}; }

Tensor numeric_grad(const std::function<double(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                    size_t which, double eps) {
  Tensor x = inputs[which].to(DType::F64).clone();
  inputs[which] = x;
  Tensor g = Tensor::zeros(x.shape(), DType::F64);
  double* px = x.data<double>();
  double* pg = g.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    double orig = px[i];
    px[i] = orig + eps;
    double fp = f(inputs);
    px[i] = orig - eps;
    double fm = f(inputs);
    px[i] = orig;
    pg[i] = (fp - fm) / (2 * eps);
  }
  return g;
}

std::string device_name(const testing::TestParamInfo<Device>& info) {
  return info.param.is_cpu() ? "cpu" : "cuda";
}

namespace {
std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

ToolRun run_tool(const std::string& command_line, const std::string& dir) {
  const std::string out = dir + "/stdout.txt", err = dir + "/stderr.txt";
  const int status = std::system((command_line + " > '" + out + "' 2> '" + err + "'").c_str());
  ToolRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

int count_lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

std::string input_error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not an InputError: ") + e.what();
  }
  return "no error";
}

}  // namespace ttq::test

int main(int argc, char** argv) {
  ttq::configure_openmp_wait(argv, ttq::OpenMpWait::Passive);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
