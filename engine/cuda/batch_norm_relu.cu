// CUDA fused BatchNorm2d (training) + ReLU over a channel concatenation that is
// never materialised: the BN of ops::dense_bottleneck (engine/ops/dense.cpp).
// CPU twin: the batch_norm_relu_* functions of engine/cpu/batch_norm.cpp, the
// same per-channel algorithm (statistics shifted by the channel's first value
// and summed in double, the per-element maps rounded in T exactly as written,
// no contraction); tested against it by the DENSE_BOTTLENECK cases of
// tests/test_backend_ops.cpp.
//
// Every kernel reads the parts in place through a PartTable (one pointer,
// batch stride and first channel per part), so nothing is concatenated. A
// channel's N*H*W values are cut into `segments` pieces of equal length, one
// block per (channel, segment): the reductions write one partial sum per
// block to a workspace, and the kernel that consumes them combines a
// channel's partials in a fixed order. The segment count depends on N*H*W
// alone, so every result is bit-identical from run to run and across GPUs.
//
// Napkin math (fp32): the forward reads x twice (statistics, then z; the
// second read mostly hits L2 for the layer sizes here) and writes z: 12 bytes
// per element; the backward reads gz, z, x twice and writes gx: 20 bytes per
// element. DenseNet-121 at batch 64, 56x56, block 1 (up to 256 channels of
// 200k values): 0.6 GB for a forward, about 0.15 ms at 4 TB/s.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "engine/backend.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/reduce.cuh"

namespace ttq::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 8;  // a segment holds at least 2048 values, when the channel has them
constexpr int kMaxSegments = 64;
constexpr int kMaxParts = 32;  // more parts run in several launches (DenseNet-121 has at most 25)

// The parts of one launch: part p holds channels [channel_begin[p], channel_begin[p+1])
// of the launch; data[p] points at its (sample 0, first channel) plane, samples
// batch_stride[p] elements apart, each sample dense ([C_p, H, W]). Passed by value
// as a kernel argument (under 1 KiB).
template <class T>
struct PartTable {
  int parts = 0;
  int64_t channel_begin[kMaxParts + 1] = {};
  int64_t batch_stride[kMaxParts] = {};
  T* data[kMaxParts] = {};

  // The (sample 0) plane of launch channel c and its batch stride.
  __device__ __forceinline__ T* plane(int64_t c, int64_t hw, int64_t& stride) const {
    int p = 0;
    while (p + 1 < parts && c >= channel_begin[p + 1]) ++p;
    stride = batch_stride[p];
    return data[p] + (c - channel_begin[p]) * hw;
  }
};

struct Geometry {
  int64_t n, c, hw;  // x is [n, c, hw] (c: all channels, over every launch)
  int64_t count;     // n * hw values per channel
  int64_t segment;   // values per segment
  int segments;      // segments per channel
};

Geometry geometry_of(int64_t n, int64_t c, int64_t hw) {
  Geometry g{n, c, hw, n * hw, 0, 1};
  const int64_t per_block = static_cast<int64_t>(kThreads) * kItemsPerThread;
  g.segments = static_cast<int>(std::clamp<int64_t>((g.count + per_block - 1) / per_block, 1, kMaxSegments));
  g.segment = (g.count + g.segments - 1) / g.segments;
  return g;
}

// ---- element functions --------------------------------------------------------------
// Explicitly rounded arithmetic: the CPU twin evaluates these expressions as
// written, without fused multiply-adds, and so do these.

__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

// z = relu((x - m) * a + b), `v < 0 ? 0 : v` as relu_forward.
template <class T>
__device__ __forceinline__ T bn_relu_elem(T x, T m, T a, T b) {
  const T v = add_rn(mul_rn(sub_rn(x, m), a), b);
  return v < T(0) ? T(0) : v;
}

// gx = g * k + (x - m) * u + v with g = gz where z > 0, else 0.
template <class T>
__device__ __forceinline__ T bn_relu_grad_elem(T gz, T z, T x, T k, T m, T u, T v) {
  const T g = z > T(0) ? gz : T(0);
  return add_rn(add_rn(mul_rn(g, k), mul_rn(sub_rn(x, m), u)), v);
}

// Walks this thread's values of segment blockIdx.y of a channel: f(n, i) for
// sample n, position i, in increasing order; the stride kThreads is split into
// whole samples and a remainder once, so the loop divides nothing.
template <class F>
__device__ __forceinline__ void for_segment(const Geometry& g, F&& f) {
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * g.segment;
  const int64_t end = begin + g.segment < g.count ? begin + g.segment : g.count;
  int64_t j = begin + threadIdx.x;
  if (j >= end) return;
  int64_t n = j / g.hw, i = j - n * g.hw;
  const int64_t dn = kThreads / g.hw, di = kThreads - dn * g.hw;
  for (; j < end; j += kThreads) {
    f(n, i);
    n += dn;
    i += di;
    if (i >= g.hw) {
      i -= g.hw;
      ++n;
    }
  }
}

// Combines the partial pairs of channel c (segments of them, in segment order
// within each lane, then a fixed warp tree); every thread of the block gets the sums.
__device__ __forceinline__ void combine_partials(const double* partials, int64_t c, int segments, double& a,
                                                 double& b) {
  __shared__ double result[2];
  if (threadIdx.x < 32) {
    double sa = 0, sb = 0;
    for (int s = threadIdx.x; s < segments; s += 32) {
      sa += partials[(c * kMaxSegments + s) * 2];
      sb += partials[(c * kMaxSegments + s) * 2 + 1];
    }
    sa = warp_reduce(sa, SumOp{});
    sb = warp_reduce(sb, SumOp{});
    if (threadIdx.x == 0) {
      result[0] = sa;
      result[1] = sb;
    }
  }
  __syncthreads();
  a = result[0];
  b = result[1];
}

// ---- kernels ---------------------------------------------------------------------
// Grid: (channels of the launch, segments); c0 = the launch's first channel.

// partials[c][s] = (sum (x - shift), sum (x - shift)^2), shift = x[0, c, 0].
template <class T>
__global__ void bn_relu_stats_kernel(PartTable<const T> x, int64_t c0, Geometry g, double* partials) {
  __shared__ double scratch[kThreads / 32];
  const int64_t c = blockIdx.x;
  int64_t bs = 0;
  const T* xc = x.plane(c, g.hw, bs);
  const double shift = static_cast<double>(xc[0]);
  double a = 0, b = 0;
  for_segment(g, [&](int64_t n, int64_t i) {
    const double d = static_cast<double>(xc[n * bs + i]) - shift;
    a = __dadd_rn(a, d);
    b = __dadd_rn(b, __dmul_rn(d, d));
  });
  a = block_reduce<kThreads>(a, SumOp{}, 0.0, scratch);
  b = block_reduce<kThreads>(b, SumOp{}, 0.0, scratch);
  if (threadIdx.x == 0) {
    double* out = partials + ((c0 + c) * kMaxSegments + blockIdx.y) * 2;
    out[0] = a;
    out[1] = b;
  }
}

// The statistics from the partials, then z for the block's segment; segment 0
// stores the saved vectors and updates the running ones.
template <class T>
__global__ void bn_relu_forward_kernel(PartTable<const T> x, int64_t c0, Geometry g, const double* partials,
                                       const T* weight, const T* bias, T* running_mean, T* running_var,
                                       double momentum, double eps, T* z, T* save_mean, T* save_invstd,
                                       T* save_scale) {
  const int64_t cl = blockIdx.x, c = c0 + cl;
  int64_t bs = 0;
  const T* xc = x.plane(cl, g.hw, bs);
  double s1 = 0, s2 = 0;
  combine_partials(partials, c, g.segments, s1, s2);
  const double shift = static_cast<double>(xc[0]);
  const double count = static_cast<double>(g.count);
  const double mean_d = s1 / count;
  const double var = fmax(0.0, __dsub_rn(s2 / count, __dmul_rn(mean_d, mean_d)));
  const double mean = shift + mean_d;
  const double invstd = 1.0 / sqrt(var + eps);
  const T w = weight != nullptr ? weight[c] : T(1);
  const T a = static_cast<T>(static_cast<double>(w) * invstd);
  const T b = bias != nullptr ? bias[c] : T(0), m = static_cast<T>(mean);
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    save_mean[c] = m;
    save_invstd[c] = static_cast<T>(invstd);
    save_scale[c] = a;
    if (running_mean != nullptr)
      running_mean[c] = static_cast<T>(__dadd_rn(
          __dmul_rn(1 - momentum, static_cast<double>(running_mean[c])), __dmul_rn(momentum, mean)));
    if (running_var != nullptr) {
      const double unbiased = g.count > 1 ? var * count / (count - 1) : var;
      running_var[c] = static_cast<T>(__dadd_rn(__dmul_rn(1 - momentum, static_cast<double>(running_var[c])),
                                                __dmul_rn(momentum, unbiased)));
    }
  }
  T* zc = z + c * g.hw;
  const int64_t zs = g.c * g.hw;
  for_segment(g, [&](int64_t n, int64_t i) { zc[n * zs + i] = bn_relu_elem(xc[n * bs + i], m, a, b); });
}

template <class T>
__global__ void bn_relu_recompute_kernel(PartTable<const T> x, int64_t c0, Geometry g, const T* save_mean,
                                         const T* save_scale, const T* bias, T* z) {
  const int64_t cl = blockIdx.x, c = c0 + cl;
  int64_t bs = 0;
  const T* xc = x.plane(cl, g.hw, bs);
  const T m = save_mean[c], a = save_scale[c], b = bias != nullptr ? bias[c] : T(0);
  T* zc = z + c * g.hw;
  const int64_t zs = g.c * g.hw;
  for_segment(g, [&](int64_t n, int64_t i) { zc[n * zs + i] = bn_relu_elem(xc[n * bs + i], m, a, b); });
}

// partials[c][s] = (sum g, sum g * (x - mean)), g = gz where z > 0, mean = save_mean[c].
template <class T>
__global__ void bn_relu_grad_sums_kernel(const T* gz, const T* z, PartTable<const T> x, int64_t c0,
                                         Geometry g, const T* save_mean, double* partials) {
  __shared__ double scratch[kThreads / 32];
  const int64_t cl = blockIdx.x, c = c0 + cl;
  int64_t bs = 0;
  const T* xc = x.plane(cl, g.hw, bs);
  const double mean = static_cast<double>(save_mean[c]);
  const T* gzc = gz + c * g.hw;
  const T* zc = z + c * g.hw;
  const int64_t zs = g.c * g.hw;
  double a = 0, b = 0;
  for_segment(g, [&](int64_t n, int64_t i) {
    const T gv = zc[n * zs + i] > T(0) ? gzc[n * zs + i] : T(0);
    const double gd = static_cast<double>(gv);
    a = __dadd_rn(a, gd);
    b = __dadd_rn(b, __dmul_rn(gd, __dsub_rn(static_cast<double>(xc[n * bs + i]), mean)));
  });
  a = block_reduce<kThreads>(a, SumOp{}, 0.0, scratch);
  b = block_reduce<kThreads>(b, SumOp{}, 0.0, scratch);
  if (threadIdx.x == 0) {
    double* out = partials + (c * kMaxSegments + blockIdx.y) * 2;
    out[0] = a;
    out[1] = b;
  }
}

// gweight / gbias (segment 0) and gx for the block's segment, written into the part's gradient.
template <class T>
__global__ void bn_relu_grad_x_kernel(const T* gz, const T* z, PartTable<const T> x, PartTable<T> gx,
                                      int64_t c0, Geometry g, const double* partials, const T* weight,
                                      const T* save_mean, const T* save_invstd, T* gweight, T* gbias) {
  const int64_t cl = blockIdx.x, c = c0 + cl;
  int64_t bs = 0, gbs = 0;
  const T* xc = x.plane(cl, g.hw, bs);
  T* gxc = gx.plane(cl, g.hw, gbs);
  double sum_g = 0, sum_gx = 0;
  combine_partials(partials, c, g.segments, sum_g, sum_gx);
  const double invstd = static_cast<double>(save_invstd[c]);
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    if (gweight != nullptr) gweight[c] = static_cast<T>(sum_gx * invstd);
    if (gbias != nullptr) gbias[c] = static_cast<T>(sum_g);
  }
  const double w = weight != nullptr ? static_cast<double>(weight[c]) : 1.0;
  const double inv_count = 1.0 / static_cast<double>(g.count);
  const double k = w * invstd;
  const double u = __dmul_rn(__dmul_rn(__dmul_rn(__dmul_rn(-k, sum_gx), invstd), invstd), inv_count);
  const double v = __dmul_rn(__dmul_rn(-k, sum_g), inv_count);
  const T kf = static_cast<T>(k), uf = static_cast<T>(u), vf = static_cast<T>(v), mf = save_mean[c];
  const T* gzc = gz + c * g.hw;
  const T* zc = z + c * g.hw;
  const int64_t zs = g.c * g.hw;
  for_segment(g, [&](int64_t n, int64_t i) {
    gxc[n * gbs + i] = bn_relu_grad_elem(gzc[n * zs + i], zc[n * zs + i], xc[n * bs + i], kf, mf, uf, vf);
  });
}

// ---- part tables ----------------------------------------------------------------------

bool sample_dense(const Tensor& x) {
  return x.dim() == 4 && x.stride(3) == 1 && x.stride(2) == x.size(3) && x.stride(1) == x.size(2) * x.size(3);
}

Geometry check_parts(const std::vector<Tensor>& parts, const char* what) {
  TTQ_CHECK(!parts.empty()) << what << ": no input";
  const Tensor& x0 = parts[0];
  int64_t c = 0;
  for (const Tensor& x : parts) {
    TTQ_CHECK(sample_dense(x)) << what << ": dense NCHW samples expected, got strides of " << x.str();
    TTQ_CHECK(x.device() == x0.device() && x.dtype() == x0.dtype() && x.size(0) == x0.size(0) &&
              x.size(2) == x0.size(2) && x.size(3) == x0.size(3))
        << what << ": concatenated parts " << x0.str() << " and " << x.str() << " disagree";
    c += x.size(1);
  }
  return geometry_of(x0.size(0), c, x0.size(2) * x0.size(3));
}

void check_nchw(const Tensor& t, const Geometry& g, DType dtype, const char* what) {
  TTQ_CHECK(t.is_contiguous() && t.dim() == 4 && t.dtype() == dtype && t.size(0) == g.n && t.size(1) == g.c &&
            t.size(2) * t.size(3) == g.hw)
      << what << ": contiguous [" << g.n << ", " << g.c << ", H, W] " << dtype_name(dtype)
      << " expected, got " << t.str();
}

// A per-channel vector: contiguous [C] of the parts' dtype, or undefined when `optional`.
template <class T>
T* channel_ptr(const Tensor& t, const Geometry& g, bool optional, const char* what, const char* name) {
  if (!t.defined() && optional) return nullptr;
  TTQ_CHECK(t.defined() && t.is_contiguous() && t.numel() == g.c && t.dtype() == dtype_of<T>())
      << what << ": " << name << " must be a contiguous [" << g.c << "] " << dtype_name(dtype_of<T>())
      << " tensor, got " << (t.defined() ? t.str() : std::string("undefined"));
  return const_cast<T*>(t.data<T>());
}

// Runs f(table, c0, channels) over chunks of at most kMaxParts parts; `ts` are
// the tensors read or written through the table (parts, or their gradients).
template <class T, class Tensors, class F>
void for_part_chunks(const Tensors& ts, int64_t hw, F&& f) {
  int64_t c0 = 0;
  for (size_t first = 0; first < ts.size(); first += kMaxParts) {
    PartTable<T> table;
    int64_t c = 0;
    for (size_t p = first; p < ts.size() && p < first + kMaxParts; ++p) {
      const Tensor& x = ts[p];
      table.channel_begin[table.parts] = c;
      table.batch_stride[table.parts] = x.size(0) > 1 ? x.stride(0) : x.size(1) * hw;
      table.data[table.parts] = const_cast<T*>(x.template data<std::remove_const_t<T>>());
      ++table.parts;
      c += x.size(1);
    }
    table.channel_begin[table.parts] = c;
    if (c > 0) f(table, c0, c);
    c0 += c;
  }
}

// ---- raw-pointer launchers (one chunk of parts each) ---------------------------------

template <class T>
void bn_relu_stats_cuda(const PartTable<const T>& x, int64_t c0, int64_t channels, const Geometry& g,
                        double* partials, cudaStream_t s) {
  bn_relu_stats_kernel<T>
      <<<dim3(static_cast<unsigned>(channels), g.segments), kThreads, 0, s>>>(x, c0, g, partials);
  TTQ_CUDA_CHECK_LAUNCH();
}

template <class T>
void bn_relu_forward_cuda(const PartTable<const T>& x, int64_t c0, int64_t channels, const Geometry& g,
                          const double* partials, const T* weight, const T* bias, T* running_mean,
                          T* running_var, double momentum, double eps, T* z, T* save_mean, T* save_invstd,
                          T* save_scale, cudaStream_t s) {
  bn_relu_forward_kernel<T><<<dim3(static_cast<unsigned>(channels), g.segments), kThreads, 0, s>>>(
      x, c0, g, partials, weight, bias, running_mean, running_var, momentum, eps, z, save_mean, save_invstd,
      save_scale);
  TTQ_CUDA_CHECK_LAUNCH();
}

template <class T>
void bn_relu_recompute_cuda(const PartTable<const T>& x, int64_t c0, int64_t channels, const Geometry& g,
                            const T* save_mean, const T* save_scale, const T* bias, T* z, cudaStream_t s) {
  bn_relu_recompute_kernel<T><<<dim3(static_cast<unsigned>(channels), g.segments), kThreads, 0, s>>>(
      x, c0, g, save_mean, save_scale, bias, z);
  TTQ_CUDA_CHECK_LAUNCH();
}

template <class T>
void bn_relu_grad_sums_cuda(const T* gz, const T* z, const PartTable<const T>& x, int64_t c0,
                            int64_t channels, const Geometry& g, const T* save_mean, double* partials,
                            cudaStream_t s) {
  bn_relu_grad_sums_kernel<T><<<dim3(static_cast<unsigned>(channels), g.segments), kThreads, 0, s>>>(
      gz, z, x, c0, g, save_mean, partials);
  TTQ_CUDA_CHECK_LAUNCH();
}

template <class T>
void bn_relu_grad_x_cuda(const T* gz, const T* z, const PartTable<const T>& x, const PartTable<T>& gx,
                         int64_t c0, int64_t channels, const Geometry& g, const double* partials,
                         const T* weight, const T* save_mean, const T* save_invstd, T* gweight, T* gbias,
                         cudaStream_t s) {
  bn_relu_grad_x_kernel<T><<<dim3(static_cast<unsigned>(channels), g.segments), kThreads, 0, s>>>(
      gz, z, x, gx, c0, g, partials, weight, save_mean, save_invstd, gweight, gbias);
  TTQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- backend entries ------------------------------------------------------------------

void batch_norm_relu_forward_train(const std::vector<Tensor>& parts, const Tensor& weight, const Tensor& bias,
                                   Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                   Tensor& z, Tensor& save_mean, Tensor& save_invstd, Tensor& save_scale) {
  constexpr const char* what = "cuda::batch_norm_relu_forward_train";
  const Geometry g = check_parts(parts, what);
  DeviceGuard guard(parts[0]);
  check_nchw(z, g, parts[0].dtype(), what);
  if (g.count == 0 || g.c == 0) return;
  dispatch_float(z.dtype(), what, [&](auto tag) {
    using T = decltype(tag);
    const T* w = channel_ptr<T>(weight, g, true, what, "weight");
    const T* b = channel_ptr<T>(bias, g, true, what, "bias");
    T* rm = channel_ptr<T>(running_mean, g, true, what, "running_mean");
    T* rv = channel_ptr<T>(running_var, g, true, what, "running_var");
    T* sm = channel_ptr<T>(save_mean, g, false, what, "save_mean");
    T* si = channel_ptr<T>(save_invstd, g, false, what, "save_invstd");
    T* ss = channel_ptr<T>(save_scale, g, false, what, "save_scale");
    auto* partials = static_cast<double*>(workspace(sizeof(double) * 2 * kMaxSegments * g.c));
    for_part_chunks<const T>(parts, g.hw, [&](const PartTable<const T>& x, int64_t c0, int64_t channels) {
      bn_relu_stats_cuda<T>(x, c0, channels, g, partials, stream());
      bn_relu_forward_cuda<T>(x, c0, channels, g, partials, w, b, rm, rv, momentum, eps, z.data<T>(), sm, si,
                              ss, stream());
    });
  });
}

void batch_norm_relu_recompute(const std::vector<Tensor>& parts, const Tensor& save_mean,
                               const Tensor& save_scale, const Tensor& bias, Tensor& z) {
  constexpr const char* what = "cuda::batch_norm_relu_recompute";
  const Geometry g = check_parts(parts, what);
  DeviceGuard guard(parts[0]);
  check_nchw(z, g, parts[0].dtype(), what);
  if (g.count == 0 || g.c == 0) return;
  dispatch_float(z.dtype(), what, [&](auto tag) {
    using T = decltype(tag);
    const T* sm = channel_ptr<T>(save_mean, g, false, what, "save_mean");
    const T* ss = channel_ptr<T>(save_scale, g, false, what, "save_scale");
    const T* b = channel_ptr<T>(bias, g, true, what, "bias");
    for_part_chunks<const T>(parts, g.hw, [&](const PartTable<const T>& x, int64_t c0, int64_t channels) {
      bn_relu_recompute_cuda<T>(x, c0, channels, g, sm, ss, b, z.data<T>(), stream());
    });
  });
}

void batch_norm_relu_backward(const Tensor& gz, const Tensor& z, const std::vector<Tensor>& parts,
                              const Tensor& weight, const Tensor& save_mean, const Tensor& save_invstd,
                              std::vector<Tensor>& gparts, Tensor& gweight, Tensor& gbias) {
  constexpr const char* what = "cuda::batch_norm_relu_backward";
  const Geometry g = check_parts(parts, what);
  DeviceGuard guard(parts[0]);
  const DType dtype = parts[0].dtype();
  check_nchw(gz, g, dtype, what);
  check_nchw(z, g, dtype, what);
  TTQ_CHECK(gparts.size() == parts.size()) << what << ": one gradient per part expected";
  for (size_t i = 0; i < parts.size(); ++i)
    TTQ_CHECK(gparts[i].is_contiguous() && gparts[i].shape() == parts[i].shape() &&
              gparts[i].dtype() == dtype && gparts[i].device() == parts[i].device())
        << what << ": gradient " << gparts[i].str() << " does not match part " << parts[i].str();
  dispatch_float(dtype, what, [&](auto tag) {
    using T = decltype(tag);
    const T* w = channel_ptr<T>(weight, g, true, what, "weight");
    const T* sm = channel_ptr<T>(save_mean, g, false, what, "save_mean");
    const T* si = channel_ptr<T>(save_invstd, g, false, what, "save_invstd");
    T* gw = channel_ptr<T>(gweight, g, true, what, "gweight");
    T* gb = channel_ptr<T>(gbias, g, true, what, "gbias");
    if (g.c == 0) return;
    if (g.count == 0) {  // empty sums; nothing to write in gx
      if (gw != nullptr) fill(gweight, 0);
      if (gb != nullptr) fill(gbias, 0);
      return;
    }
    auto* partials = static_cast<double*>(workspace(sizeof(double) * 2 * kMaxSegments * g.c));
    // Two sweeps over the chunks: the gradient tables are built beside the
    // parts' ones, chunk for chunk (same part counts, same channel offsets).
    std::vector<PartTable<T>> gx_tables;
    for_part_chunks<T>(gparts, g.hw,
                       [&](const PartTable<T>& t, int64_t, int64_t) { gx_tables.push_back(t); });
    size_t chunk = 0;
    for_part_chunks<const T>(parts, g.hw, [&](const PartTable<const T>& x, int64_t c0, int64_t channels) {
      bn_relu_grad_sums_cuda<T>(gz.data<T>(), z.data<T>(), x, c0, channels, g, sm, partials, stream());
      bn_relu_grad_x_cuda<T>(gz.data<T>(), z.data<T>(), x, gx_tables[chunk++], c0, channels, g, partials, w,
                             sm, si, gw, gb, stream());
    });
  });
}

}  // namespace ttq::cuda
