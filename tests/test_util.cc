#include "tests/test_util.h"

#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/idx.h"
#include "engine/process.h"
#include "engine/rng.h"
#include "kernels/pack.h"
#include "kernels/packed_format.h"

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

TempDir::TempDir(const std::string& prefix) {
  std::string tmpl = testing::TempDir() + prefix + "_XXXXXX";
  TTQ_CHECK(::mkdtemp(tmpl.data()) != nullptr) << "mkdtemp " << tmpl << " failed";
  m_path = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(m_path, ec);
}

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

std::string make_tiny_idx(const std::string& dir, int64_t n_train, int64_t n_test, uint64_t seed) {
  std::filesystem::create_directories(dir);
  Generator g(seed);
  auto make = [&](int64_t n, const std::string& prefix) {
    std::vector<uint8_t> px(static_cast<size_t>(n) * 28 * 28), lab(n);
    for (int64_t i = 0; i < n; ++i) {
      const int k = static_cast<int>(g.below(10));
      lab[i] = static_cast<uint8_t>(k);
      const int r0 = 2 + (k / 5) * 12, c0 = 2 + (k % 5) * 5;
      for (int r = 0; r < 28; ++r)
        for (int c = 0; c < 28; ++c) {
          int v = static_cast<int>(g.below(60));
          if (r >= r0 && r < r0 + 6 && c >= c0 && c < c0 + 6) v += 180;
          px[(i * 28 + r) * 28 + c] = static_cast<uint8_t>(std::min(v, 255));
        }
    }
    data::write_idx(dir + "/" + prefix + "-images-idx3-ubyte", {n, 28, 28}, px, false);
    data::write_idx(dir + "/" + prefix + "-labels-idx1-ubyte", {n}, lab, true);
  };
  make(n_train, "train");
  make(n_test, "t10k");
  return dir;
}

std::string tool_path(const std::string& name) {
  const char* dir = std::getenv("TTQ_TOOLS_DIR");
  return (dir != nullptr && *dir != 0 ? std::string(dir) : std::string(TTQ_BINARY_DIR) + "/tools") + "/" +
         name;
}

ToolRun run_argv(const std::vector<std::string>& args, const RunLimits& limits) {
  int out_pipe[2], err_pipe[2];
  ToolRun r;
  if (args.empty() || pipe(out_pipe) != 0) return r;
  if (pipe(err_pipe) != 0) return r;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out_pipe[1], STDOUT_FILENO);
    dup2(err_pipe[1], STDERR_FILENO);
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) close(fd);
    if (limits.file_size_limit >= 0) {
      signal(SIGXFSZ, SIG_IGN);  // inherited through exec
      struct rlimit rl {};
      rl.rlim_cur = rl.rlim_max = static_cast<rlim_t>(limits.file_size_limit);
      setrlimit(RLIMIT_FSIZE, &rl);
    }
    std::vector<char*> argv;
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  const auto t0 = std::chrono::steady_clock::now();
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  bool killed = false;
  while (open_fds > 0) {
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!killed && el > limits.timeout_s) {
      kill(pid, SIGKILL);
      killed = true;
    }
    if (poll(fds, 2, 100) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      char buf[4096];
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  r.code = WIFEXITED(status) && !killed ? WEXITSTATUS(status) : -1;
  return r;
}

std::vector<uint8_t> random_codes(int64_t n, double zero_frac, uint64_t seed) {
  Generator g(seed);
  std::vector<uint8_t> c(static_cast<size_t>(n));
  for (auto& v : c) v = g.uniform() < zero_frac ? 0 : static_cast<uint8_t>(1 + g.below(2));
  return c;
}

std::vector<uint8_t> canonical_of(const std::vector<uint8_t>& codes) {
  std::vector<uint8_t> p(
      static_cast<size_t>(kernels::packed::packed_bytes(static_cast<int64_t>(codes.size()))));
  kernels::pack_codes_ref(codes.data(), static_cast<int64_t>(codes.size()), p.data());
  return p;
}

}  // namespace ttq::test

int main(int argc, char** argv) {
  ttq::configure_openmp_wait(argv, ttq::OpenMpWait::Passive);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
