// Process-level settings for the command-line tools.
#pragma once

namespace ttq {

// OpenMP's default wait policy spins idle worker threads, which starves other
// work when the machine is shared (2 parallel jobs on 2 cores ran 40x slower in
// our measurements). libgomp reads OMP_WAIT_POLICY once, when it loads, so a
// tool that finds the variable unset sets it to "passive" and re-executes
// itself (argv unchanged). An explicit OMP_WAIT_POLICY is respected. Call first
// thing in main(); returns only when no re-exec happened or it failed.
void prefer_passive_openmp(char** argv);

}  // namespace ttq
