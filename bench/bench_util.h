// Helpers shared by the benchmark programs (bench/bench_*.cpp).
#pragma once

#include <cstdlib>
#include <string>

namespace ttq::bench {

// The folder of the seed fixtures (tests/fixtures/seed/README.md): the
// environment variable TTQ_SEED_DIR when it is set and not empty, else the
// source tree's tests/fixtures/seed as configured (bench/CMakeLists.txt). The
// variable serves a benchmark run from a copy of the repository at another
// path (tools/gpu_check.sh).
inline std::string seed_dir() {
  const char* env = std::getenv("TTQ_SEED_DIR");
  return env != nullptr && env[0] != '\0' ? std::string(env) : std::string(TTQ_SEED_DIR);
}

}  // namespace ttq::bench
