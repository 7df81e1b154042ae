// End-to-end training of a small CNN built from nn layers (conv-BN-ReLU-pool twice,
// dropout, linear) on a generated 4-class task: noisy 1x12x12 images of a
// horizontal bar, a vertical bar, a diagonal or a hollow square at random places.
// The loss must fall and held-out accuracy must be high, with Adam and with SGD
// Nesterov; eval mode must be deterministic. Runs in a few seconds on one core.
// Code under test: engine/nn, engine/optim, and the ops beneath them.
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>

#include "engine/nn/layers.h"
#include "engine/ops/ops.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/plateau.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

constexpr int kSide = 12;
constexpr int kPixels = kSide * kSide;
constexpr int kClasses = 4;

struct Dataset {
  std::vector<float> images;  // [n, 1, 12, 12]
  std::vector<int64_t> labels;
  size_t size() const { return labels.size(); }
};

Dataset make_dataset(size_t n, uint64_t seed) {
  Generator g(seed);
  Dataset d;
  d.images.assign(n * kPixels, 0.f);
  for (size_t i = 0; i < n; ++i) {
    const int64_t label = static_cast<int64_t>(i % kClasses);
    float* img = &d.images[i * kPixels];
    auto put = [&](int r, int c) {
      if (r >= 0 && r < kSide && c >= 0 && c < kSide) img[r * kSide + c] = 1.f;
    };
    const int r0 = 2 + static_cast<int>(g.below(8)), c0 = 2 + static_cast<int>(g.below(8));
    const int len = 5 + static_cast<int>(g.below(4));
    const int s0 = static_cast<int>(g.below(kSide - len + 1)),
              s1 = static_cast<int>(g.below(kSide - len + 1));
    switch (label) {
      case 0:
        for (int k = 0; k < len; ++k) put(r0, s0 + k);
        break;
      case 1:
        for (int k = 0; k < len; ++k) put(s0 + k, c0);
        break;
      case 2:
        for (int k = 0; k < len; ++k) put(s0 + k, s1 + k);
        break;
      default: {
        const int rr = static_cast<int>(g.below(kSide - 4)), cc = static_cast<int>(g.below(kSide - 4));
        for (int k = 0; k < 5; ++k) {
          put(rr, cc + k);
          put(rr + 4, cc + k);
          put(rr + k, cc);
          put(rr + k, cc + 4);
        }
      }
    }
    for (int p = 0; p < kPixels; ++p) img[p] += static_cast<float>(0.35 * g.normal());
    d.labels.push_back(label);
  }
  return d;
}

std::pair<Tensor, Tensor> batch(const Dataset& d, const std::vector<size_t>& order, size_t start,
                                size_t count) {
  std::vector<float> x(count * kPixels);
  std::vector<int64_t> y(count);
  for (size_t i = 0; i < count; ++i) {
    const size_t k = order[start + i];
    std::copy_n(&d.images[k * kPixels], kPixels, &x[i * kPixels]);
    y[i] = d.labels[k];
  }
  return {Tensor::from_vector<float>(x, {static_cast<int64_t>(count), 1, kSide, kSide}),
          Tensor::from_vector<int64_t>(y, {static_cast<int64_t>(count)})};
}

std::shared_ptr<nn::Sequential> small_cnn(Generator& gen) {
  auto m = std::make_shared<nn::Sequential>();
  m->push_back(std::make_shared<nn::Conv2d>(1, 8, 3, 1, 1, false, gen))
      .push_back(std::make_shared<nn::BatchNorm2d>(8))
      .push_back(std::make_shared<nn::ReLU>())
      .push_back(std::make_shared<nn::MaxPool2d>(2))  // 12 -> 6
      .push_back(std::make_shared<nn::Conv2d>(8, 16, 3, 1, 1, false, gen))
      .push_back(std::make_shared<nn::BatchNorm2d>(16))
      .push_back(std::make_shared<nn::ReLU>())
      .push_back(std::make_shared<nn::MaxPool2d>(2))  // 6 -> 3
      .push_back(std::make_shared<nn::Flatten>())
      .push_back(std::make_shared<nn::Dropout>(0.1, gen))
      .push_back(std::make_shared<nn::Linear>(16 * 9, kClasses, true, gen));
  return m;
}

struct Outcome {
  double first_epoch_loss = 0, last_epoch_loss = 0, accuracy = 0;
};

Outcome train(nn::Module& model, optim::Optimizer& opt, optim::ReduceLROnPlateau* sched, int epochs,
              uint64_t seed) {
  const Dataset train_set = make_dataset(768, seed);
  const Dataset test_set = make_dataset(200, seed + 1);
  Generator shuffle(seed + 2);
  std::vector<size_t> order(train_set.size());
  std::iota(order.begin(), order.end(), 0);
  const size_t bs = 32;
  Outcome out;
  for (int e = 0; e < epochs; ++e) {
    for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[shuffle.below(i + 1)]);
    model.train();
    double total = 0;
    size_t steps = 0;
    for (size_t s = 0; s + bs <= order.size(); s += bs) {
      auto [x, y] = batch(train_set, order, s, bs);
      Tensor loss = ops::cross_entropy(model(x), y);
      opt.zero_grad();
      loss.backward();
      opt.step();
      total += loss.item();
      ++steps;
    }
    const double mean = total / steps;
    EXPECT_TRUE(std::isfinite(mean)) << "epoch " << e;
    if (e == 0) out.first_epoch_loss = mean;
    out.last_epoch_loss = mean;
    if (sched != nullptr) sched->step(-mean);
  }
  model.eval();
  std::vector<size_t> all(test_set.size());
  std::iota(all.begin(), all.end(), 0);
  auto [x, y] = batch(test_set, all, 0, all.size());
  Tensor logits = model(x);
  out.accuracy = static_cast<double>(ops::topk_correct(logits, y, 1)) / all.size();
  // Eval is deterministic: the same input gives the same bits.
  EXPECT_EQ(model(x).to_vector<float>(), logits.to_vector<float>());
  return out;
}

TEST(TrainSmallCnn, AdamLearnsSyntheticPatterns) {
  Generator gen(1234);
  auto model = small_cnn(gen);
  optim::Adam opt(model->parameters(), optim::AdamOptions{.lr = 1e-2});
  const Outcome o = train(*model, opt, nullptr, 10, 100);
  EXPECT_LT(o.last_epoch_loss, 0.1 * o.first_epoch_loss) << o.first_epoch_loss << " -> " << o.last_epoch_loss;
  EXPECT_GE(o.accuracy, 0.9);
  std::printf("loss %.4f -> %.4f, held-out accuracy %.3f\n", o.first_epoch_loss, o.last_epoch_loss,
              o.accuracy);
}

TEST(TrainSmallCnn, SgdNesterovWithWeightDecayGroupsAndPlateau) {
  // The seed's full-precision recipe in miniature: Nesterov momentum, weight decay on
  // conv and classifier weights only (BN parameters and biases in a no-decay group).
  Generator gen(99);
  auto model = small_cnn(gen);
  std::vector<Tensor> decay, no_decay;
  for (auto& [name, t] : model->named_parameters()) (t->dim() > 1 ? decay : no_decay).push_back(*t);
  optim::SGD opt(optim::SGDOptions{.lr = 0.05, .momentum = 0.9, .nesterov = true});
  opt.add_param_group(decay).weight_decay = 1e-4;
  opt.add_param_group(no_decay);
  optim::PlateauOptions po;
  po.mode = optim::PlateauMode::Max;
  po.patience = 1;
  po.threshold = 0.01;
  po.threshold_mode = optim::ThresholdMode::Abs;
  optim::ReduceLROnPlateau sched(opt, po);
  const Outcome o = train(*model, opt, &sched, 10, 200);
  EXPECT_LT(o.last_epoch_loss, 0.1 * o.first_epoch_loss) << o.first_epoch_loss << " -> " << o.last_epoch_loss;
  EXPECT_GE(o.accuracy, 0.9);
  std::printf("loss %.4f -> %.4f, held-out accuracy %.3f\n", o.first_epoch_loss, o.last_epoch_loss,
              o.accuracy);
}

}  // namespace
}  // namespace ttq
