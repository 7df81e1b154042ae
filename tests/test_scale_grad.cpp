// Scale and latent gradients (kernels/scale_grad.h): hand-computed cases (ties
// at +-delta, all-zero latent, one element), both signs of dL/dWn, the fast CPU
// twin against the naive reference on awkward sizes, thread-count independence,
// and the CUDA twin against the CPU twin (dL/dW bit for bit, sums within 1e-6).
// Finite differences of a real loss for dL/dWp, dL/dWn: tests/test_ttq_layer.cpp.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/scale_grad.h"
#include "kernels/ternarize.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using kernels::WnGradMode;

class ScaleGradDevice : public testing::TestWithParam<Device> {};

TEST_P(ScaleGradDevice, HandComputedBothModes) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  // delta = 0.5; +-0.5 are ties and belong to Z. P = {0}, N = {1, 5}.
  Tensor w = Tensor::from_vector<float>({1.0f, -2.0f, 0.5f, -0.5f, 0.4f, -0.6f, 0.0f}, {7}, dev);
  Tensor g = Tensor::from_vector<float>({0.125f, 0.25f, 0.375f, 0.5f, 0.625f, 0.75f, 0.875f}, {7}, dev);
  Tensor delta = Tensor::full({1}, 0.5, DType::F32, dev);
  Tensor wp = Tensor::full({1}, 1.5, DType::F32, dev), wn = Tensor::full({1}, 0.75, DType::F32, dev);
  auto exact = kernels::scale_grad(g, w, delta, wp, wn, WnGradMode::Exact);
  // dL/dW = Wp*G on P, Wn*G on N, G on Z (all products exact in binary).
  const std::vector<float> gw = {1.5f * 0.125f, 0.75f * 0.25f, 0.375f, 0.5f, 0.625f, 0.75f * 0.75f, 0.875f};
  EXPECT_EQ(exact.latent.to_vector<float>(), gw);
  EXPECT_EQ(exact.wp.item(), 0.125);
  EXPECT_EQ(exact.wn.item(), -(0.25 + 0.75));
  EXPECT_EQ(exact.wp.shape(), (Shape{1}));
  auto seed = kernels::scale_grad(g, w, delta, wp, wn, WnGradMode::Seed);
  EXPECT_EQ(seed.latent.to_vector<float>(), gw);
  EXPECT_EQ(seed.wp.item(), 0.125);
  EXPECT_EQ(seed.wn.item(), 0.25 + 0.75);
}

TEST_P(ScaleGradDevice, AllZeroLatentAndSingleElement) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  Tensor wp = Tensor::full({1}, 2.0, DType::F32, dev), wn = Tensor::full({}, 4.0, DType::F32, dev);
  {  // W = 0, delta = 0: everything in Z, dL/dW = G, scale grads 0
    Tensor g = test::rand({3, 5, 7}, 5, DType::F32, dev);
    auto r = kernels::scale_grad(g, Tensor::zeros({3, 5, 7}, DType::F32, dev),
                                 Tensor::zeros({1}, DType::F32, dev), wp, wn, WnGradMode::Exact);
    EXPECT_EQ(r.latent.to_vector<float>(), g.to_vector<float>());
    EXPECT_EQ(r.wp.item(), 0.0);
    EXPECT_EQ(r.wn.item(), 0.0);
    EXPECT_EQ(r.wn.shape(), Shape{});
  }
  {  // one element in N
    Tensor w = Tensor::full({1}, -1.0, DType::F32, dev), g = Tensor::full({1}, 0.5, DType::F32, dev);
    auto r = kernels::scale_grad(g, w, Tensor::full({1}, 0.05, DType::F32, dev), wp, wn, WnGradMode::Exact);
    EXPECT_EQ(r.latent.item(), 2.0);
    EXPECT_EQ(r.wp.item(), 0.0);
    EXPECT_EQ(r.wn.item(), -0.5);
  }
  {  // empty
    Tensor e = Tensor::zeros({0}, DType::F32, dev);
    auto r = kernels::scale_grad(e, e, Tensor::zeros({1}, DType::F32, dev), wp, wn, WnGradMode::Seed);
    EXPECT_EQ(r.latent.numel(), 0);
    EXPECT_EQ(r.wp.item(), 0.0);
    EXPECT_EQ(r.wn.item(), 0.0);
  }
}

TEST_P(ScaleGradDevice, RejectsBadInputs) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  Tensor a = Tensor::zeros({4}, DType::F32, dev), s = Tensor::ones({1}, DType::F32, dev);
  EXPECT_THROW(kernels::scale_grad(a, Tensor::zeros({5}, DType::F32, dev), s, s, s, WnGradMode::Exact),
               Error);
  EXPECT_THROW(kernels::scale_grad(a, a, Tensor::zeros({2}, DType::F32, dev), s, s, WnGradMode::Exact),
               Error);
  EXPECT_THROW(kernels::scale_grad(a.to(DType::F64), a, s, s, s, WnGradMode::Exact), Error);
}

INSTANTIATE_TEST_SUITE_P(All, ScaleGradDevice, testing::ValuesIn(test::all_devices()), test::device_name);

TEST(ScaleGrad, ModeNames) {
  EXPECT_EQ(kernels::parse_wn_grad_mode("exact"), WnGradMode::Exact);
  EXPECT_EQ(kernels::parse_wn_grad_mode("seed"), WnGradMode::Seed);
  EXPECT_STREQ(kernels::wn_grad_mode_name(WnGradMode::Seed), "seed");
  EXPECT_THROW(kernels::parse_wn_grad_mode("paper"), InputError);
}

const std::vector<int64_t> kSizes = {1,  2,   3,    5,    7,    8,    15,         17,
                                     33, 217, 1000, 4095, 4096, 4097, 7 * 31 * 9, 100003};

TEST(ScaleGrad, FastCpuMatchesReference) {
  for (int64_t n : kSizes) {
    for (WnGradMode mode : {WnGradMode::Exact, WnGradMode::Seed}) {
      SCOPED_TRACE(testing::Message()
                   << "SCALE_GRAD(n=" << n << ", mode=" << kernels::wn_grad_mode_name(mode) << ")");
      std::vector<float> w = test::rand({n}, 10 + n).to_vector<float>();
      std::vector<float> g = test::rand({n}, 20 + n).to_vector<float>();
      const float delta = kernels::ternarize_delta_ref(w.data(), n, 0.05f);
      std::vector<float> gw_ref(w.size(), NAN), gw(w.size(), NAN);
      double p_ref = NAN, n_ref = NAN, p = NAN, q = NAN;
      kernels::scale_grad_ref(g.data(), w.data(), n, delta, 1.3f, 0.7f, mode, gw_ref.data(), &p_ref, &n_ref);
      kernels::scale_grad_cpu(g.data(), w.data(), n, delta, 1.3f, 0.7f, mode, gw.data(), &p, &q);
      EXPECT_EQ(std::memcmp(gw.data(), gw_ref.data(), gw.size() * 4), 0);
      // Both sum floats in double; only the order differs.
      EXPECT_NEAR(p, p_ref, 1e-12 * (1 + std::fabs(p_ref)));
      EXPECT_NEAR(q, n_ref, 1e-12 * (1 + std::fabs(n_ref)));
      double p2 = NAN, q2 = NAN;
      kernels::scale_grad_cpu(g.data(), w.data(), n, delta, 1.3f, 0.7f, mode, nullptr, &p2, &q2);
      EXPECT_EQ(p2, p);
      EXPECT_EQ(q2, q);
    }
  }
}

TEST(ScaleGrad, CpuSumsDoNotDependOnThreadCount) {
  const int64_t n = 300007;
  std::vector<float> w = test::rand({n}, 1).to_vector<float>(), g = test::rand({n}, 2).to_vector<float>();
  std::vector<float> gw(w.size());
  double p1, n1, p2, n2;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  kernels::scale_grad_cpu(g.data(), w.data(), n, 0.05f, 1, 1, WnGradMode::Exact, gw.data(), &p1, &n1);
  omp_set_num_threads(std::max(2, saved));
  kernels::scale_grad_cpu(g.data(), w.data(), n, 0.05f, 1, 1, WnGradMode::Exact, gw.data(), &p2, &n2);
  omp_set_num_threads(saved);
  EXPECT_EQ(p1, p2);
  EXPECT_EQ(n1, n2);
}

TEST(ScaleGrad, TensorEntryOnStridedViewsMatchesReference) {
  Tensor wb = test::rand({17, 13}, 3), gb = test::rand({13, 17}, 4);
  Tensor w = wb.transpose(0, 1), g = gb;  // g contiguous, w a transposed view
  Tensor delta = Tensor::full({1}, 0.3), wp = Tensor::full({1}, 1.1), wn = Tensor::full({1}, 0.9);
  auto r = kernels::scale_grad(g, w, delta, wp, wn, WnGradMode::Exact);
  std::vector<float> wv = w.contiguous().to_vector<float>(), gv = g.to_vector<float>(), gw(wv.size());
  double p, q;
  kernels::scale_grad_ref(gv.data(), wv.data(), 221, 0.3f, 1.1f, 0.9f, WnGradMode::Exact, gw.data(), &p, &q);
  EXPECT_EQ(r.latent.to_vector<float>(), gw);
  EXPECT_FLOAT_EQ(static_cast<float>(r.wp.item()), static_cast<float>(p));
  EXPECT_FLOAT_EQ(static_cast<float>(r.wn.item()), static_cast<float>(q));
}

// L2 norm of G over one set: the scale of the cancellation in a signed sum, used
// as the floor of the relative tolerance so that a sum that happens to be
// near zero is not judged against itself.
double set_norm(const std::vector<float>& g, const std::vector<float>& w, float delta, bool pos) {
  double s = 0;
  for (size_t i = 0; i < g.size(); ++i)
    if (pos ? w[i] > delta : w[i] < -delta) s += static_cast<double>(g[i]) * g[i];
  return std::sqrt(s);
}

TEST(ScaleGradCuda, MatchesCpu) {
  const Device cuda = Device::cuda(0);
  TTQ_SKIP_IF_NO_DEVICE(cuda);
  std::vector<int64_t> sizes = kSizes;
  sizes.push_back(4 * 1024 * 1024 + 3);  // several elements per thread
  for (int64_t n : sizes) {
    for (WnGradMode mode : {WnGradMode::Exact, WnGradMode::Seed}) {
      SCOPED_TRACE(testing::Message()
                   << "SCALE_GRAD(n=" << n << ", mode=" << kernels::wn_grad_mode_name(mode) << ")");
      Tensor w = test::rand({n}, 30 + n), g = test::rand({n}, 40 + n);
      Tensor wp = Tensor::full({1}, 1.3), wn = Tensor::full({1}, 0.7);
      auto t = kernels::ternarize(w, 0.05, wp, wn);
      auto cpu = kernels::scale_grad(g, w, t.delta, wp, wn, mode);
      auto gpu =
          kernels::scale_grad(g.to(cuda), w.to(cuda), t.delta.to(cuda), wp.to(cuda), wn.to(cuda), mode);
      EXPECT_EQ(gpu.latent.to_vector<float>(), cpu.latent.to_vector<float>());
      const std::vector<float> gv = g.to_vector<float>(), wv = w.to_vector<float>();
      const float delta = static_cast<float>(t.delta.item());
      const double sp = cpu.wp.item(), sn = cpu.wn.item();
      EXPECT_LE(std::fabs(gpu.wp.item() - sp), 1e-6 * std::max(std::fabs(sp), set_norm(gv, wv, delta, true)));
      EXPECT_LE(std::fabs(gpu.wn.item() - sn),
                1e-6 * std::max(std::fabs(sn), set_norm(gv, wv, delta, false)));
      // Deterministic: a second run gives the same bits.
      auto again =
          kernels::scale_grad(g.to(cuda), w.to(cuda), t.delta.to(cuda), wp.to(cuda), wn.to(cuda), mode);
      EXPECT_EQ(again.wp.item(), gpu.wp.item());
      EXPECT_EQ(again.wn.item(), gpu.wn.item());
    }
  }
}

TEST(ScaleGradCuda, UnalignedViews) {
  const Device cuda = Device::cuda(0);
  TTQ_SKIP_IF_NO_DEVICE(cuda);
  const int64_t n = 5003;
  Tensor wb = test::rand({n + 1}, 50), gb = test::rand({n + 2}, 51);
  Tensor w = wb.narrow(0, 1, n), g = gb.narrow(0, 2, n);
  Tensor delta = Tensor::full({1}, 0.05), wp = Tensor::full({1}, 1.2), wn = Tensor::full({1}, 0.8);
  auto cpu = kernels::scale_grad(g, w, delta, wp, wn, WnGradMode::Exact);
  auto gpu = kernels::scale_grad(gb.to(cuda).narrow(0, 2, n), wb.to(cuda).narrow(0, 1, n), delta.to(cuda),
                                 wp.to(cuda), wn.to(cuda), WnGradMode::Exact);
  EXPECT_EQ(gpu.latent.to_vector<float>(), cpu.latent.to_vector<float>());
  EXPECT_NEAR(gpu.wp.item(), cpu.wp.item(), 1e-6 * std::sqrt(static_cast<double>(n)));
  EXPECT_NEAR(gpu.wn.item(), cpu.wn.item(), 1e-6 * std::sqrt(static_cast<double>(n)));
}

}  // namespace
}  // namespace ttq
