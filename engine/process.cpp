#include "engine/process.h"

#include <unistd.h>

#include <cstdlib>

namespace ttq {

void configure_openmp_wait(char** argv, OpenMpWait mode) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  const int rc = mode == OpenMpWait::Passive ? setenv("OMP_WAIT_POLICY", "passive", 1)
                                             : setenv("GOMP_SPINCOUNT", "1000", 1);
  if (rc != 0) return;
  execv("/proc/self/exe", argv);  // on failure: carry on with the default policy
}

}  // namespace ttq
