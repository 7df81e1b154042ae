// Whole training steps of a small CNN (conv-BN-ReLU-maxpool, conv-BN-ReLU,
// global avgpool, dropout, linear; cross-entropy; SGD with Nesterov momentum
// and weight decay, or Adam) on cuda:0 against the same steps on the CPU, TF32
// off: losses, every gradient, every parameter and BN running statistic after
// each step agree to 1e-5 (normalised error). Also: the grouped optimiser
// kernels (engine/cuda/optim.h) against the per-tensor ones and the CPU, and
// the TF32 switch. Skips without a GPU.
#include <memory>

#include "engine/backend.h"
#include "engine/cuda/runtime.h"
#include "engine/nn/layers.h"
#include "engine/ops/ops.h"
#include "engine/optim/optimizer.h"
#include "tests/test_util.h"
#ifdef TTQ_HAS_CUDA
#include "engine/cuda/optim.h"
#endif

namespace ttq {
namespace {

#define TTQ_SKIP_IF_NO_CUDA() \
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device"

constexpr double kTol = 1e-5;
constexpr int kClasses = 5;

// A model and the generator its dropout draws from (which must outlive it).
struct Net {
  std::unique_ptr<Generator> gen;
  std::shared_ptr<nn::Sequential> model;
};

Net make_net(uint64_t seed) {
  Net n;
  n.gen = std::make_unique<Generator>(seed);
  Generator& g = *n.gen;
  n.model = std::make_shared<nn::Sequential>();
  n.model->push_back(std::make_shared<nn::Conv2d>(3, 8, 3, 1, 1, false, g))
      .push_back(std::make_shared<nn::BatchNorm2d>(8))
      .push_back(std::make_shared<nn::ReLU>())
      .push_back(std::make_shared<nn::MaxPool2d>(3, 2, 1))  // 11 -> 6, overlapping windows
      .push_back(std::make_shared<nn::Conv2d>(8, 12, 3, 1, 1, true, g))
      .push_back(std::make_shared<nn::BatchNorm2d>(12))
      .push_back(std::make_shared<nn::ReLU>())
      .push_back(std::make_shared<nn::GlobalAvgPool>())
      .push_back(std::make_shared<nn::Dropout>(0.25, g))
      .push_back(std::make_shared<nn::Linear>(12, kClasses, true, g));
  return n;
}

struct Batch {
  Tensor x, y;
};

Batch make_batch(uint64_t seed) {
  Generator g(seed);
  Tensor x = Tensor::randn({6, 3, 11, 11}, g, DType::F32);
  std::vector<int64_t> labels(6);
  for (auto& l : labels) l = static_cast<int64_t>(g.below(kClasses));
  return {x, Tensor::from_vector<int64_t>(labels, {6})};
}

void expect_close(const Tensor& dev, const Tensor& cpu, const std::string& what) {
  ASSERT_TRUE(dev.defined() && cpu.defined()) << what;
  ASSERT_EQ(dev.shape(), cpu.shape()) << what;
  EXPECT_TRUE(dev.device().is_cuda()) << what;
  EXPECT_LE(test::max_rel_error(dev, cpu), kTol) << what;
}

// Runs `steps` steps of the same data on both models and compares everything.
template <class MakeOpt>
void compare_training(MakeOpt make_opt, int steps) {
  cuda::set_allow_tf32(false);
  Net cpu_net = make_net(42), dev_net = make_net(42);
  dev_net.model->to(Device::cuda(0));
  auto cpu_opt = make_opt(*cpu_net.model);
  auto dev_opt = make_opt(*dev_net.model);
  const auto cpu_params = cpu_net.model->named_parameters();
  const auto dev_params = dev_net.model->named_parameters();
  ASSERT_EQ(cpu_params.size(), dev_params.size());
  for (int s = 0; s < steps; ++s) {
    const Batch b = make_batch(100 + s);
    cpu_net.model->train();
    dev_net.model->train();
    Tensor cpu_loss = ops::cross_entropy((*cpu_net.model)(b.x), b.y);
    Tensor dev_loss = ops::cross_entropy((*dev_net.model)(b.x.to(Device::cuda(0))), b.y.to(Device::cuda(0)));
    EXPECT_NEAR(dev_loss.item(), cpu_loss.item(), kTol * std::max(1.0, std::fabs(cpu_loss.item())))
        << "step " << s;
    cpu_opt->zero_grad();
    dev_opt->zero_grad();
    cpu_loss.backward();
    dev_loss.backward();
    for (size_t i = 0; i < cpu_params.size(); ++i)
      expect_close(dev_params[i].second->grad(), cpu_params[i].second->grad(),
                   "gradient of " + cpu_params[i].first + " at step " + std::to_string(s));
    cpu_opt->step();
    dev_opt->step();
    for (size_t i = 0; i < cpu_params.size(); ++i)
      expect_close(*dev_params[i].second, *cpu_params[i].second,
                   cpu_params[i].first + " after step " + std::to_string(s));
    const auto cpu_bufs = cpu_net.model->named_buffers(), dev_bufs = dev_net.model->named_buffers();
    ASSERT_EQ(cpu_bufs.size(), dev_bufs.size());
    for (size_t i = 0; i < cpu_bufs.size(); ++i)
      expect_close(*dev_bufs[i].second, *cpu_bufs[i].second,
                   cpu_bufs[i].first + " after step " + std::to_string(s));
  }
  // Eval mode (running statistics, no dropout) agrees too, and is deterministic.
  cpu_net.model->eval();
  dev_net.model->eval();
  const Batch b = make_batch(999);
  const Tensor ye = (*dev_net.model)(b.x.to(Device::cuda(0)));
  expect_close(ye, (*cpu_net.model)(b.x), "eval logits");
  EXPECT_EQ((*dev_net.model)(b.x.to(Device::cuda(0))).to_vector<float>(), ye.to_vector<float>());
}

TEST(CudaTrainStep, SgdNesterovMatchesCpu) {
  TTQ_SKIP_IF_NO_CUDA();
  compare_training(
      [](nn::Module& m) {
        return std::make_unique<optim::SGD>(m.parameters(), optim::SGDOptions{0.1, 0.9, 1e-4, true});
      },
      3);
}

TEST(CudaTrainStep, AdamMatchesCpu) {
  TTQ_SKIP_IF_NO_CUDA();
  compare_training(
      [](nn::Module& m) {
        optim::AdamOptions o;
        o.lr = 1e-3;
        o.weight_decay = 1e-4;
        return std::make_unique<optim::Adam>(m.parameters(), o);
      },
      2);
}

#ifdef TTQ_HAS_CUDA
// The grouped kernels equal the per-tensor kernels and the CPU.
TEST(CudaTrainStep, GroupedOptimiserKernelsMatch) {
  TTQ_SKIP_IF_NO_CUDA();
  const Device dev = Device::cuda(0);
  // Sizes around the chunk size (2048) and more tensors than one launch takes (40).
  std::vector<int64_t> sizes;
  for (int i = 0; i < 45; ++i) sizes.push_back(i % 5 == 0 ? 2048 * (i / 5) + 1 : 7 * (i + 1));
  sizes.push_back(0);
  auto make = [&](uint64_t seed, double lo, double hi) {
    std::vector<Tensor> v;
    Generator g(seed);
    for (int64_t n : sizes) v.push_back(Tensor::uniform({n}, g, lo, hi, DType::F32));
    return v;
  };
  auto to_dev = [&](const std::vector<Tensor>& v) {
    std::vector<Tensor> d;
    for (const Tensor& t : v) d.push_back(t.to(dev));
    return d;
  };
  const auto p0 = make(1, -1, 1), g0 = make(2, -1, 1), m0 = make(3, -0.1, 0.1), v0 = make(4, 0, 0.01);
  for (bool first : {true, false}) {
    // SGD: grouped on the device, per tensor on the device, per tensor on the CPU.
    auto pa = to_dev(p0), ba = to_dev(m0), pb = to_dev(p0), bb = to_dev(m0);
    std::vector<Tensor> pc, bc;
    for (size_t i = 0; i < sizes.size(); ++i) pc.push_back(p0[i].clone()), bc.push_back(m0[i].clone());
    cuda::sgd_step_multi(pa, to_dev(g0), ba, 0.05, 0.9, 1e-4, true, first);
    for (size_t i = 0; i < sizes.size(); ++i) {
      const Tensor gd = g0[i].to(dev);
      cuda::sgd_step(pb[i], gd, bb[i], 0.05, 0.9, 1e-4, true, first);
      cpu::sgd_step(pc[i], g0[i], bc[i], 0.05, 0.9, 1e-4, true, first);
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (sizes[i] == 0) continue;
      EXPECT_LE(test::max_rel_error(pa[i], pb[i]), 1e-7) << "sgd tensor " << i;
      EXPECT_LE(test::max_rel_error(ba[i], bb[i]), 1e-7) << "sgd buffer " << i;
      EXPECT_LE(test::max_rel_error(pa[i], pc[i]), 1e-6) << "sgd tensor " << i << " vs cpu";
      EXPECT_LE(test::max_rel_error(ba[i], bc[i]), 1e-6) << "sgd buffer " << i << " vs cpu";
    }
  }
  // Adam at step 3.
  auto pa = to_dev(p0), ma = to_dev(m0), va = to_dev(v0), pb = to_dev(p0), mb = to_dev(m0), vb = to_dev(v0);
  std::vector<Tensor> pc, mc, vc;
  for (size_t i = 0; i < sizes.size(); ++i)
    pc.push_back(p0[i].clone()), mc.push_back(m0[i].clone()), vc.push_back(v0[i].clone());
  cuda::adam_step_multi(pa, to_dev(g0), ma, va, 1e-3, 0.9, 0.999, 1e-8, 1e-4, 3);
  for (size_t i = 0; i < sizes.size(); ++i) {
    const Tensor gd = g0[i].to(dev);
    cuda::adam_step(pb[i], gd, mb[i], vb[i], 1e-3, 0.9, 0.999, 1e-8, 1e-4, 3);
    cpu::adam_step(pc[i], g0[i], mc[i], vc[i], 1e-3, 0.9, 0.999, 1e-8, 1e-4, 3);
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] == 0) continue;
    EXPECT_LE(test::max_rel_error(pa[i], pb[i]), 1e-7) << "adam tensor " << i;
    EXPECT_LE(test::max_rel_error(va[i], vb[i]), 1e-7) << "adam exp_avg_sq " << i;
    EXPECT_LE(test::max_rel_error(pa[i], pc[i]), 1e-6) << "adam tensor " << i << " vs cpu";
    EXPECT_LE(test::max_rel_error(ma[i], mc[i]), 1e-6) << "adam exp_avg " << i << " vs cpu";
  }
}

// TF32 changes fp32 convolution results at the 1e-3 level; switching it off
// again restores FMA accuracy (algorithms are cached per setting).
TEST(CudaTrainStep, Tf32SwitchAffectsConvolution) {
  TTQ_SKIP_IF_NO_CUDA();
  const Tensor x = test::rand({4, 64, 14, 14}, 8), w = test::rand({64, 64, 3, 3}, 9);
  const Tensor ref = ops::conv2d(x, w, Tensor(), 1, 1);
  const bool before = cuda::allow_tf32();
  cuda::set_allow_tf32(true);
  const Tensor y_tf32 = ops::conv2d(x.to(Device::cuda(0)), w.to(Device::cuda(0)), Tensor(), 1, 1);
  cuda::set_allow_tf32(false);
  const Tensor y_fma = ops::conv2d(x.to(Device::cuda(0)), w.to(Device::cuda(0)), Tensor(), 1, 1);
  cuda::set_allow_tf32(before);
  EXPECT_LE(test::max_rel_error(y_tf32, ref), 5e-3);
  EXPECT_LE(test::max_rel_error(y_fma, ref), kTol);
}
#endif  // TTQ_HAS_CUDA

}  // namespace
}  // namespace ttq
