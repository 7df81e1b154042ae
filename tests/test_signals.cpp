// ttq_train's SIGINT / SIGTERM handling (train::install_signal_handlers) under
// a storm of signals while training steps run: oneDNN's JIT GEMM runs on a
// stack of its own inside a heap block, so a handler that ran on a compute
// thread wrote its frame over the heap and a later free() aborted. The signals
// now go to one thread of their own; the steps must finish. (A process of its
// own under ctest: the test blocks both signals in its threads.)
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "engine/autograd.h"
#include "engine/ops/ops.h"
#include "models/model.h"
#include "tests/test_util.h"
#include "train/trainer.h"

namespace ttq {
namespace {

TEST(StopSignals, AStormDuringTrainingStepsLeavesTheHeapWhole) {
  train::install_signal_handlers();
  train::clear_stop_request();
  models::ModelConfig mc;
  mc.in_channels = 1;
  mc.input_size = 28;
  mc.num_classes = 10;
  models::ModelPtr model = models::create("small_densenet", mc);
  model->train();
  const Tensor x = test::rand({16, 1, 28, 28}, 1);
  const Tensor y = Tensor::from_vector<int64_t>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5}, {16});

  std::atomic<bool> done{false};
  std::atomic<int64_t> sent{0};
  std::thread storm([&] {
    while (!done.load()) {
      kill(getpid(), sent.load() % 2 == 0 ? SIGTERM : SIGINT);
      sent.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  int steps = 0;
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 2.0 || steps < 3) {
    Tensor loss = ops::cross_entropy((*model)(x), y);
    loss.backward();
    ++steps;
  }
  done.store(true);
  storm.join();
  EXPECT_GT(sent.load(), 1000);
  EXPECT_GE(steps, 3);
  train::clear_stop_request();
}

}  // namespace
}  // namespace ttq
