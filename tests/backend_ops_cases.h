// The op cases of tests/test_backend_ops.cpp: for each op, seeded inputs, the
// engine call and a naive reference written here, independently of the
// engine (plain loops in double over host vectors; pooling output sizes
// enumerated window by window rather than by the engine's division formula).
// A new op joins with one add(...) line in backend_op_cases().
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/ops/ops.h"
#include "engine/rng.h"
#include "engine/tensor.h"

namespace ttq::test {

using Inputs = std::vector<Tensor>;

struct OpCase {
  std::string name;              // printed on failure: "CONV2D(x=[2,3,7,7], w=[5,3,3,3], s=2, p=1)"
  std::string id;                // GoogleTest-safe name: "CONV2D_1"
  std::function<Inputs()> make;  // CPU inputs; floating ones in F64 (the harness converts)
  std::vector<bool> grad;        // which inputs get gradients checked
  std::function<Tensor(const Inputs&)> op;   // the engine, on the inputs' device
  std::function<Tensor(const Inputs&)> ref;  // naive reference on F64 CPU contiguous inputs
  int view = 0;                              // 0 dense, 1 strided last dim, 2 channel slice of a wider buffer
};

// ---- input generators (F64, CPU, seeded) ----------------------------------------------------

inline Tensor uniform_in(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  Generator g(seed);
  return Tensor::uniform(s, g, lo, hi, DType::F64);
}

// Values at least 0.1 away from 0 (ReLU's kink).
inline Tensor away_from_zero(const Shape& s, uint64_t seed) {
  Tensor t = uniform_in(s, seed);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = (p[i] < 0 ? -0.1 : 0.1) + 0.9 * p[i];
  return t;
}

// A random permutation of evenly spaced values in (-1, 1): no ties, gaps far
// above the finite-difference step (max-pool's kinks).
inline Tensor distinct(const Shape& s, uint64_t seed) {
  Tensor t = Tensor::empty(s, DType::F64);
  const int64_t n = t.numel();
  std::vector<int64_t> perm(n);
  for (int64_t i = 0; i < n; ++i) perm[i] = i;
  Generator g(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[g.below(static_cast<uint64_t>(i + 1))]);
  double* p = t.data<double>();
  for (int64_t i = 0; i < n; ++i)
    p[i] = (static_cast<double>(perm[i]) + 0.5) / static_cast<double>(n) * 2 - 1;
  return t;
}

inline Tensor labels_in(int64_t n, int64_t c, uint64_t seed) {
  Generator g(seed);
  std::vector<int64_t> v(n);
  for (auto& x : v) x = static_cast<int64_t>(g.below(static_cast<uint64_t>(c)));
  return Tensor::from_vector<int64_t>(v, {n});
}

// ---- naive references -----------------------------------------------------------------------

inline std::vector<double> host(const Tensor& t) { return t.to_vector<double>(); }
inline Tensor f64(const std::vector<double>& v, const Shape& s) { return Tensor::from_vector<double>(v, s); }

// PyTorch's conv2d(x, w, b, stride s, padding p, dilation d, groups g): output channel o
// sums the channels of its group, o / (O/g); output sizes counted window by window.
inline Tensor conv2d_ref(const Tensor& x, const Tensor& w, const Tensor& b, int s, int p, int d = 1,
                         int g = 1) {
  const auto X = host(x), W = host(w);
  const auto B = b.defined() ? host(b) : std::vector<double>(w.size(0), 0.0);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), Wd = x.size(3);
  const int64_t O = w.size(0), CG = w.size(1), KH = w.size(2), KW = w.size(3), OG = O / g;
  // Windows whose last tap (dilated) stays inside the padded input.
  auto count = [&](int64_t in, int64_t k) {
    int64_t n = 0;
    while (n * s + d * (k - 1) < in + 2 * p) ++n;
    return n;
  };
  const int64_t HO = count(H, KH), WO = count(Wd, KW);
  std::vector<double> y(N * O * HO * WO);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oh = 0; oh < HO; ++oh)
        for (int64_t ow = 0; ow < WO; ++ow) {
          double acc = B[o];
          for (int64_t cg = 0; cg < CG; ++cg) {
            const int64_t c = (o / OG) * CG + cg;
            for (int64_t i = 0; i < KH; ++i)
              for (int64_t j = 0; j < KW; ++j) {
                const int64_t ih = oh * s - p + i * d, iw = ow * s - p + j * d;
                if (ih < 0 || ih >= H || iw < 0 || iw >= Wd) continue;
                acc += X[((n * C + c) * H + ih) * Wd + iw] * W[((o * CG + cg) * KH + i) * KW + j];
              }
          }
          y[((n * O + o) * HO + oh) * WO + ow] = acc;
        }
  return f64(y, {N, O, HO, WO});
}

// alpha * op(a) @ op(b) + beta * c (c ignored when beta == 0).
inline Tensor gemm_ref(bool ta, bool tb, double alpha, const Tensor& a, const Tensor& b, double beta,
                       const Tensor& c) {
  const auto A = host(a), B = host(b), Cv = host(c);
  const int64_t m = c.size(0), n = c.size(1), k = ta ? a.size(0) : a.size(1);
  std::vector<double> y(m * n);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t l = 0; l < k; ++l)
        acc += (ta ? A[l * m + i] : A[i * k + l]) * (tb ? B[j * k + l] : B[l * n + j]);
      y[i * n + j] = alpha * acc + (beta != 0 ? beta * Cv[i * n + j] : 0.0);
    }
  return f64(y, {m, n});
}

inline Tensor batch_norm_train_ref(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const auto X = host(x);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  std::vector<double> y(X.size());
  for (int64_t c = 0; c < C; ++c) {
    double mean = 0, var = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) mean += X[(n * C + c) * HW + i];
    mean /= static_cast<double>(N * HW);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) var += std::pow(X[(n * C + c) * HW + i] - mean, 2);
    var /= static_cast<double>(N * HW);
    const double wc = w.defined() ? host(w)[c] : 1.0, bc = b.defined() ? host(b)[c] : 0.0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t k = (n * C + c) * HW + i;
        y[k] = (X[k] - mean) / std::sqrt(var + eps) * wc + bc;
      }
  }
  return f64(y, x.shape());
}

inline Tensor batch_norm_eval_ref(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& rm,
                                  const Tensor& rv, double eps) {
  const auto X = host(x), W = host(w), B = host(b), M = host(rm), V = host(rv);
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  std::vector<double> y(X.size());
  for (size_t k = 0; k < X.size(); ++k) {
    const int64_t c = static_cast<int64_t>(k) / HW % C;
    y[k] = (X[k] - M[c]) / std::sqrt(V[c] + eps) * W[c] + B[c];
  }
  return f64(y, x.shape());
}

// Pooling windows, enumerated (window o starts at o*s - p in input
// coordinates): floor mode keeps the windows that fit in the padded input;
// ceil mode also keeps the first one that overhangs it, provided it starts
// inside the input or the left padding (start < in).
inline int64_t pool_windows_ref(int64_t in, int k, int s, int p, bool ceil_mode) {
  int64_t count = 0;
  for (int64_t o = 0;; ++o) {
    const int64_t start = o * s - p;
    const bool fits = start + k <= in + p;
    const bool first_overhang = o == 0 || (o - 1) * s - p + k < in + p;
    if (fits || (ceil_mode && first_overhang && start < in)) {
      ++count;
    } else {
      break;
    }
  }
  return count;
}

inline Tensor max_pool_ref(const Tensor& x, int k, int s, int p, bool ceil_mode) {
  const auto X = host(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t HO = pool_windows_ref(H, k, s, p, ceil_mode), WO = pool_windows_ref(W, k, s, p, ceil_mode);
  std::vector<double> y(N * C * HO * WO);
  for (int64_t pl = 0; pl < N * C; ++pl)
    for (int64_t oh = 0; oh < HO; ++oh)
      for (int64_t ow = 0; ow < WO; ++ow) {
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t i = 0; i < k; ++i)
          for (int64_t j = 0; j < k; ++j) {
            const int64_t ih = oh * s - p + i, iw = ow * s - p + j;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) m = std::max(m, X[(pl * H + ih) * W + iw]);
          }
        y[(pl * HO + oh) * WO + ow] = m;
      }
  return f64(y, {N, C, HO, WO});
}

// Average over the window; divisor = its cells inside the padded input
// (count_include_pad) or inside the input.
inline Tensor avg_pool_ref(const Tensor& x, int k, int s, int p, bool ceil_mode, bool count_include_pad) {
  const auto X = host(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t HO = pool_windows_ref(H, k, s, p, ceil_mode), WO = pool_windows_ref(W, k, s, p, ceil_mode);
  std::vector<double> y(N * C * HO * WO);
  for (int64_t pl = 0; pl < N * C; ++pl)
    for (int64_t oh = 0; oh < HO; ++oh)
      for (int64_t ow = 0; ow < WO; ++ow) {
        double sum = 0;
        int64_t in_input = 0, in_padded = 0;
        for (int64_t i = 0; i < k; ++i)
          for (int64_t j = 0; j < k; ++j) {
            const int64_t ih = oh * s - p + i, iw = ow * s - p + j;
            if (ih >= -p && ih < H + p && iw >= -p && iw < W + p) ++in_padded;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
              ++in_input;
              sum += X[(pl * H + ih) * W + iw];
            }
          }
        y[(pl * HO + oh) * WO + ow] = sum / static_cast<double>(count_include_pad ? in_padded : in_input);
      }
  return f64(y, {N, C, HO, WO});
}

inline Tensor log_softmax_ref(const Tensor& x) {
  const auto X = host(x);
  const int64_t N = x.size(0), C = x.size(1);
  std::vector<double> y(X.size());
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += std::exp(X[n * C + c]);
    for (int64_t c = 0; c < C; ++c) y[n * C + c] = X[n * C + c] - std::log(s);
  }
  return f64(y, x.shape());
}

inline Tensor map_ref(const Tensor& x, const std::function<double(double)>& f) {
  auto v = host(x);
  for (double& e : v) e = f(e);
  return f64(v, x.shape());
}

inline Tensor zip_ref(const Tensor& a, const Tensor& b, const std::function<double(double, double)>& f) {
  auto u = host(a), v = host(b);
  for (size_t i = 0; i < u.size(); ++i) u[i] = f(u[i], v[i]);
  return f64(u, a.shape());
}

// conv1x1(relu(batch_norm_train(concat(parts)))): inputs = parts..., bn_weight, bn_bias, conv_weight.
inline Tensor dense_bottleneck_ref(const Inputs& in, size_t parts, double eps) {
  const int64_t N = in[0].size(0), H = in[0].size(2), W = in[0].size(3);
  int64_t C = 0;
  for (size_t p = 0; p < parts; ++p) C += in[p].size(1);
  std::vector<double> x(N * C * H * W);
  int64_t c0 = 0;
  for (size_t p = 0; p < parts; ++p) {
    const auto v = host(in[p]);
    const int64_t cp = in[p].size(1);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < cp; ++c)
        for (int64_t i = 0; i < H * W; ++i) x[((n * C + c0 + c) * H * W) + i] = v[(n * cp + c) * H * W + i];
    c0 += cp;
  }
  const Tensor y = batch_norm_train_ref(f64(x, {N, C, H, W}), in[parts], in[parts + 1], eps);
  return conv2d_ref(map_ref(y, [](double v) { return v > 0 ? v : 0.0; }), in[parts + 2], Tensor(), 1, 0);
}

// ---- the cases --------------------------------------------------------------------------------

inline std::string fmt_shape(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << "]";
  return os.str();
}

inline std::vector<OpCase> backend_op_cases() {
  std::vector<OpCase> cases;
  uint64_t seed = 1000;
  // One case: label, inputs, differentiable flags, engine call, reference, view kind.
  auto add = [&](const std::string& op, const std::string& args, std::function<Inputs()> make,
                 std::vector<bool> grad, std::function<Tensor(const Inputs&)> run,
                 std::function<Tensor(const Inputs&)> ref, int view = 0) {
    int count = 0;
    for (const auto& c : cases) count += c.id.rfind(op + "_", 0) == 0 ? 1 : 0;
    OpCase c;
    c.name = op + "(" + args + (view ? ", view=" + std::to_string(view) : "") + ")";
    c.id = op + "_" + std::to_string(count);
    c.make = std::move(make);
    c.grad = std::move(grad);
    c.op = std::move(run);
    c.ref = std::move(ref);
    c.view = view;
    cases.push_back(std::move(c));
  };
  auto sd = [&] { return seed += 17; };

  // conv2d
  auto conv = [&](Shape xs, Shape ws, int s, int p, bool bias, int view = 0) {
    const uint64_t s0 = sd();
    std::string args = "x=" + fmt_shape(xs) + ", w=" + fmt_shape(ws) + ", s=" + std::to_string(s) +
                       ", p=" + std::to_string(p) + (bias ? ", bias" : "");
    add(
        "CONV2D", args,
        [=] {
          return Inputs{uniform_in(xs, s0), uniform_in(ws, s0 + 1),
                        bias ? uniform_in({ws[0]}, s0 + 2) : Tensor()};
        },
        {true, true, bias}, [=](const Inputs& in) { return ops::conv2d(in[0], in[1], in[2], s, p); },
        [=](const Inputs& in) { return conv2d_ref(in[0], in[1], in[2], s, p); }, view);
  };
  conv({2, 3, 7, 7}, {5, 3, 3, 3}, 1, 1, true);
  conv({2, 3, 7, 7}, {5, 3, 3, 3}, 2, 1, true, 1);
  conv({1, 4, 6, 5}, {3, 4, 1, 1}, 1, 0, false);
  conv({3, 5, 5, 5}, {7, 5, 1, 1}, 1, 0, true, 2);
  conv({2, 2, 8, 7}, {1, 2, 3, 2}, 3, 2, false);
  conv({2, 3, 5, 5}, {4, 3, 1, 1}, 2, 0, false);
  conv({3, 31, 5, 5}, {2, 31, 3, 3}, 1, 0, true, 2);
  conv({1, 16, 24, 24}, {16, 16, 3, 3}, 1, 1, true);  // one sample: the split-GEMM path
  conv({2, 16, 12, 12}, {16, 16, 3, 3}, 1, 1, true);  // whole samples per thread, partial filter sums
  conv({2, 32, 20, 20}, {8, 32, 3, 3}, 1, 1, true);   // several row tiles per sample
  conv({2, 32, 21, 21}, {8, 32, 3, 3}, 2, 1, false);  // ... with stride
  conv({1, 3, 9, 9}, {8, 3, 3, 3}, 2, 1, false, 1);
  // Groups (2, 3, depthwise) and dilation, with strides, paddings, odd sizes and views.
  auto gconv = [&](Shape xs, Shape ws, int s, int p, int d, int g, bool bias, int view = 0) {
    const uint64_t s0 = sd();
    std::string args = "x=" + fmt_shape(xs) + ", w=" + fmt_shape(ws) + ", s=" + std::to_string(s) +
                       ", p=" + std::to_string(p) + ", d=" + std::to_string(d) + ", g=" + std::to_string(g) +
                       (bias ? ", bias" : "");
    add(
        "GROUPED_CONV2D", args,
        [=] {
          return Inputs{uniform_in(xs, s0), uniform_in(ws, s0 + 1),
                        bias ? uniform_in({ws[0]}, s0 + 2) : Tensor()};
        },
        {true, true, bias}, [=](const Inputs& in) { return ops::conv2d(in[0], in[1], in[2], s, p, d, g); },
        [=](const Inputs& in) { return conv2d_ref(in[0], in[1], in[2], s, p, d, g); }, view);
  };
  gconv({2, 3, 7, 7}, {5, 3, 3, 3}, 1, 2, 2, 1, true);       // dilation alone
  gconv({2, 3, 9, 8}, {4, 3, 3, 2}, 2, 1, 2, 1, false, 1);   // dilated, strided, rectangular kernel
  gconv({2, 4, 7, 5}, {6, 2, 3, 3}, 1, 1, 1, 2, true);       // 2 groups
  gconv({1, 6, 9, 9}, {4, 3, 3, 3}, 2, 1, 2, 2, false, 2);   // 2 groups, dilated, strided, channel slice
  gconv({2, 9, 6, 7}, {6, 3, 3, 3}, 1, 0, 1, 3, true, 1);    // 3 groups
  gconv({3, 6, 8, 8}, {9, 2, 1, 1}, 1, 0, 1, 3, false);      // 3 groups, 1x1 (direct GEMM)
  gconv({1, 6, 11, 9}, {3, 2, 3, 3}, 3, 2, 2, 3, true);      // 3 groups, dilation 2, stride 3
  gconv({2, 5, 7, 7}, {5, 1, 3, 3}, 1, 1, 1, 5, true);       // depthwise
  gconv({2, 5, 9, 7}, {10, 1, 3, 3}, 2, 2, 2, 5, false, 2);  // depthwise x2, dilated, strided, slice
  gconv({1, 7, 5, 5}, {7, 1, 1, 1}, 1, 0, 1, 7, false);      // depthwise 1x1
  // One sample above the threading threshold: the split paths.
  gconv({1, 32, 32, 32}, {32, 1, 3, 3}, 1, 1, 1, 32, true);
  gconv({1, 8, 32, 32}, {8, 4, 3, 3}, 1, 2, 2, 2, false);
  gconv({4, 12, 14, 14}, {12, 1, 3, 3}, 2, 1, 1, 12, false);  // several samples, depthwise, strided

  // linear / matmul / raw gemm
  auto linear = [&](int64_t n, int64_t in, int64_t out, bool bias, int view = 0) {
    const uint64_t s0 = sd();
    add(
        "LINEAR", "x=" + fmt_shape({n, in}) + ", w=" + fmt_shape({out, in}) + (bias ? ", bias" : ""),
        [=] {
          return Inputs{uniform_in({n, in}, s0), uniform_in({out, in}, s0 + 1),
                        bias ? uniform_in({out}, s0 + 2) : Tensor()};
        },
        {true, true, bias}, [](const Inputs& in) { return ops::linear(in[0], in[1], in[2]); },
        [=](const Inputs& in) {
          Tensor y = gemm_ref(false, true, 1.0, in[0], in[1], 0.0, Tensor::zeros({n, out}, DType::F64));
          if (!bias) return y;
          auto v = host(y), b = host(in[2]);
          for (int64_t i = 0; i < n * out; ++i) v[i] += b[i % out];
          return f64(v, {n, out});
        },
        view);
  };
  linear(3, 7, 5, true);
  linear(1, 31, 9, false, 1);
  linear(9, 33, 17, true, 2);
  auto matmul = [&](int64_t m, int64_t k, int64_t n, int view = 0) {
    const uint64_t s0 = sd();
    add(
        "MATMUL", "a=" + fmt_shape({m, k}) + ", b=" + fmt_shape({k, n}),
        [=] {
          return Inputs{uniform_in({m, k}, s0), uniform_in({k, n}, s0 + 1)};
        },
        {true, true}, [](const Inputs& in) { return ops::matmul(in[0], in[1]); },
        [=](const Inputs& in) {
          return gemm_ref(false, false, 1.0, in[0], in[1], 0.0, Tensor::zeros({m, n}, DType::F64));
        },
        view);
  };
  matmul(3, 7, 5);
  matmul(31, 9, 1, 1);
  auto gemm = [&](bool ta, bool tb, int64_t m, int64_t k, int64_t n, double alpha, double beta) {
    const uint64_t s0 = sd();
    const Shape as = ta ? Shape{k, m} : Shape{m, k}, bs = tb ? Shape{n, k} : Shape{k, n};
    std::ostringstream args;
    args << "ta=" << ta << ", tb=" << tb << ", m=" << m << ", k=" << k << ", n=" << n << ", alpha=" << alpha
         << ", beta=" << beta;
    add(
        "GEMM", args.str(),
        [=] {
          // With beta == 0 the output starts as NaN: BLAS must not read it.
          Tensor c = beta != 0 ? uniform_in({m, n}, s0 + 2) : Tensor::full({m, n}, NAN, DType::F64);
          return Inputs{uniform_in(as, s0), uniform_in(bs, s0 + 1), c};
        },
        {false, false, false},
        [=](const Inputs& in) {
          Tensor a = in[0].contiguous(), b = in[1].contiguous(), c = in[2].clone();
          TTQ_BACKEND(a.device(), gemm)(ta, tb, alpha, a, b, beta, c);
          return c;
        },
        [=](const Inputs& in) { return gemm_ref(ta, tb, alpha, in[0], in[1], beta, in[2]); });
  };
  gemm(false, false, 7, 5, 3, 0.7, -0.3);
  gemm(true, false, 7, 5, 3, 0.7, -0.3);
  gemm(false, true, 7, 5, 3, 0.7, 0.0);
  gemm(true, true, 7, 5, 3, -1.0, 1.0);
  gemm(false, false, 65, 70, 66, 1.0, 0.0);  // large enough to split rows over threads
  gemm(true, true, 9, 70, 300, 0.5, 0.25);   // ... and columns

  // batch_norm2d: training (batch statistics) and eval (running statistics)
  auto bn_train = [&](Shape xs, bool affine, int view = 0) {
    const uint64_t s0 = sd();
    const int64_t c = xs[1];
    add(
        "BATCH_NORM2D", "train, x=" + fmt_shape(xs) + (affine ? ", affine" : ""),
        [=] {
          // An offset mean exercises the variance's cancellation.
          return Inputs{uniform_in(xs, s0, 1.0, 4.0), affine ? uniform_in({c}, s0 + 1, 0.5, 1.5) : Tensor(),
                        affine ? uniform_in({c}, s0 + 2) : Tensor()};
        },
        {true, affine, affine},
        [=](const Inputs& in) {
          const Tensor& x = in[0];
          Tensor rm = Tensor::zeros({c}, x.dtype(), x.device()),
                 rv = Tensor::ones({c}, x.dtype(), x.device());
          return ops::batch_norm2d(x, in[1], in[2], rm, rv, true, 0.1, 1e-5);
        },
        [=](const Inputs& in) { return batch_norm_train_ref(in[0], in[1], in[2], 1e-5); }, view);
  };
  bn_train({2, 3, 4, 5}, true);
  bn_train({3, 2, 3, 3}, false);
  bn_train({4, 5, 3, 3}, true, 2);
  bn_train({7, 3, 1, 1}, true);
  bn_train({1, 3, 2, 3}, true, 1);
  auto bn_eval = [&](Shape xs, int view = 0) {
    const uint64_t s0 = sd();
    const int64_t c = xs[1];
    add(
        "BATCH_NORM2D", "eval, x=" + fmt_shape(xs),
        [=] {
          return Inputs{uniform_in(xs, s0), uniform_in({c}, s0 + 1, 0.5, 1.5), uniform_in({c}, s0 + 2),
                        uniform_in({c}, s0 + 3), uniform_in({c}, s0 + 4, 0.2, 2.0)};
        },
        {true, true, true, false, false},
        [=](const Inputs& in) {
          Tensor rm = in[3], rv = in[4];
          return ops::batch_norm2d(in[0], in[1], in[2], rm, rv, false, 0.1, 1e-5);
        },
        [=](const Inputs& in) { return batch_norm_eval_ref(in[0], in[1], in[2], in[3], in[4], 1e-5); }, view);
  };
  bn_eval({2, 3, 4, 5});
  bn_eval({3, 7, 3, 1}, 1);

  // dense_bottleneck: conv1x1(relu(BN_train(concat(parts)))), every part and parameter differentiated
  auto dense = [&](std::vector<int64_t> channels, Shape nhw, int64_t co, int view = 0) {
    const uint64_t s0 = sd();
    const size_t parts = channels.size();
    int64_t c = 0;
    for (int64_t ci : channels) c += ci;
    std::ostringstream args;
    if (parts > 8) {
      args << "parts=" << parts << ", channels=" << c;
    } else {
      args << "channels=" << fmt_shape(channels);
    }
    args << ", nhw=" << fmt_shape(nhw) << ", co=" << co;
    add(
        "DENSE_BOTTLENECK", args.str(),
        [=] {
          Inputs in;
          // Odd parts centred at 2: an offset mean exercises the variance's cancellation.
          for (size_t i = 0; i < parts; ++i) {
            const double lo = i % 2 ? 1.0 : -1.0;
            in.push_back(uniform_in({nhw[0], channels[i], nhw[1], nhw[2]}, s0 + i, lo, lo + 2));
          }
          in.push_back(uniform_in({c}, s0 + parts, 0.5, 1.5));
          in.push_back(uniform_in({c}, s0 + parts + 1, -0.5, 0.5));
          in.push_back(uniform_in({co, c, 1, 1}, s0 + parts + 2));
          return in;
        },
        std::vector<bool>(parts + 3, true),
        [=](const Inputs& in) {
          const std::vector<Tensor> features(in.begin(), in.begin() + static_cast<int64_t>(parts));
          const Tensor& x0 = in[0];
          Tensor rm = Tensor::zeros({c}, x0.dtype(), x0.device()),
                 rv = Tensor::ones({c}, x0.dtype(), x0.device());
          return ops::dense_bottleneck(features, in[parts], in[parts + 1], rm, rv, 0.1, 1e-5, in[parts + 2]);
        },
        [=](const Inputs& in) { return dense_bottleneck_ref(in, parts, 1e-5); }, view);
  };
  dense({3, 5, 1}, {2, 4, 5}, 4);
  dense({7}, {3, 3, 3}, 5);
  dense({2, 3}, {2, 3, 3}, 3, 2);     // channel slices of wider buffers: read in place
  dense({1, 4, 2}, {2, 2, 3}, 6, 1);  // strided rows: copied
  dense({3, 2}, {7, 1, 1}, 2);        // one value per sample
  dense({2, 3}, {1, 5, 5}, 3);        // one sample
  dense({16, 24}, {4, 24, 24}, 8);    // threads over channels; two segments per channel on CUDA
  {
    std::vector<int64_t> many;
    for (int i = 0; i < 35; ++i) many.push_back(i % 3 + 1);
    dense(many, {2, 2, 2}, 3);  // more parts than one CUDA launch takes
  }

  // relu
  for (auto [xs, view] : std::vector<std::pair<Shape, int>>{{{2, 3, 4, 5}, 0}, {{31}, 0}, {{7, 9}, 1}}) {
    const uint64_t s0 = sd();
    add(
        "RELU", "x=" + fmt_shape(xs), [=] { return Inputs{away_from_zero(xs, s0)}; }, {true},
        [](const Inputs& in) { return ops::relu(in[0]); },
        [](const Inputs& in) { return map_ref(in[0], [](double v) { return v > 0 ? v : 0.0; }); }, view);
  }

  // pooling
  auto max_pool = [&](Shape xs, int k, int s, int p, bool ceil_mode, int view = 0) {
    const uint64_t s0 = sd();
    std::ostringstream args;
    args << "x=" << fmt_shape(xs) << ", k=" << k << ", s=" << s << ", p=" << p << (ceil_mode ? ", ceil" : "");
    add(
        "MAX_POOL2D", args.str(), [=] { return Inputs{distinct(xs, s0)}; }, {true},
        [=](const Inputs& in) { return ops::max_pool2d(in[0], k, s, p, ceil_mode); },
        [=](const Inputs& in) { return max_pool_ref(in[0], k, s, p, ceil_mode); }, view);
  };
  max_pool({2, 3, 7, 7}, 3, 2, 1, false);
  max_pool({1, 2, 8, 8}, 2, 2, 0, false);
  max_pool({2, 2, 8, 8}, 3, 2, 0, true);
  max_pool({1, 3, 4, 4}, 2, 3, 1, true);
  max_pool({2, 3, 9, 9}, 3, 2, 1, true, 2);
  max_pool({1, 1, 5, 6}, 2, 1, 1, false, 1);
  max_pool({1, 2, 5, 150}, 3, 2, 1, false);  // 75 outputs a row: a full chunk of 64 and a tail
  max_pool({1, 1, 4, 2}, 3, 1, 1, false);    // no window fits inside a row
  max_pool({2, 1, 3, 1}, 3, 1, 1, true);
  auto avg_pool = [&](Shape xs, int k, int s, int p, bool ceil_mode, bool cip, int view = 0) {
    const uint64_t s0 = sd();
    std::ostringstream args;
    args << "x=" << fmt_shape(xs) << ", k=" << k << ", s=" << s << ", p=" << p << (ceil_mode ? ", ceil" : "")
         << (cip ? "" : ", exclude_pad");
    add(
        "AVG_POOL2D", args.str(), [=] { return Inputs{uniform_in(xs, s0)}; }, {true},
        [=](const Inputs& in) { return ops::avg_pool2d(in[0], k, s, p, ceil_mode, cip); },
        [=](const Inputs& in) { return avg_pool_ref(in[0], k, s, p, ceil_mode, cip); }, view);
  };
  avg_pool({2, 3, 8, 8}, 2, 2, 0, false, true);
  avg_pool({2, 3, 7, 7}, 3, 2, 1, false, true);
  avg_pool({2, 3, 7, 7}, 3, 2, 1, false, false);
  avg_pool({1, 2, 6, 6}, 3, 2, 1, true, true);
  avg_pool({1, 2, 6, 6}, 3, 2, 1, true, false);
  avg_pool({2, 2, 5, 7}, 2, 3, 1, true, true, 1);
  avg_pool({3, 4, 7, 7}, 2, 2, 0, true, true, 2);
  for (auto [xs, view] :
       std::vector<std::pair<Shape, int>>{{{2, 3, 7, 7}, 0}, {{3, 5, 1, 1}, 0}, {{2, 4, 3, 5}, 2}}) {
    const uint64_t s0 = sd();
    add(
        "GLOBAL_AVG_POOL2D", "x=" + fmt_shape(xs), [=] { return Inputs{uniform_in(xs, s0)}; }, {true},
        [](const Inputs& in) { return ops::global_avg_pool2d(in[0]); },
        [=](const Inputs& in) {
          const int h = static_cast<int>(xs[2]), w = static_cast<int>(xs[3]);
          auto v = host(in[0]);
          std::vector<double> y(xs[0] * xs[1], 0.0);
          for (size_t i = 0; i < v.size(); ++i) y[i / (h * w)] += v[i] / (h * w);
          return f64(y, {xs[0], xs[1]});
        },
        view);
  }

  // shape ops
  auto concat = [&](std::vector<Shape> shapes, int64_t dim, int view = 0) {
    const uint64_t s0 = sd();
    std::string args;
    for (const auto& s : shapes) args += fmt_shape(s) + ", ";
    add(
        "CONCAT", args + "dim=" + std::to_string(dim),
        [=] {
          Inputs in;
          for (size_t i = 0; i < shapes.size(); ++i) in.push_back(uniform_in(shapes[i], s0 + i));
          return in;
        },
        std::vector<bool>(shapes.size(), true), [=](const Inputs& in) { return ops::concat(in, dim); },
        [=](const Inputs& in) {
          // Row-major: outer = product of dims before `dim`; each input contributes a chunk per outer index.
          int64_t outer = 1;
          for (int64_t d = 0; d < dim; ++d) outer *= shapes[0][d];
          Shape ys = shapes[0];
          ys[dim] = 0;
          for (const auto& s : shapes) ys[dim] += s[dim];
          std::vector<double> y;
          for (int64_t o = 0; o < outer; ++o)
            for (const Tensor& t : in) {
              const auto v = host(t);
              const int64_t chunk = t.numel() / outer;
              y.insert(y.end(), v.begin() + o * chunk, v.begin() + (o + 1) * chunk);
            }
          return f64(y, ys);
        },
        view);
  };
  concat({{2, 3, 4, 4}, {2, 5, 4, 4}, {2, 1, 4, 4}}, 1);
  concat({{1, 3}, {4, 3}}, 0);
  concat({{3, 2, 5}, {3, 7, 5}}, 1, 1);
  auto narrow = [&](Shape xs, int64_t dim, int64_t start, int64_t len, int view = 0) {
    const uint64_t s0 = sd();
    add(
        "NARROW",
        "x=" + fmt_shape(xs) + ", dim=" + std::to_string(dim) + ", start=" + std::to_string(start) +
            ", len=" + std::to_string(len),
        [=] { return Inputs{uniform_in(xs, s0)}; }, {true},
        [=](const Inputs& in) { return ops::narrow(in[0], dim, start, len); },
        [=](const Inputs& in) {
          int64_t outer = 1, inner = 1;
          for (int64_t d = 0; d < dim; ++d) outer *= xs[d];
          for (int64_t d = dim + 1; d < static_cast<int64_t>(xs.size()); ++d) inner *= xs[d];
          const auto v = host(in[0]);
          std::vector<double> y;
          for (int64_t o = 0; o < outer; ++o)
            for (int64_t i = start; i < start + len; ++i)
              for (int64_t j = 0; j < inner; ++j) y.push_back(v[(o * xs[dim] + i) * inner + j]);
          Shape ys = xs;
          ys[dim] = len;
          return f64(y, ys);
        },
        view);
  };
  narrow({3, 7, 4}, 1, 2, 4);
  narrow({5, 3}, 0, 1, 3, 1);
  for (auto [xs, ys, view] :
       std::vector<std::tuple<Shape, Shape, int>>{{{2, 3, 4}, {4, 6}, 0}, {{2, 3, 4}, {3, 8}, 1}}) {
    const uint64_t s0 = sd();
    add(
        "RESHAPE", "x=" + fmt_shape(xs) + " -> " + fmt_shape(ys), [=] { return Inputs{uniform_in(xs, s0)}; },
        {true}, [=](const Inputs& in) { return ops::reshape(in[0], ys); },
        [=](const Inputs& in) { return f64(host(in[0]), ys); }, view);
  }
  {
    const uint64_t s0 = sd();
    add(
        "FLATTEN", "x=[2,3,4,5]",
        [=] {
          return Inputs{uniform_in({2, 3, 4, 5}, s0)};
        },
        {true}, [](const Inputs& in) { return ops::flatten(in[0]); },
        [](const Inputs& in) {
          return f64(host(in[0]), {2, 60});
        },
        2);
  }

  // elementwise and reductions
  auto binary = [&](const std::string& op, Shape xs, int view,
                    std::function<Tensor(const Tensor&, const Tensor&)> f,
                    std::function<double(double, double)> r) {
    const uint64_t s0 = sd();
    add(
        op, "x=" + fmt_shape(xs),
        [=] {
          return Inputs{uniform_in(xs, s0), uniform_in(xs, s0 + 1)};
        },
        {true, true}, [=](const Inputs& in) { return f(in[0], in[1]); },
        [=](const Inputs& in) { return zip_ref(in[0], in[1], r); }, view);
  };
  for (auto [xs, view] : std::vector<std::pair<Shape, int>>{{{3, 7, 5}, 0}, {{31}, 0}, {{2, 3, 5, 4}, 1}}) {
    binary("ADD", xs, view, ops::add, [](double a, double b) { return a + b; });
    binary("SUB", xs, view, ops::sub, [](double a, double b) { return a - b; });
    binary("MUL", xs, view, ops::mul, [](double a, double b) { return a * b; });
  }
  for (auto [xs, view] : std::vector<std::pair<Shape, int>>{{{3, 7}, 0}, {{2, 3, 4, 5}, 2}}) {
    const uint64_t s0 = sd();
    add(
        "SCALE", "x=" + fmt_shape(xs) + ", s=-2.5", [=] { return Inputs{uniform_in(xs, s0)}; }, {true},
        [](const Inputs& in) { return ops::scale(in[0], -2.5); },
        [](const Inputs& in) { return map_ref(in[0], [](double v) { return -2.5 * v; }); }, view);
    add(
        "SUM", "x=" + fmt_shape(xs), [=] { return Inputs{uniform_in(xs, s0 + 1)}; }, {true},
        [](const Inputs& in) { return ops::sum(in[0]); },
        [](const Inputs& in) {
          double s = 0;
          for (double v : host(in[0])) s += v;
          return f64({s}, {});
        },
        view);
    add(
        "MEAN", "x=" + fmt_shape(xs), [=] { return Inputs{uniform_in(xs, s0 + 2)}; }, {true},
        [](const Inputs& in) { return ops::mean(in[0]); },
        [](const Inputs& in) {
          double s = 0;
          const auto v = host(in[0]);
          for (double e : v) s += e;
          return f64({s / static_cast<double>(v.size())}, {});
        },
        view);
  }
  auto dropout = [&](Shape xs, double p, int view = 0) {
    const uint64_t s0 = sd();
    add(
        "DROPOUT", "x=" + fmt_shape(xs) + ", p=" + std::to_string(p),
        [=] { return Inputs{uniform_in(xs, s0)}; }, {true},
        [=](const Inputs& in) {
          Generator g(s0);  // a fresh generator per call: the same mask every time
          return ops::dropout(in[0], p, true, g);
        },
        [=](const Inputs& in) {
          auto v = host(in[0]);
          for (size_t i = 0; i < v.size(); ++i)
            v[i] = rng::uniform_f32(s0, i) >= static_cast<float>(p) ? v[i] / (1.0 - p) : 0.0;
          return f64(v, xs);
        },
        view);
  };
  dropout({3, 7, 5}, 0.3, 1);
  dropout({2, 31}, 0.5);

  // softmax family
  auto rows = [&](const std::string& op, int64_t n, int64_t c, int view) {
    const uint64_t s0 = sd();
    const bool log = op == "LOG_SOFTMAX";
    add(
        op, "x=" + fmt_shape({n, c}),
        [=] {
          return Inputs{uniform_in({n, c}, s0, -3, 3)};
        },
        {true}, [=](const Inputs& in) { return log ? ops::log_softmax(in[0]) : ops::softmax(in[0]); },
        [=](const Inputs& in) {
          Tensor l = log_softmax_ref(in[0]);
          return log ? l : map_ref(l, [](double v) { return std::exp(v); });
        },
        view);
  };
  rows("LOG_SOFTMAX", 3, 7, 0);
  rows("LOG_SOFTMAX", 1, 31, 0);
  rows("LOG_SOFTMAX", 5, 200, 1);
  rows("SOFTMAX", 3, 7, 0);
  rows("SOFTMAX", 4, 10, 1);
  auto ce = [&](int64_t n, int64_t c, int view = 0) {
    const uint64_t s0 = sd();
    add(
        "CROSS_ENTROPY", "logits=" + fmt_shape({n, c}),
        [=] {
          return Inputs{uniform_in({n, c}, s0, -3, 3), labels_in(n, c, s0 + 1)};
        },
        {true, false}, [](const Inputs& in) { return ops::cross_entropy(in[0], in[1]); },
        [=](const Inputs& in) {
          const auto l = host(log_softmax_ref(in[0]));
          const auto lab = in[1].to_vector<int64_t>();
          double s = 0;
          for (int64_t i = 0; i < n; ++i) s -= l[i * c + lab[i]];
          return f64({s / static_cast<double>(n)}, {});
        },
        view);
  };
  ce(5, 7);
  ce(1, 31);
  ce(4, 200, 1);
  return cases;
}

}  // namespace ttq::test
