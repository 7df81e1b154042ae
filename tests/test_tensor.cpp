// Tensor views, copies and the autograd tape on hand-computed cases.
#include "engine/autograd.h"
#include "engine/backend.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

TEST(Tensor, FactoriesAndViews) {
  Tensor t = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5}, {2, 3});
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_TRUE(t.is_contiguous());
  Tensor tt = t.transpose(0, 1);
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.contiguous().to_vector<float>(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  Tensor n = t.narrow(1, 1, 2);
  EXPECT_EQ(n.contiguous().to_vector<float>(), (std::vector<float>{1, 2, 4, 5}));
  EXPECT_EQ(t.select(0, 1).to_vector<float>(), (std::vector<float>{3, 4, 5}));
  EXPECT_EQ(t.reshape({3, -1}).shape(), (Shape{3, 2}));
  EXPECT_THROW(t.reshape({4, -1}), Error);
  EXPECT_THROW(tt.view({6}), Error);
  EXPECT_EQ(tt.reshape({6}).to_vector<float>(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  // Views share storage.
  Tensor v = t.view({6});
  v.narrow(0, 0, 1).fill_(42);
  EXPECT_EQ(t.to_vector<float>()[0], 42.f);
}

TEST(Tensor, CopyConvertsAndScatters) {
  Tensor a = Tensor::from_vector<double>({1.5, -2.25, 3, 4}, {2, 2});
  Tensor b = Tensor::zeros({2, 2}, DType::F32);
  b.transpose(0, 1).copy_(a);
  EXPECT_EQ(b.to_vector<float>(), (std::vector<float>{1.5f, 3.f, -2.25f, 4.f}));
  EXPECT_EQ(a.to(DType::I64).to_vector<int64_t>(), (std::vector<int64_t>{1, -2, 3, 4}));
  EXPECT_THROW(b.copy_(Tensor::zeros({3})), Error);
}

TEST(Tensor, ErrorsNameBothShapes) {
  try {
    check_same_shape(Tensor::zeros({2, 3}), Tensor::zeros({4}), "add");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("[4]"), std::string::npos);
  }
}

TEST(Generator, ReproducibleAndAdvances) {
  Generator g1(7), g2(7);
  Tensor a = Tensor::randn({1000}, g1, DType::F64);
  Tensor b = Tensor::randn({1000}, g2, DType::F64);
  EXPECT_EQ(a.to_vector<double>(), b.to_vector<double>());
  EXPECT_EQ(g1.offset(), 1000u);
  auto v = a.to_vector<double>();
  double mean = 0, var = 0;
  for (double x : v) mean += x / v.size();
  for (double x : v) var += (x - mean) * (x - mean) / v.size();
  EXPECT_NEAR(mean, 0.0, 0.1);
  EXPECT_NEAR(var, 1.0, 0.15);
}

// y = x*x via a hand-written op; checks accumulation, shared gradients and
// that the graph is freed after backward.
Tensor square(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  cpu::binary(BinaryOp::Mul, x, x, y);
  if (autograd::any_requires_grad({&x})) {
    autograd::record("square", {&x}, {&y}, [xs = x.detach()](const std::vector<Tensor>& g) {
      Tensor gx = Tensor::empty(xs.shape(), xs.dtype());
      cpu::binary(BinaryOp::Mul, g[0], xs, gx);
      cpu::axpby(2.0, gx, 0.0, Tensor(), gx);
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}

TEST(Autograd, ChainAndAccumulate) {
  Tensor x = Tensor::from_vector<double>({1, -2, 3}, {3});
  x.set_requires_grad(true);
  Tensor y = square(square(x));  // x^4, dy/dx = 4x^3
  y.backward(Tensor::ones({3}, DType::F64));
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{4, -32, 108}));
  EXPECT_THROW(y.backward(Tensor::ones({3}, DType::F64)), Error);  // graph freed
  Tensor z = square(x);
  z.backward(Tensor::ones({3}, DType::F64));  // accumulates 2x
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{6, -36, 114}));
  {
    autograd::NoGradGuard ng;
    EXPECT_FALSE(square(x).requires_grad());
  }
  EXPECT_TRUE(square(x).requires_grad());
}

}  // namespace
}  // namespace ttq
