// Training-step throughput of the three models on the CPU (and CUDA when a GPU
// is present): forward, cross-entropy, backward and a Nesterov SGD step on a
// random batch, reported as images/s (items_per_second). The PyTorch peer is
// bench/peers/small_densenet_torch.py (--model for each of the three);
// tools/compare_train_throughput.sh runs both.
#include <benchmark/benchmark.h>

#include "engine/cuda/runtime.h"
#include "engine/ops/ops.h"
#include "engine/optim/optimizer.h"
#include "models/model.h"

namespace {

void train_step(benchmark::State& state, const std::string& arch, ttq::Device device) {
  if (device.is_cuda() && !ttq::cuda::available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t batch = state.range(0), size = state.range(1);
  ttq::models::ModelConfig mc;
  mc.input_size = size;
  ttq::Generator gen(1);
  auto model = ttq::models::create(arch, mc, gen);
  model->to(device);
  model->train();
  ttq::optim::SGDOptions so;
  so.lr = 0.01;
  so.momentum = 0.95;
  so.nesterov = true;
  so.weight_decay = 1e-4;
  ttq::optim::SGD opt(model->parameters(), so);
  ttq::Tensor x = ttq::Tensor::randn({batch, 3, size, size}, gen, ttq::DType::F32, device);
  std::vector<int64_t> labels(batch);
  for (auto& l : labels) l = static_cast<int64_t>(gen.below(200));
  ttq::Tensor y = ttq::Tensor::from_vector(labels, {batch}, device);
  auto step = [&] {
    ttq::Tensor loss = ttq::ops::cross_entropy((*model)(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    benchmark::DoNotOptimize(loss.item());  // synchronises on CUDA
  };
  step();  // warm-up: allocator caches, algorithm choice
  for (auto _ : state) step();
  state.SetItemsProcessed(state.iterations() * batch);
}

}  // namespace

BENCHMARK_CAPTURE(train_step, small_densenet_cpu, std::string("small_densenet"), ttq::Device::cpu())
    ->Args({32, 56})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(train_step, squeezenet_cpu, std::string("squeezenet"), ttq::Device::cpu())
    ->Args({32, 56})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(train_step, densenet121_cpu, std::string("densenet121"), ttq::Device::cpu())
    ->Args({16, 56})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(train_step, small_densenet_cuda, std::string("small_densenet"), ttq::Device::cuda(0))
    ->Args({32, 56})
    ->Args({128, 56})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(train_step, squeezenet_cuda, std::string("squeezenet"), ttq::Device::cuda(0))
    ->Args({128, 56})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(train_step, densenet121_cuda, std::string("densenet121"), ttq::Device::cuda(0))
    ->Args({64, 56})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
