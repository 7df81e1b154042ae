#include "engine/process.h"

#include <unistd.h>

#include <cstdlib>

namespace ttq {

void prefer_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  execv("/proc/self/exe", argv);  // on failure: carry on with the default policy
}

}  // namespace ttq
