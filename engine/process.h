// Process-level settings for the command-line tools and the test programs.
#pragma once

namespace ttq {

// How idle OpenMP workers wait for the next parallel region.
//
// libgomp's default spins for about 300000 iterations (a few milliseconds) before
// sleeping. On a machine with other work that starves everyone: two programs at
// once on 2 cores ran 40x slower. Sleeping at once (OMP_WAIT_POLICY=passive)
// fixes that but makes every fork / join pay a futex wake-up: 2.5x slower for
// the float small DenseNet at batch 1, 5-10% for training (bench/RESULTS.md,
// "OpenMP waiting"). A short spin keeps nearly all of the idle-machine speed and
// costs 1.4-1.7x instead of 40x when oversubscribed.
enum class OpenMpWait {
  ShortSpin,  // GOMP_SPINCOUNT=1000 (about 10 microseconds): the tools
  Passive,    // OMP_WAIT_POLICY=passive: the test programs, which ctest runs side by side
};

// libgomp reads its variables once, when it loads, so a process that finds both
// OMP_WAIT_POLICY and GOMP_SPINCOUNT unset sets the one `mode` names and
// re-executes itself (argv unchanged). Either variable set by the user is
// respected. Call first thing in main(); returns only when no re-exec happened
// or it failed (the process then runs with libgomp's default).
void configure_openmp_wait(char** argv, OpenMpWait mode);

}  // namespace ttq
