// SIGINT / SIGTERM for the training loop (train/trainer.h): a request to stop
// that the loop reads between steps. Tests: tests/test_signals.cpp.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <thread>

#include "engine/error.h"
#include "train/trainer.h"

namespace ttq::train {

namespace {

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }

}  // namespace

void install_signal_handlers() {
  // A handler runs on the stack of whichever thread the signal interrupts, and
  // oneDNN's JIT GEMM runs on a stack of its own inside a heap block: a signal
  // arriving there wrote its frame over the heap ("corrupted size vs. prev_size"
  // at the next free). So this thread, and every thread it starts from now on
  // (OpenMP, data loaders), blocks SIGINT and SIGTERM, and one thread of our own
  // takes them with sigwait(). The handler stays for threads started before this
  // call (a BLAS library's), which keep the signals unblocked.
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  TTQ_CHECK(sigaction(SIGINT, &sa, nullptr) == 0 && sigaction(SIGTERM, &sa, nullptr) == 0)
      << "sigaction failed";
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  TTQ_CHECK(pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr) == 0) << "pthread_sigmask failed";
  std::thread([stop_signals] {
    for (;;) {
      int sig = 0;
      if (sigwait(&stop_signals, &sig) == 0) g_stop_signal.store(sig);
    }
  }).detach();
}
void request_stop(int signal_number) { g_stop_signal.store(signal_number); }
void clear_stop_request() { g_stop_signal.store(0); }
int stop_signal() { return g_stop_signal.load(); }

}  // namespace ttq::train
