// The backend-ops test: every op of engine/ops/ops.h (cases in
// tests/backend_ops_cases.h) on every device, with outputs poisoned:
//  - Forward:  F32 and F64 results vs a naive double reference (normalised error);
//  - Backward: F64 gradients of <op(x), R> vs central finite differences in F64,
//              and the F32 gradients vs the F64 ones;
//  - on cuda:0 the forward and the gradients vs the CPU twin (skipped without a GPU).
// Then the checks that do not fit one case: BN running statistics, the fused
// dense bottleneck against the unfused ops (bit for bit on the CPU), dropout
// statistics and reproducibility, pooling sizes and divisors by hand,
// topk_correct, and error messages naming both shapes.
#include <omp.h>

#include <cmath>
#include <limits>

#include "engine/autograd.h"
#include "engine/ops/ops.h"
#include "tests/backend_ops_cases.h"
#include "tests/test_util.h"

namespace ttq::test {
namespace {

const std::vector<OpCase>& cases() {
  static const std::vector<OpCase> c = backend_op_cases();
  return c;
}

// A non-contiguous tensor holding t's values: view 1 strides the last
// dimension, view 2 makes t a channel slice (dim 1) of a wider buffer. The
// unused elements are NaN, so a kernel reading outside the view shows.
Tensor as_view(const Tensor& t, int view) {
  if (view == 0 || t.dim() == 0 || (view == 2 && t.dim() < 2)) return t;
  const int64_t d = view == 1 ? t.dim() - 1 : 1;
  Shape wide = t.shape();
  wide[d] = 2 * wide[d] + 1;
  Tensor buf = Tensor::full(wide, NAN, t.dtype(), t.device());
  Tensor v = view == 1 ? buf.as_strided(
                             t.shape(),
                             [&] {
                               auto st = buf.strides();
                               st[d] *= 2;
                               return st;
                             }(),
                             buf.offset() + 1)
                       : buf.narrow(d, 1, t.size(d));
  v.copy_(t);
  return v;
}

// The case's inputs in `dtype` on `device` (non-floating inputs unchanged), as views when the case asks.
Inputs inputs_for(const OpCase& c, DType dtype, Device device, bool views = true) {
  Inputs in = c.make();
  for (Tensor& t : in) {
    if (!t.defined()) continue;
    if (is_floating(t.dtype())) t = t.to(dtype);
    t = t.to(device);
    if (views && is_floating(t.dtype())) t = as_view(t, c.view);
  }
  return in;
}

// Reference inputs: the same values (rounded to `dtype` first), F64, contiguous, CPU.
Inputs ref_inputs(const OpCase& c, DType dtype) {
  Inputs in = inputs_for(c, dtype, Device::cpu(), false);
  for (Tensor& t : in)
    if (t.defined() && is_floating(t.dtype())) t = t.to(DType::F64).contiguous();
  return in;
}

double dot(const Tensor& y, const Tensor& r) {
  const auto a = y.to_vector<double>(), b = r.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Runs the op with gradients on the differentiable inputs and back-propagates
// R; returns one gradient per input (undefined where not checked) and y.
std::pair<Tensor, std::vector<Tensor>> run_backward(const OpCase& c, Inputs in, const Tensor& r) {
  for (size_t i = 0; i < in.size(); ++i)
    if (c.grad[i]) in[i].set_requires_grad(true);
  Tensor y = c.op(in);
  EXPECT_TRUE(y.requires_grad()) << c.name;
  if (!y.requires_grad()) return {y, {}};
  y.backward(r.to(y.dtype()).to(y.device()));
  std::vector<Tensor> g(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (!c.grad[i]) continue;
    g[i] = in[i].grad();
    EXPECT_TRUE(g[i].defined()) << c.name << ": no gradient for input " << i;
  }
  return {y, g};
}

class BackendOps : public ::testing::TestWithParam<std::tuple<int, Device>> {
 protected:
  void SetUp() override { ops::set_poison_outputs(true); }
  void TearDown() override { ops::set_poison_outputs(false); }
  const OpCase& op_case() const { return cases()[std::get<0>(GetParam())]; }
  Device device() const { return std::get<1>(GetParam()); }
};

TEST_P(BackendOps, Forward) {
  const OpCase& c = op_case();
  TTQ_SKIP_IF_NO_DEVICE(device());
  if (device().is_cpu()) {
    for (auto [dtype, tol] : {std::pair{DType::F32, 1e-5}, std::pair{DType::F64, 1e-12}}) {
      const Tensor y = c.op(inputs_for(c, dtype, Device::cpu()));
      const Tensor ref = c.ref(ref_inputs(c, dtype));
      ASSERT_EQ(y.shape(), ref.shape()) << c.name;
      EXPECT_EQ(y.dtype(), dtype) << c.name;
      EXPECT_LE(max_rel_error(y, ref), tol) << c.name << " " << dtype_name(dtype);
    }
    return;
  }
  const Tensor y_cpu = c.op(inputs_for(c, DType::F32, Device::cpu()));
  const Tensor y_dev = c.op(inputs_for(c, DType::F32, device()));
  ASSERT_EQ(y_dev.device(), device()) << c.name;
  ASSERT_EQ(y_dev.shape(), y_cpu.shape()) << c.name;
  EXPECT_LE(max_rel_error(y_dev, y_cpu), 1e-5) << c.name << " on " << device().str() << " vs cpu";
}

TEST_P(BackendOps, Backward) {
  const OpCase& c = op_case();
  TTQ_SKIP_IF_NO_DEVICE(device());
  if (std::find(c.grad.begin(), c.grad.end(), true) == c.grad.end())
    GTEST_SKIP() << c.name << " has no gradient";
  const uint64_t seed = 77 + static_cast<uint64_t>(std::get<0>(GetParam()));
  Shape yshape;
  {
    autograd::NoGradGuard ng;
    yshape = c.op(inputs_for(c, DType::F64, Device::cpu())).shape();
  }
  const Tensor r = uniform_in(yshape, seed);  // the random projection: L = <y, R>

  if (device().is_cuda()) {
    auto [y_cpu, g_cpu] = run_backward(c, inputs_for(c, DType::F32, Device::cpu()), r);
    auto [y_dev, g_dev] = run_backward(c, inputs_for(c, DType::F32, device()), r);
    for (size_t i = 0; i < g_cpu.size() && i < g_dev.size(); ++i) {
      if (!c.grad[i] || !g_cpu[i].defined() || !g_dev[i].defined()) continue;
      EXPECT_LE(max_rel_error(g_dev[i], g_cpu[i]), 1e-5)
          << c.name << ": gradient of input " << i << " on " << device().str() << " vs cpu";
    }
    return;
  }

  auto [y64, g64] = run_backward(c, inputs_for(c, DType::F64, Device::cpu()), r);
  auto [y32, g32] = run_backward(c, inputs_for(c, DType::F32, Device::cpu()), r);
  // Finite differences on dense F64 copies; all positions of small inputs, a
  // seeded sample of large ones.
  const Inputs base = ref_inputs(c, DType::F64);
  // The hundreds of tiny forwards run on one thread: forking per call costs more
  // than it saves here (the multithreaded paths ran above).
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  struct RestoreThreads {
    int n;
    ~RestoreThreads() { omp_set_num_threads(n); }
  } restore{threads};
  const auto loss = [&](const Inputs& in) {
    autograd::NoGradGuard ng;
    return dot(c.op(in), r);
  };
  for (size_t i = 0; i < base.size() && i < g64.size(); ++i) {
    if (!c.grad[i] || !g64[i].defined()) continue;
    const Tensor analytic = g64[i].contiguous();
    ASSERT_EQ(analytic.shape(), base[i].shape()) << c.name << ": gradient shape of input " << i;
    Inputs in = base;
    in[i] = base[i].clone();
    double* x = in[i].data<double>();
    const int64_t n = in[i].numel();
    std::vector<int64_t> positions;
    Generator pick(seed + i);
    for (int64_t k = 0; k < (n <= 256 ? n : 64); ++k)
      positions.push_back(n <= 256 ? k : static_cast<int64_t>(pick.below(static_cast<uint64_t>(n))));
    const double eps = 1e-6;
    const std::vector<double> a = analytic.to_vector<double>();
    double max_err = 0, scale = 1e-30;
    int64_t worst = -1;
    for (int64_t pos : positions) {
      const double orig = x[pos];
      x[pos] = orig + eps;
      const double fp = loss(in);
      x[pos] = orig - eps;
      const double fm = loss(in);
      x[pos] = orig;
      const double num = (fp - fm) / (2 * eps);
      scale = std::max(scale, std::fabs(num));
      const double err = std::fabs(a[pos] - num);
      if (!(err <= max_err)) worst = pos;  // also catches NaN
      max_err = std::isnan(err) ? INFINITY : std::max(max_err, err);
    }
    EXPECT_LE(max_err / scale, 1e-6) << c.name << ": gradient of input " << i
                                     << " vs finite differences (worst at " << worst << ")";
    if (i < g32.size() && g32[i].defined()) {
      EXPECT_LE(max_rel_error(g32[i], g64[i]), 1e-5)
          << c.name << ": F32 gradient of input " << i << " vs F64";
    }
  }
}

std::string case_name(const testing::TestParamInfo<std::tuple<int, Device>>& info) {
  return cases()[std::get<0>(info.param)].id + (std::get<1>(info.param).is_cpu() ? "_cpu" : "_cuda");
}

INSTANTIATE_TEST_SUITE_P(All, BackendOps,
                         ::testing::Combine(::testing::Range(0, static_cast<int>(cases().size())),
                                            ::testing::ValuesIn(all_devices())),
                         case_name);

// ---- checks outside the case table ----------------------------------------------------------------

class OpsOnDevice : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override {
    TTQ_SKIP_IF_NO_DEVICE(GetParam());
    ops::set_poison_outputs(true);
  }
  void TearDown() override { ops::set_poison_outputs(false); }
};

// running = 0.9 running + 0.1 batch, with the unbiased batch variance.
TEST_P(OpsOnDevice, BatchNormRunningStats) {
  const Device dev = GetParam();
  const Shape xs{3, 4, 5, 2};
  const Tensor x = uniform_in(xs, 11, 1.0, 3.0), rm0 = uniform_in({4}, 12),
               rv0 = uniform_in({4}, 13, 0.5, 2.0);
  const auto X = x.to_vector<double>(), M0 = rm0.to_vector<double>(), V0 = rv0.to_vector<double>();
  std::vector<double> rm_ref(4), rv_ref(4);
  const int64_t count = 3 * 5 * 2;
  for (int64_t c = 0; c < 4; ++c) {
    double mean = 0, var = 0;
    for (int64_t n = 0; n < 3; ++n)
      for (int64_t i = 0; i < 10; ++i) mean += X[(n * 4 + c) * 10 + i] / count;
    for (int64_t n = 0; n < 3; ++n)
      for (int64_t i = 0; i < 10; ++i) var += std::pow(X[(n * 4 + c) * 10 + i] - mean, 2) / (count - 1);
    rm_ref[c] = 0.9 * M0[c] + 0.1 * mean;
    rv_ref[c] = 0.9 * V0[c] + 0.1 * var;
  }
  for (auto [dtype, tol] : {std::pair{DType::F32, 1e-6}, std::pair{DType::F64, 1e-12}}) {
    if (dev.is_cuda() && dtype == DType::F64) continue;
    Tensor rm = rm0.to(dtype).to(dev), rv = rv0.to(dtype).to(dev);
    const Tensor w = Tensor::ones({4}, dtype, dev), b = Tensor::zeros({4}, dtype, dev);
    ops::batch_norm2d(x.to(dtype).to(dev), w, b, rm, rv, true, 0.1, 1e-5);
    EXPECT_LE(max_rel_error(rm, f64(rm_ref, {4})), tol) << dtype_name(dtype);
    EXPECT_LE(max_rel_error(rv, f64(rv_ref, {4})), tol) << dtype_name(dtype);
    // Eval mode leaves them alone.
    const auto before = rv.to_vector<double>();
    ops::batch_norm2d(x.to(dtype).to(dev), w, b, rm, rv, false, 0.1, 1e-5);
    EXPECT_EQ(rv.to_vector<double>(), before);
  }
}

// dense_bottleneck against the unfused graph conv2d(relu(batch_norm2d(concat))):
// on the CPU the same kernels run, so outputs, every gradient and the running
// statistics agree bit for bit; on CUDA (own kernels vs cuDNN's BN) to rounding.
// One part is a channel slice of a wider buffer (read in place), and the channel
// count and N*H*W are large enough for the threaded CPU path and several CUDA
// segments per channel.
TEST_P(OpsOnDevice, DenseBottleneckMatchesUnfusedOps) {
  const Device dev = GetParam();
  const int64_t n = 4, h = 21, w = 23, co = 9;
  const Tensor wide = uniform_in({n, 19, h, w}, 31, 0.5, 2.5).to(DType::F32).to(dev);
  const std::vector<Tensor> base{uniform_in({n, 13, h, w}, 32).to(DType::F32).to(dev), wide.narrow(1, 3, 11),
                                 uniform_in({n, 5, h, w}, 33).to(DType::F32).to(dev)};
  const int64_t c = 29;
  const Tensor bw = uniform_in({c}, 34, 0.5, 1.5).to(DType::F32).to(dev);
  const Tensor bb = uniform_in({c}, 35, -0.5, 0.5).to(DType::F32).to(dev);
  const Tensor cw = uniform_in({co, c, 1, 1}, 36).to(DType::F32).to(dev);
  const Tensor r = uniform_in({n, co, h, w}, 37).to(DType::F32).to(dev);
  struct Result {
    Tensor y, rm, rv;
    std::vector<Tensor> grads;  // parts, bn weight, bn bias, conv weight
  };
  auto run = [&](bool fused) {
    std::vector<Tensor> leaves;
    for (const Tensor& t : base) leaves.push_back(t.detach().set_requires_grad(true));
    for (const Tensor& t : {bw, bb, cw}) leaves.push_back(t.clone().set_requires_grad(true));
    const std::vector<Tensor> parts(leaves.begin(), leaves.begin() + 3);
    Result res{Tensor(), Tensor::zeros({c}, DType::F32, dev), Tensor::ones({c}, DType::F32, dev), {}};
    res.y = fused ? ops::dense_bottleneck(parts, leaves[3], leaves[4], res.rm, res.rv, 0.1, 1e-5, leaves[5])
                  : ops::conv2d(ops::relu(ops::batch_norm2d(ops::concat(parts, 1), leaves[3], leaves[4],
                                                            res.rm, res.rv, true, 0.1, 1e-5)),
                                leaves[5], Tensor());
    res.y.backward(r);
    for (const Tensor& t : leaves) res.grads.push_back(t.grad());
    return res;
  };
  const Result fused = run(true), naive = run(false);
  const double tol = dev.is_cpu() ? 0.0 : 1e-5;
  EXPECT_LE(max_rel_error(fused.y, naive.y), tol) << "output";
  EXPECT_LE(max_rel_error(fused.rm, naive.rm), tol) << "running mean";
  EXPECT_LE(max_rel_error(fused.rv, naive.rv), tol) << "running var";
  ASSERT_EQ(fused.grads.size(), naive.grads.size());
  for (size_t i = 0; i < fused.grads.size(); ++i) {
    ASSERT_TRUE(fused.grads[i].defined() && naive.grads[i].defined()) << "gradient " << i;
    EXPECT_LE(max_rel_error(fused.grads[i], naive.grads[i]), tol) << "gradient " << i;
  }
  // The part read in place is not copied by the forward, and its gradient is dense.
  EXPECT_EQ(fused.grads[1].shape(), (Shape{n, 11, h, w}));
}

TEST_P(OpsOnDevice, DropoutStatisticsAndReproducibility) {
  const Device dev = GetParam();
  const int64_t n = 200000;
  const double p = 0.3;
  const Tensor x = Tensor::ones({n}, DType::F32, dev);
  Generator g1(123), g2(123);
  const auto a = ops::dropout(x, p, true, g1).to_vector<float>();
  const auto b = ops::dropout(x, p, true, g2).to_vector<float>();
  EXPECT_EQ(a, b) << "same seed and offset, same mask";
  EXPECT_EQ(g1.offset(), static_cast<uint64_t>(n)) << "one counter per element";
  int64_t kept = 0;
  const float keep_value = static_cast<float>(1.0 / (1.0 - p));
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_TRUE(a[i] == 0.0f || a[i] == keep_value) << "element " << i << " = " << a[i];
    const bool expect_kept = rng::uniform_f32(123, static_cast<uint64_t>(i)) >= static_cast<float>(p);
    ASSERT_EQ(a[i] != 0.0f, expect_kept) << "element " << i;
    kept += a[i] != 0.0f;
  }
  // Binomial: sd of the kept fraction is sqrt(0.21 / n) ~ 0.001.
  EXPECT_NEAR(static_cast<double>(kept) / n, 1 - p, 0.005);
  const auto c = ops::dropout(x, p, true, g1).to_vector<float>();  // the next counters: another mask
  EXPECT_NE(a, c);
  // The mean is preserved in expectation.
  EXPECT_NEAR(ops::mean(ops::dropout(x, p, true, g1)).item(), 1.0, 0.02);
  // Identity in eval mode and for p = 0; everything dropped for p = 1.
  EXPECT_EQ(ops::dropout(x, p, false, g1).to_vector<float>(), x.to_vector<float>());
  EXPECT_EQ(ops::dropout(x, 0.0, true, g1).to_vector<float>(), x.to_vector<float>());
  EXPECT_EQ(ops::sum(ops::dropout(x, 1.0, true, g1)).item(), 0.0);
}

// Hand-computed PyTorch results: sizes and the ceil-mode divisor clipping.
TEST_P(OpsOnDevice, PoolingByHand) {
  const Device dev = GetParam();
  // nn.MaxPool2d(3, 2, padding=1): 56 -> 28; MaxPool2d(3, 2, ceil_mode=True): 56 -> 28 -> 14 -> 7.
  EXPECT_EQ(pool_out_size(56, 3, 2, 1, false), 28);
  EXPECT_EQ(pool_out_size(56, 3, 2, 0, true), 28);
  EXPECT_EQ(pool_out_size(28, 3, 2, 0, true), 14);
  EXPECT_EQ(pool_out_size(14, 3, 2, 0, true), 7);
  EXPECT_EQ(pool_out_size(8, 3, 2, 0, false), 3);
  EXPECT_EQ(pool_out_size(8, 3, 2, 0, true), 4);
  // The last window would start in the right padding: dropped (3 -> 2).
  EXPECT_EQ(pool_out_size(4, 2, 3, 1, true), 2);
  EXPECT_EQ(pool_out_size(6, 3, 2, 1, true), 4);
  EXPECT_EQ(pool_out_size(7, 7, 7, 0, false), 1);
  // nn.AvgPool2d(3, 2, padding=1, ceil_mode=True) on ones(1,1,6,6): per axis the
  // windows hold (2 real of 3), 3/3, 3/3, (1 real of 2 after clipping at the padded edge).
  const Tensor ones = Tensor::ones({1, 1, 6, 6}, DType::F32, dev);
  const auto y = ops::avg_pool2d(ones, 3, 2, 1, true, true).to_vector<float>();
  ASSERT_EQ(y.size(), 16u);
  const double axis[4] = {2.0 / 3, 1, 1, 0.5};
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(y[i * 4 + j], axis[i] * axis[j], 1e-7) << i << "," << j;
  for (float v : ops::avg_pool2d(ones, 3, 2, 1, true, false).to_vector<float>()) EXPECT_NEAR(v, 1.0f, 1e-7);
  // Max-pool indices: the first maximum in scan order wins ties.
  const Tensor tie = Tensor::from_vector<float>({1, 5, 5, 2}, {1, 1, 2, 2}).to(dev);
  EXPECT_EQ(ops::max_pool2d(tie, 2, 2).to_vector<float>(), std::vector<float>{5});
  EXPECT_THROW(ops::max_pool2d(Tensor::ones({1, 1, 2, 2}, DType::F32, dev), 3, 1), Error);
  // Where the gradient goes, on a row wide enough for the vectorised interior: the
  // first maximum of a tie, the last NaN of a window with NaNs (PyTorch's rule).
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor xw = Tensor::from_vector<float>({1, 5, 3, 3, nan, 2, 0, 0,  //
                                          5, 2, 3, 1, 4, nan, 0, 0},
                                         {1, 1, 2, 8})
                  .to(dev);
  xw.set_requires_grad(true);
  Tensor yw = ops::max_pool2d(xw, 2, 2);
  const std::vector<float> yv = yw.to_vector<float>();
  ASSERT_EQ(yv.size(), 4u);
  EXPECT_EQ(yv[0], 5.0f);
  EXPECT_EQ(yv[1], 3.0f);
  EXPECT_TRUE(std::isnan(yv[2]));
  EXPECT_EQ(yv[3], 0.0f);
  ops::sum(yw).backward();
  std::vector<float> expect_grad(16, 0.0f);
  for (int i : {1, 2, 13, 6}) expect_grad[i] = 1.0f;
  EXPECT_EQ(xw.grad().to_vector<float>(), expect_grad);
}

TEST_P(OpsOnDevice, TopkCorrectByHand) {
  const Device dev = GetParam();
  const Tensor logits = Tensor::from_vector<float>({0.1f, 0.5f, 0.2f, 0.9f,  //
                                                    3.0f, 1.0f, 2.0f, 0.0f,  //
                                                    0.0f, 0.3f, 0.2f, 0.1f},
                                                   {3, 4})
                            .to(dev);
  const Tensor labels = Tensor::from_vector<int64_t>({1, 0, 0}, {3}).to(dev);
  // Ranks of the labels: 2, 1, 4.
  EXPECT_EQ(ops::topk_correct(logits, labels, 1), 1);
  EXPECT_EQ(ops::topk_correct(logits, labels, 2), 2);
  EXPECT_EQ(ops::topk_correct(logits, labels, 3), 2);
  EXPECT_EQ(ops::topk_correct(logits, labels, 4), 3);
  EXPECT_EQ(ops::topk_correct(logits, labels, 5), 3);
}

// A class tying the true class ranks ahead of it; a row holding NaN or +-inf
// anywhere is wrong. Counted by hand.
TEST_P(OpsOnDevice, TopkCorrectCountsTiesAndNonFiniteRowsAsWrong) {
  const Device dev = GetParam();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const Tensor logits = Tensor::from_vector<float>({1.0f, 1.0f,  1.0f, 1.0f,   // all equal (collapsed net)
                                                    2.0f, 2.0f,  0.0f, -1.0f,  // a tie for first place
                                                    3.0f, nan,   0.0f, 0.0f,   // NaN elsewhere in the row
                                                    nan,  nan,   nan,  nan,    // NaN weights
                                                    inf,  0.0f,  0.0f, 0.0f,   // +inf on the label
                                                    0.0f, -inf,  1.0f, 0.0f,   // -inf elsewhere
                                                    0.5f, 0.25f, 0.0f, 0.0f},  // an honest win
                                                   {7, 4})
                            .to(dev);
  const Tensor labels = Tensor::from_vector<int64_t>({2, 0, 0, 1, 0, 2, 0}, {7}).to(dev);
  EXPECT_EQ(ops::topk_correct(logits, labels, 1), 1);  // only the last row
  // Top-2: the tie now fits (one class ahead); the collapsed row has three ahead.
  EXPECT_EQ(ops::topk_correct(logits, labels, 2), 2);
  EXPECT_EQ(ops::topk_correct(logits, labels, 3), 2);
  // Top-4 of 4 classes: every finite row counts, no non-finite one does.
  EXPECT_EQ(ops::topk_correct(logits, labels, 4), 3);

  // A collapsed network over many rows scores 0, not 1 / classes or 100%.
  const Tensor flat = Tensor::full({64, 10}, 0.25f).to(dev);
  std::vector<int64_t> ys(64);
  for (int64_t i = 0; i < 64; ++i) ys[i] = i % 10;
  const Tensor y = Tensor::from_vector<int64_t>(ys, {64}).to(dev);
  EXPECT_EQ(ops::topk_correct(flat, y, 1), 0);
  EXPECT_EQ(ops::topk_correct(flat, y, 5), 0);
}

// Each mismatch names both shapes.
TEST_P(OpsOnDevice, ErrorsNameBothShapes) {
  const Device dev = GetParam();
  auto expect_both = [](const std::function<void()>& f, const std::string& a, const std::string& b) {
    try {
      f();
      ADD_FAILURE() << "no error for " << a << " / " << b;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(a), std::string::npos) << msg;
      EXPECT_NE(msg.find(b), std::string::npos) << msg;
    }
  };
  auto z = [&](const Shape& s) { return Tensor::zeros(s, DType::F32, dev); };
  expect_both([&] { ops::add(z({2, 3}), z({3, 2})); }, "[2, 3]", "[3, 2]");
  expect_both([&] { ops::mul(z({4}), z({5})); }, "[4]", "[5]");
  expect_both(
      [&] {
        ops::conv2d(z({1, 3, 5, 5}), z({4, 2, 3, 3}), Tensor());
      },
      "[1, 3, 5, 5]", "[4, 2, 3, 3]");
  expect_both([&] { ops::conv2d(z({1, 3, 5, 5}), z({4, 3, 3, 3}), z({5})); }, "[5]", "[4, 3, 3, 3]");
  expect_both([&] { ops::linear(z({2, 7}), z({3, 6}), Tensor()); }, "[2, 7]", "[3, 6]");
  expect_both([&] { ops::matmul(z({2, 7}), z({6, 3})); }, "[2, 7]", "[6, 3]");
  expect_both([&] { ops::concat({z({2, 3}), z({3, 4})}, 0); }, "[2, 3]", "[3, 4]");
  expect_both([&] { ops::cross_entropy(z({4, 5}), Tensor::zeros({3}, DType::I64, dev)); }, "[3]", "[4, 5]");
  Tensor rm = z({3}), rv = z({3});
  expect_both(
      [&] {
        ops::batch_norm2d(z({2, 4, 3, 3}), z({4}), z({4}), rm, rv, true);
      },
      "[3]", "[2, 4, 3, 3]");
  Tensor rm5 = z({5}), rv5 = z({5});
  expect_both(
      [&] {
        ops::dense_bottleneck({z({2, 3, 4, 4}), z({2, 2, 5, 4})}, z({5}), z({5}), rm5, rv5, 0.1, 1e-5,
                              z({4, 5, 1, 1}));
      },
      "[2, 3, 4, 4]", "[2, 2, 5, 4]");
  expect_both(
      [&] {
        ops::dense_bottleneck({z({2, 3, 4, 4}), z({2, 2, 4, 4})}, z({5}), z({5}), rm5, rv5, 0.1, 1e-5,
                              z({4, 6, 1, 1}));
      },
      "[4, 6, 1, 1]", "5");
  EXPECT_THROW(ops::add(z({2}), Tensor::zeros({2}, DType::F64, dev)), Error);
  EXPECT_THROW(ops::relu(Tensor::zeros({2}, DType::I64, dev)), Error);
  EXPECT_THROW(ops::cross_entropy(z({2, 3}), Tensor::from_vector<int64_t>({0, 3}, {2}).to(dev)), Error);
  EXPECT_THROW(ops::batch_norm2d(z({1, 4, 1, 1}), z({4}), z({4}), rm, rv, true),
               Error);  // one value per channel
}

INSTANTIATE_TEST_SUITE_P(All, OpsOnDevice, ::testing::ValuesIn(all_devices()), device_name);

// Cross-path check on the CPU: batch N equals N batches of 1, forward and
// backward. The batch runs whole samples per thread (with per-thread filter
// gradient sums), the single samples split each GEMM across threads. Eval
// forward twice gives the same bits.
TEST(BackendOpsCpu, ConvBatchEqualsSingles) {
  const Tensor x = uniform_in({3, 16, 14, 14}, 5).to(DType::F32),
               w = uniform_in({12, 16, 3, 3}, 6).to(DType::F32);
  const Tensor b = uniform_in({12}, 7).to(DType::F32), r = uniform_in({3, 12, 14, 14}, 8).to(DType::F32);
  auto run = [&](const Tensor& xs, const Tensor& rs) {
    Tensor xg = xs.clone(), wg = w.clone(), bg = b.clone();
    xg.set_requires_grad(true), wg.set_requires_grad(true), bg.set_requires_grad(true);
    Tensor y = ops::conv2d(xg, wg, bg, 1, 1);
    y.backward(rs.contiguous());
    return std::vector<Tensor>{y.detach(), xg.grad(), wg.grad(), bg.grad()};
  };
  const auto batch = run(x, r);
  Tensor gw_sum = Tensor::zeros(w.shape()), gb_sum = Tensor::zeros(b.shape());
  for (int64_t n = 0; n < 3; ++n) {
    const auto one = run(x.narrow(0, n, 1), r.narrow(0, n, 1));
    EXPECT_LE(max_rel_error(one[0], batch[0].narrow(0, n, 1).contiguous()), 1e-6) << "y of sample " << n;
    EXPECT_LE(max_rel_error(one[1], batch[1].narrow(0, n, 1).contiguous()), 1e-6) << "gx of sample " << n;
    gw_sum = ops::add(gw_sum, one[2]);
    gb_sum = ops::add(gb_sum, one[3]);
  }
  EXPECT_LE(max_rel_error(gw_sum, batch[2]), 1e-5);
  EXPECT_LE(max_rel_error(gb_sum, batch[3]), 1e-5);
  EXPECT_EQ(ops::conv2d(x, w, b, 1, 1).to_vector<float>(), batch[0].to_vector<float>());
}

// Cross-path check on the CPU: a grouped conv equals its groups run as separate convs
// on channel slices, forward and backward, whatever the thread count (1 thread: no
// split; 3 and 4 threads with one sample: the split GEMMs for 2 groups, the groups
// spread over threads for 8; depthwise layers, run by direct loops, against one-channel
// GEMM convs), and groups = 1 / dilation = 1 give the bits of the plain call.
TEST(BackendOpsCpu, GroupedConvEqualsItsGroupsAsSeparateConvs) {
  struct Case {
    int64_t n, c, hw, co, k;
    int stride, pad, dilation, groups;
  };
  const int threads = omp_get_max_threads();
  for (const Case& cs : {Case{1, 8, 33, 8, 3, 1, 2, 2, 2}, Case{1, 16, 30, 16, 3, 2, 1, 1, 8},
                         Case{3, 12, 17, 6, 3, 1, 1, 1, 3}, Case{1, 8, 40, 16, 1, 1, 0, 1, 2},
                         Case{2, 8, 15, 16, 3, 2, 1, 1, 8}, Case{1, 6, 13, 6, 3, 1, 2, 2, 6}}) {
    const Tensor x = uniform_in({cs.n, cs.c, cs.hw, cs.hw}, 21).to(DType::F32);
    const Tensor w = uniform_in({cs.co, cs.c / cs.groups, cs.k, cs.k}, 22).to(DType::F32);
    const Tensor b = uniform_in({cs.co}, 23).to(DType::F32);
    const int64_t ho = conv_out_size(cs.hw, static_cast<int>(cs.k), cs.stride, cs.pad, cs.dilation);
    const Tensor r = uniform_in({cs.n, cs.co, ho, ho}, 24).to(DType::F32);
    for (int t : {1, 3, 4}) {
      omp_set_num_threads(t);
      Tensor xg = x.clone(), wg = w.clone(), bg = b.clone();
      xg.set_requires_grad(true), wg.set_requires_grad(true), bg.set_requires_grad(true);
      Tensor y = ops::conv2d(xg, wg, bg, cs.stride, cs.pad, cs.dilation, cs.groups);
      y.backward(r);
      const int64_t cg = cs.c / cs.groups, og = cs.co / cs.groups;
      for (int64_t g = 0; g < cs.groups; ++g) {
        Tensor xs = x.narrow(1, g * cg, cg).contiguous(), ws = w.narrow(0, g * og, og).contiguous(),
               bs = b.narrow(0, g * og, og).contiguous();
        xs.set_requires_grad(true), ws.set_requires_grad(true), bs.set_requires_grad(true);
        Tensor ys = ops::conv2d(xs, ws, bs, cs.stride, cs.pad, cs.dilation, 1);
        ys.backward(r.narrow(1, g * og, og).contiguous());
        const std::string what = "groups " + std::to_string(cs.groups) + ", group " + std::to_string(g) +
                                 ", threads " + std::to_string(t);
        EXPECT_LE(max_rel_error(y.detach().narrow(1, g * og, og).contiguous(), ys.detach()), 1e-6) << what;
        EXPECT_LE(max_rel_error(xg.grad().narrow(1, g * cg, cg).contiguous(), xs.grad()), 1e-6) << what;
        EXPECT_LE(max_rel_error(wg.grad().narrow(0, g * og, og).contiguous(), ws.grad()), 1e-5) << what;
        EXPECT_LE(max_rel_error(bg.grad().narrow(0, g * og, og).contiguous(), bs.grad()), 1e-5) << what;
      }
    }
    omp_set_num_threads(threads);
  }
  // The defaults are the plain call, bit for bit.
  const Tensor x = uniform_in({2, 5, 9, 9}, 25).to(DType::F32),
               w = uniform_in({4, 5, 3, 3}, 26).to(DType::F32);
  Conv2dParams p;
  p.stride_h = p.stride_w = 2;
  p.pad_h = p.pad_w = 1;
  EXPECT_EQ(ops::conv2d(x, w, Tensor(), p).to_vector<float>(),
            ops::conv2d(x, w, Tensor(), 2, 1).to_vector<float>());
  EXPECT_EQ(ops::conv2d(x, w, Tensor(), 2, 1, 1, 1).to_vector<float>(),
            ops::conv2d(x, w, Tensor(), 2, 1).to_vector<float>());
}

// Groups that do not divide the channels, a weight of the wrong per-group width and a
// dilated kernel that does not fit are refused with both shapes named.
TEST(BackendOpsCpu, GroupedConvChecks) {
  auto z = [](const Shape& s) { return Tensor::zeros(s, DType::F32); };
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string m = message([&] { ops::conv2d(z({1, 6, 5, 5}), z({4, 3, 3, 3}), Tensor(), 1, 0, 1, 4); });
  EXPECT_NE(m.find("4 groups"), std::string::npos) << m;
  m = message([&] { ops::conv2d(z({1, 6, 5, 5}), z({4, 2, 3, 3}), Tensor(), 1, 0, 1, 2); });
  EXPECT_NE(m.find("[1, 6, 5, 5]"), std::string::npos) << m;
  EXPECT_NE(m.find("[4, 2, 3, 3]"), std::string::npos) << m;
  m = message([&] { ops::conv2d(z({1, 2, 5, 5}), z({2, 2, 3, 3}), Tensor(), 1, 0, 3, 1); });
  EXPECT_NE(m.find("does not fit"), std::string::npos) << m;
  EXPECT_EQ(ops::conv2d(z({1, 2, 5, 5}), z({2, 2, 3, 3}), Tensor(), 1, 0, 2, 1).shape(), Shape({1, 2, 1, 1}));
  // A kernel that fits only because the stride would round the size up is refused too.
  EXPECT_THROW(ops::conv2d(z({1, 1, 2, 2}), z({1, 1, 3, 3}), Tensor(), 2, 0), Error);
  EXPECT_THROW(ops::conv2d(z({1, 4, 5, 5}), z({4, 1, 3, 3}), Tensor(), 1, 0, 0, 4), Error);
}

}  // namespace
}  // namespace ttq::test
