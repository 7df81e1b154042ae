// CPU BatchNorm2d (PyTorch semantics): training forward with running-stat
// update, eval forward, the training backward, and the fused BN+ReLU
// (batch_norm_relu_*, engine/backend.h) over an unmaterialised channel
// concatenation that ops::dense_bottleneck runs. CUDA twins:
// engine/cuda/batch_norm.cu (cuDNN) for the plain ops and
// engine/cuda/batch_norm_relu.cu for the fused ones; on the CPU both run the same
// kernels below (a plain op is the one-part, no-ReLU case), hence one file.
// OpenMP over channels; statistics accumulate in double. Reference: the
// BATCH_NORM2D / DENSE_BOTTLENECK cases and the running-stats tests of
// tests/test_backend_ops.cpp; the fused variants are bit-identical to the
// unfused ops on a concatenated copy (tests/test_models.cpp and
// OpsOnDevice.DenseBottleneckMatchesUnfusedOps).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "engine/backend.h"
#include "engine/cpu/parallel.h"

// The vector helpers below pass 32-byte vectors by value; they are always
// inlined, so no call ever uses the ABI GCC warns about (reported at the end of
// the file for template instances, hence file-wide).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace ttq::cpu {

namespace {

// ---- Row kernels ------------------------------------------------------------
// Every pass over a channel is a loop over rows (one sample's plane of that
// channel). The float versions are compiled twice (AVX2 and the x86-64-v2
// baseline, chosen at load time); neither uses FMA, so both round alike.
// Sums go to kLanes partial sums in a fixed order (element i of a row into
// lane i % kLanes, lanes combined pairwise at the end): the bits depend neither
// on the clone nor on whether a ReLU mask is fused into the loop, which keeps
// the fused and unfused paths identical.

#define TTQ_BN_INLINE inline __attribute__((always_inline))
#define TTQ_BN_CLONES __attribute__((target_clones("avx2", "default")))

constexpr int kLanes = 8;

struct LaneSums {
  double a[kLanes] = {}, b[kLanes] = {};
  static double combine(const double* s) {
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  }
};

// Four-wide vectors (GCC vector extensions: SSE pairs in the baseline clone,
// one AVX register in the AVX2 clone). Lanes 0-3 and 4-7 of LaneSums are two
// such vectors; the arithmetic per lane is the scalar arithmetic.
typedef float V4f __attribute__((vector_size(16)));
typedef double V4d __attribute__((vector_size(32)));
template <class T>
struct Vec4;
template <>
struct Vec4<float> {
  using type = V4f;
};
template <>
struct Vec4<double> {
  using type = V4d;
};

template <class T>
TTQ_BN_INLINE typename Vec4<T>::type load4(const T* p) {
  typename Vec4<T>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
TTQ_BN_INLINE V4d to_double(const V& v) {
  return __builtin_convertvector(v, V4d);
}
TTQ_BN_INLINE V4d load_lanes(const double* s) {
  V4d v;
  std::memcpy(&v, s, sizeof v);
  return v;
}
TTQ_BN_INLINE void store_lanes(double* s, const V4d& v) { std::memcpy(s, &v, sizeof v); }

// a += x - shift, b += (x - shift)^2.
template <class T>
TTQ_BN_INLINE void stats_impl(const T* r, int64_t n, double shift, LaneSums& s) {
  V4d a0 = load_lanes(s.a), a1 = load_lanes(s.a + 4), b0 = load_lanes(s.b), b1 = load_lanes(s.b + 4);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const V4d d0 = to_double(load4(r + i)) - shift, d1 = to_double(load4(r + i + 4)) - shift;
    a0 += d0;
    a1 += d1;
    b0 += d0 * d0;
    b1 += d1 * d1;
  }
  store_lanes(s.a, a0), store_lanes(s.a + 4, a1), store_lanes(s.b, b0), store_lanes(s.b + 4, b1);
  for (int j = 0; i + j < n; ++j) {
    const double d = static_cast<double>(r[i + j]) - shift;
    s.a[j] += d;
    s.b[j] += d * d;
  }
}

// g = gy (masked: gy where z > 0, else 0, as relu_backward); a += g, b += g * (x - mean).
template <class T, bool kMask>
TTQ_BN_INLINE void grad_sums_impl(const T* gy, const T* z, const T* x, int64_t n, double mean, LaneSums& s) {
  using V = typename Vec4<T>::type;
  V4d a0 = load_lanes(s.a), a1 = load_lanes(s.a + 4), b0 = load_lanes(s.b), b1 = load_lanes(s.b + 4);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    V g0 = load4(gy + i), g1 = load4(gy + i + 4);
    if constexpr (kMask) {
      g0 = load4(z + i) > T(0) ? g0 : V{};
      g1 = load4(z + i + 4) > T(0) ? g1 : V{};
    }
    const V4d gd0 = to_double(g0), gd1 = to_double(g1);
    a0 += gd0;
    a1 += gd1;
    b0 += gd0 * (to_double(load4(x + i)) - mean);
    b1 += gd1 * (to_double(load4(x + i + 4)) - mean);
  }
  store_lanes(s.a, a0), store_lanes(s.a + 4, a1), store_lanes(s.b, b0), store_lanes(s.b + 4, b1);
  for (int j = 0; i + j < n; ++j) {
    const T gv = gy[i + j];
    const double gd = static_cast<double>(kMask ? (z[i + j] > T(0) ? gv : T(0)) : gv);
    s.a[j] += gd;
    s.b[j] += gd * (static_cast<double>(x[i + j]) - mean);
  }
}

// o = (x - m) * a + b, optionally followed by ReLU (`v < 0 ? 0 : v`, as relu_forward).
template <class T, bool kRelu>
TTQ_BN_INLINE void affine_impl(const T* x, int64_t n, T m, T a, T b, T* o) {
  for (int64_t i = 0; i < n; ++i) {
    const T v = (x[i] - m) * a + b;
    o[i] = kRelu ? (v < T(0) ? T(0) : v) : v;
  }
}

// o = g * k + (x - m) * u + v with g as in grad_sums_impl.
template <class T, bool kMask>
TTQ_BN_INLINE void grad_x_impl(const T* gy, const T* z, const T* x, int64_t n, T k, T m, T u, T v, T* o) {
  for (int64_t i = 0; i < n; ++i) {
    const T gv = gy[i];
    const T g = kMask ? (z[i] > T(0) ? gv : T(0)) : gv;
    o[i] = g * k + (x[i] - m) * u + v;
  }
}

TTQ_BN_CLONES void stats_f32(const float* r, int64_t n, double shift, LaneSums& s) {
  stats_impl(r, n, shift, s);
}
TTQ_BN_CLONES void grad_sums_f32(const float* gy, const float* z, const float* x, int64_t n, double mean,
                                 LaneSums& s) {
  if (z != nullptr) {
    grad_sums_impl<float, true>(gy, z, x, n, mean, s);
  } else {
    grad_sums_impl<float, false>(gy, z, x, n, mean, s);
  }
}
TTQ_BN_CLONES void affine_f32(const float* x, int64_t n, float m, float a, float b, bool relu, float* o) {
  if (relu) {
    affine_impl<float, true>(x, n, m, a, b, o);
  } else {
    affine_impl<float, false>(x, n, m, a, b, o);
  }
}
TTQ_BN_CLONES void grad_x_f32(const float* gy, const float* z, const float* x, int64_t n, float k, float m,
                              float u, float v, float* o) {
  if (z != nullptr) {
    grad_x_impl<float, true>(gy, z, x, n, k, m, u, v, o);
  } else {
    grad_x_impl<float, false>(gy, z, x, n, k, m, u, v, o);
  }
}

template <class T>
void row_stats(const T* r, int64_t n, double shift, LaneSums& s) {
  if constexpr (std::is_same_v<T, float>) {
    stats_f32(r, n, shift, s);
  } else {
    stats_impl(r, n, shift, s);
  }
}
template <class T>
void row_grad_sums(const T* gy, const T* z, const T* x, int64_t n, double mean, LaneSums& s) {
  if constexpr (std::is_same_v<T, float>) {
    grad_sums_f32(gy, z, x, n, mean, s);
  } else if (z != nullptr) {
    grad_sums_impl<T, true>(gy, z, x, n, mean, s);
  } else {
    grad_sums_impl<T, false>(gy, z, x, n, mean, s);
  }
}
template <class T>
void row_affine(const T* x, int64_t n, T m, T a, T b, bool relu, T* o) {
  if constexpr (std::is_same_v<T, float>) {
    affine_f32(x, n, m, a, b, relu, o);
  } else if (relu) {
    affine_impl<T, true>(x, n, m, a, b, o);
  } else {
    affine_impl<T, false>(x, n, m, a, b, o);
  }
}
template <class T>
void row_grad_x(const T* gy, const T* z, const T* x, int64_t n, T k, T m, T u, T v, T* o) {
  if constexpr (std::is_same_v<T, float>) {
    grad_x_f32(gy, z, x, n, k, m, u, v, o);
  } else if (z != nullptr) {
    grad_x_impl<T, true>(gy, z, x, n, k, m, u, v, o);
  } else {
    grad_x_impl<T, false>(gy, z, x, n, k, m, u, v, o);
  }
}

// ---- Channel addressing ------------------------------------------------------
// x is one [N,C,H,W] tensor or the channel concatenation of several, each with
// dense samples and any batch stride (a channel slice of a wider buffer works
// without a copy). Planes holds, per channel, the (sample 0, channel c) plane
// and the batch stride of the tensor it lives in.
template <class T>
struct Planes {
  std::vector<T*> base;
  std::vector<int64_t> batch_stride;
  T* row(int64_t n, int64_t c) const { return base[c] + n * batch_stride[c]; }
};

struct BnGeom {
  int64_t n, c, hw;
};

bool sample_dense(const Tensor& x) {
  return x.dim() == 4 && x.stride(3) == 1 && x.stride(2) == x.size(3) && x.stride(1) == x.size(2) * x.size(3);
}

BnGeom geometry(const std::vector<Tensor>& parts) {
  TTQ_CHECK(!parts.empty()) << "batch norm: no input";
  const Tensor& x0 = parts[0];
  int64_t c = 0;
  for (const Tensor& x : parts) {
    TTQ_CHECK(sample_dense(x)) << "batch norm: dense NCHW samples expected, got strides of " << x.str();
    TTQ_CHECK(x.size(0) == x0.size(0) && x.size(2) == x0.size(2) && x.size(3) == x0.size(3) &&
              x.dtype() == x0.dtype())
        << "batch norm: concatenated parts " << x0.str() << " and " << x.str() << " disagree";
    c += x.size(1);
  }
  return {x0.size(0), c, x0.size(2) * x0.size(3)};
}

template <class T, class TensorRef>
Planes<T> planes_of(const std::vector<TensorRef>& parts, int64_t hw) {
  Planes<T> p;
  for (const Tensor& x : parts) {
    const int64_t ci = x.size(1);
    const int64_t bs = x.size(0) > 1 ? x.stride(0) : ci * hw;
    T* base = const_cast<T*>(x.template data<std::remove_const_t<T>>());
    for (int64_t c = 0; c < ci; ++c) {
      p.base.push_back(base + c * hw);
      p.batch_stride.push_back(bs);
    }
  }
  return p;
}

// Optional per-channel parameter (undefined weight = 1, bias = 0).
template <class T>
T param(const Tensor& t, int64_t c, T dflt) {
  return t.defined() ? t.data<T>()[c] : dflt;
}

// ---- Kernels -----------------------------------------------------------------

// y (contiguous [N,C,H,W]) = BN_train(x), ReLU'd when `relu`; save_scale optional.
template <class T>
void forward_train_typed(const Planes<const T>& x, const BnGeom& g, const Tensor& weight, const Tensor& bias,
                         Tensor& running_mean, Tensor& running_var, double momentum, double eps, bool relu,
                         T* yp, T* save_mean, T* save_invstd, T* save_scale) {
  const int64_t count = g.n * g.hw;
  T* rmp = running_mean.defined() ? running_mean.data<T>() : nullptr;
  T* rvp = running_var.defined() ? running_var.data<T>() : nullptr;
#pragma omp parallel for schedule(dynamic, 1) if (count * g.c >= kParallelElements)
  for (int64_t c = 0; c < g.c; ++c) {
    // One pass, shifted by the first element so that a large mean does not cancel the variance.
    const double shift = count > 0 ? static_cast<double>(x.row(0, c)[0]) : 0.0;
    LaneSums s;
    for (int64_t n = 0; n < g.n; ++n) row_stats(x.row(n, c), g.hw, shift, s);
    const double s1 = LaneSums::combine(s.a), s2 = LaneSums::combine(s.b);
    const double mean_d = s1 / static_cast<double>(count);
    const double var = std::max(0.0, s2 / static_cast<double>(count) - mean_d * mean_d);
    const double mean = shift + mean_d;
    const double invstd = 1.0 / std::sqrt(var + eps);
    save_mean[c] = static_cast<T>(mean);
    save_invstd[c] = static_cast<T>(invstd);
    if (rmp != nullptr)
      rmp[c] = static_cast<T>((1 - momentum) * static_cast<double>(rmp[c]) + momentum * mean);
    if (rvp != nullptr) {
      const double unbiased =
          count > 1 ? var * static_cast<double>(count) / static_cast<double>(count - 1) : var;
      rvp[c] = static_cast<T>((1 - momentum) * static_cast<double>(rvp[c]) + momentum * unbiased);
    }
    // y = (x - mean) * a + bias with a = w * invstd (centred first: no cancellation for large means).
    const T af = static_cast<T>(static_cast<double>(param<T>(weight, c, T(1))) * invstd);
    if (save_scale != nullptr) save_scale[c] = af;
    const T bf = param<T>(bias, c, T(0)), mf = static_cast<T>(mean);
    for (int64_t n = 0; n < g.n; ++n)
      row_affine(x.row(n, c), g.hw, mf, af, bf, relu, yp + (n * g.c + c) * g.hw);
  }
}

template <class T>
void forward_eval_typed(const Planes<const T>& x, const BnGeom& g, const Tensor& weight, const Tensor& bias,
                        const Tensor& running_mean, const Tensor& running_var, double eps, T* yp) {
  const T* rm = running_mean.data<T>();
  const T* rv = running_var.data<T>();
#pragma omp parallel for collapse(2) schedule(static) if (g.n * g.c * g.hw >= kParallelElements)
  for (int64_t n = 0; n < g.n; ++n) {
    for (int64_t c = 0; c < g.c; ++c) {
      const T af = static_cast<T>(static_cast<double>(param<T>(weight, c, T(1))) /
                                  std::sqrt(static_cast<double>(rv[c]) + eps));
      row_affine(x.row(n, c), g.hw, rm[c], af, param<T>(bias, c, T(0)), false, yp + (n * g.c + c) * g.hw);
    }
  }
}

// z = relu((x - mean) * scale + bias) from saved per-channel values.
template <class T>
void recompute_typed(const Planes<const T>& x, const BnGeom& g, const T* mean, const T* scale,
                     const Tensor& bias, T* zp) {
#pragma omp parallel for collapse(2) schedule(static) if (g.n * g.c * g.hw >= kParallelElements)
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t c = 0; c < g.c; ++c)
      row_affine(x.row(n, c), g.hw, mean[c], scale[c], param<T>(bias, c, T(0)), true,
                 zp + (n * g.c + c) * g.hw);
}

// gy and z (optional ReLU output whose mask applies to gy) contiguous [N,C,H,W];
// gx optional (written through its planes).
template <class T>
void backward_typed(const T* gyp, const T* zp, const Planes<const T>& x, const BnGeom& g,
                    const Tensor& weight, const T* save_mean, const T* save_invstd, const Planes<T>* gx,
                    T* gw, T* gb) {
  const int64_t count = g.n * g.hw;
#pragma omp parallel for schedule(dynamic, 1) if (count * g.c >= kParallelElements)
  for (int64_t c = 0; c < g.c; ++c) {
    const double mean = static_cast<double>(save_mean[c]);
    const double invstd = static_cast<double>(save_invstd[c]);
    // sum_gy = sum(gy), sum_gyx = sum(gy * (x - mean)).
    LaneSums s;
    for (int64_t n = 0; n < g.n; ++n) {
      const int64_t off = (n * g.c + c) * g.hw;
      row_grad_sums(gyp + off, zp != nullptr ? zp + off : nullptr, x.row(n, c), g.hw, mean, s);
    }
    const double sum_gy = LaneSums::combine(s.a), sum_gyx = LaneSums::combine(s.b);
    if (gw != nullptr) gw[c] = static_cast<T>(sum_gyx * invstd);
    if (gb != nullptr) gb[c] = static_cast<T>(sum_gy);
    if (gx == nullptr) continue;
    // gx = w*invstd * (gy - mean(gy) - xhat * mean(gy*xhat)), xhat = (x-mean)*invstd,
    // written as gx = gy * k + (x - mean) * u + v per channel.
    const double w = static_cast<double>(param<T>(weight, c, T(1)));
    const double inv_count = 1.0 / static_cast<double>(count);
    const double k = w * invstd;
    const double u = -k * sum_gyx * invstd * invstd * inv_count;
    const double v = -k * sum_gy * inv_count;
    const T kf = static_cast<T>(k), uf = static_cast<T>(u), vf = static_cast<T>(v), mf = static_cast<T>(mean);
    for (int64_t n = 0; n < g.n; ++n) {
      const int64_t off = (n * g.c + c) * g.hw;
      row_grad_x(gyp + off, zp != nullptr ? zp + off : nullptr, x.row(n, c), g.hw, kf, mf, uf, vf,
                 gx->row(n, c));
    }
  }
}

void check_output(const Tensor& y, const BnGeom& g, const char* what) {
  TTQ_CHECK(y.is_contiguous() && y.dim() == 4 && y.size(0) == g.n && y.size(1) == g.c &&
            y.size(2) * y.size(3) == g.hw)
      << what << ": contiguous [" << g.n << ", " << g.c << ", H, W] expected, got " << y.str();
}

}  // namespace

void batch_norm_forward_train(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                              Tensor& running_var, double momentum, double eps, Tensor& y, Tensor& save_mean,
                              Tensor& save_invstd) {
  const std::vector<Tensor> parts{x};
  const BnGeom g = geometry(parts);
  dispatch_float(x.dtype(), "batch_norm_forward_train", [&](auto tag) {
    using T = decltype(tag);
    forward_train_typed<T>(planes_of<const T>(parts, g.hw), g, weight, bias, running_mean, running_var,
                           momentum, eps, false, y.data<T>(), save_mean.data<T>(), save_invstd.data<T>(),
                           nullptr);
  });
}

void batch_norm_forward_eval(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             const Tensor& running_mean, const Tensor& running_var, double eps, Tensor& y) {
  const std::vector<Tensor> parts{x};
  const BnGeom g = geometry(parts);
  dispatch_float(x.dtype(), "batch_norm_forward_eval", [&](auto tag) {
    using T = decltype(tag);
    forward_eval_typed<T>(planes_of<const T>(parts, g.hw), g, weight, bias, running_mean, running_var, eps,
                          y.data<T>());
  });
}

void batch_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                         const Tensor& save_invstd, Tensor& gx, Tensor& gweight, Tensor& gbias) {
  TTQ_CHECK(gy.is_contiguous() && (!gx.defined() || gx.is_contiguous()))
      << "batch_norm_backward: contiguous gy/gx expected";
  const std::vector<Tensor> parts{x};
  const BnGeom g = geometry(parts);
  dispatch_float(x.dtype(), "batch_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    Planes<T> gxp;
    if (gx.defined()) gxp = planes_of<T>(std::vector<Tensor>{gx}, g.hw);
    backward_typed<T>(gy.data<T>(), nullptr, planes_of<const T>(parts, g.hw), g, weight, save_mean.data<T>(),
                      save_invstd.data<T>(), gx.defined() ? &gxp : nullptr,
                      gweight.defined() ? gweight.data<T>() : nullptr,
                      gbias.defined() ? gbias.data<T>() : nullptr);
  });
}

void batch_norm_relu_forward_train(const std::vector<Tensor>& parts, const Tensor& weight, const Tensor& bias,
                                   Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                   Tensor& z, Tensor& save_mean, Tensor& save_invstd, Tensor& save_scale) {
  const BnGeom g = geometry(parts);
  check_output(z, g, "batch_norm_relu_forward_train");
  dispatch_float(z.dtype(), "batch_norm_relu_forward_train", [&](auto tag) {
    using T = decltype(tag);
    forward_train_typed<T>(planes_of<const T>(parts, g.hw), g, weight, bias, running_mean, running_var,
                           momentum, eps, true, z.data<T>(), save_mean.data<T>(), save_invstd.data<T>(),
                           save_scale.data<T>());
  });
}

void batch_norm_relu_recompute(const std::vector<Tensor>& parts, const Tensor& save_mean,
                               const Tensor& save_scale, const Tensor& bias, Tensor& z) {
  const BnGeom g = geometry(parts);
  check_output(z, g, "batch_norm_relu_recompute");
  dispatch_float(z.dtype(), "batch_norm_relu_recompute", [&](auto tag) {
    using T = decltype(tag);
    recompute_typed<T>(planes_of<const T>(parts, g.hw), g, save_mean.data<T>(), save_scale.data<T>(), bias,
                       z.data<T>());
  });
}

void batch_norm_relu_backward(const Tensor& gz, const Tensor& z, const std::vector<Tensor>& parts,
                              const Tensor& weight, const Tensor& save_mean, const Tensor& save_invstd,
                              std::vector<Tensor>& gparts, Tensor& gweight, Tensor& gbias) {
  const BnGeom g = geometry(parts);
  check_output(gz, g, "batch_norm_relu_backward");
  check_output(z, g, "batch_norm_relu_backward");
  TTQ_CHECK(gparts.size() == parts.size()) << "batch_norm_relu_backward: one gradient per part expected";
  for (size_t i = 0; i < parts.size(); ++i)
    TTQ_CHECK(gparts[i].is_contiguous() && gparts[i].shape() == parts[i].shape())
        << "batch_norm_relu_backward: gradient " << gparts[i].str() << " does not match part "
        << parts[i].str();
  dispatch_float(z.dtype(), "batch_norm_relu_backward", [&](auto tag) {
    using T = decltype(tag);
    const Planes<T> gxp = planes_of<T>(gparts, g.hw);
    backward_typed<T>(gz.data<T>(), z.data<T>(), planes_of<const T>(parts, g.hw), g, weight,
                      save_mean.data<T>(), save_invstd.data<T>(), &gxp, gweight.data<T>(), gbias.data<T>());
  });
}

}  // namespace ttq::cpu
