// CUDA max / avg pooling (NCHW), own kernels so that ceil_mode, PyTorch's
// avg divisor rules and the I32 index contract match the CPU exactly. CPU
// twin: engine/cpu/pool.cpp; tested by tests/test_backend_ops.cpp.
//
// Forward: one thread per output element, scanning its window h-major as the
// CPU does (ties keep the first maximum; NaN wins, as PyTorch). Backward: each
// input element receives its gradients in increasing output order (avg: one
// thread per input gathering from the windows that cover it; max: a warp per
// plane scattering through the indices), the same additions in the same order
// as the CPU's loops, so results are deterministic, with no atomics.
#include "engine/backend.h"
#include "engine/cuda/launch.cuh"

namespace ttq::cuda {

namespace {

struct PoolGeom {
  int64_t planes;  // N * C
  int64_t c, h, w, oh, ow;
  int64_t x_batch_stride;  // x may be a channel slice of a wider buffer (each sample dense)
  int kh, kw, sh, sw, ph, pw;
  __device__ __forceinline__ int64_t x_plane(int64_t plane) const {
    return (plane / c) * x_batch_stride + (plane % c) * h * w;
  }
};

// x: each sample a dense [C, H, W] block with any batch stride, as on the CPU;
// y contiguous.
PoolGeom geom_of(const Tensor& x, const Tensor& y, const Pool2dParams& p) {
  TTQ_CHECK(x.dim() == 4 && y.dim() == 4) << "cuda pooling: 4-D tensors expected";
  TTQ_CHECK(x.stride(3) == 1 && x.stride(2) == x.size(3) && x.stride(1) == x.size(2) * x.size(3))
      << "cuda pooling: dense NCHW samples expected, got strides of " << x.str();
  TTQ_CHECK(y.is_contiguous()) << "cuda pooling: contiguous output expected";
  const int64_t chw = x.size(1) * x.size(2) * x.size(3);
  return PoolGeom{x.size(0) * x.size(1),
                  x.size(1),
                  x.size(2),
                  x.size(3),
                  y.size(2),
                  y.size(3),
                  x.size(0) > 1 ? x.stride(0) : chw,
                  p.kernel_h,
                  p.kernel_w,
                  p.stride_h,
                  p.stride_w,
                  p.pad_h,
                  p.pad_w};
}

// Range [lo, hi) of output rows whose window [o*s - p, o*s - p + k) holds input row i.
__device__ __forceinline__ void covering(int64_t i, int k, int s, int p, int64_t out, int64_t& lo,
                                         int64_t& hi) {
  const int64_t a = i + p - k + 1;  // o*s >= a
  lo = a <= 0 ? 0 : (a + s - 1) / s;
  hi = (i + p) / s + 1;
  if (hi > out) hi = out;
}

template <class T>
struct MaxPoolForward {
  const T* x;
  T* y;
  int32_t* idx;
  PoolGeom g;
  __device__ void operator()(int64_t i) const {
    const int64_t ow_i = i % g.ow, oh_i = (i / g.ow) % g.oh, plane = i / (g.ow * g.oh);
    int64_t hs = oh_i * g.sh - g.ph, ws = ow_i * g.sw - g.pw;
    const int64_t he = min(hs + g.kh, g.h), we = min(ws + g.kw, g.w);
    hs = max(hs, int64_t(0));
    ws = max(ws, int64_t(0));
    const T* xp = x + g.x_plane(plane);
    T best = T(-INFINITY);
    int64_t best_i = hs * g.w + ws;
    for (int64_t hh = hs; hh < he; ++hh)
      for (int64_t ww = ws; ww < we; ++ww) {
        const T v = xp[hh * g.w + ww];
        if (v > best || v != v) {
          best = v;
          best_i = hh * g.w + ww;
        }
      }
    y[i] = best;
    idx[i] = static_cast<int32_t>(best_i);
  }
};

// PyTorch's avg-pool window: the divisor counts padding (up to the padded
// edge) when count_include_pad, else only the input elements; a window that
// lies wholly in the padding gives 0.
struct AvgWindow {
  int64_t hs, he, ws, we, divisor;
};
__device__ __forceinline__ AvgWindow avg_window(const PoolGeom& g, bool include_pad, int64_t oh, int64_t ow) {
  int64_t hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
  int64_t he = min(hs + g.kh, g.h + g.ph), we = min(ws + g.kw, g.w + g.pw);
  const int64_t pool_size = (he - hs) * (we - ws);
  hs = max(hs, int64_t(0));
  ws = max(ws, int64_t(0));
  he = min(he, g.h);
  we = min(we, g.w);
  return AvgWindow{hs, he, ws, we, include_pad ? pool_size : (he - hs) * (we - ws)};
}

template <class T>
struct AvgPoolForward {
  const T* x;
  T* y;
  PoolGeom g;
  bool include_pad;
  __device__ void operator()(int64_t i) const {
    const int64_t ow_i = i % g.ow, oh_i = (i / g.ow) % g.oh, plane = i / (g.ow * g.oh);
    const AvgWindow win = avg_window(g, include_pad, oh_i, ow_i);
    if (win.hs >= win.he || win.ws >= win.we) {
      y[i] = T(0);
      return;
    }
    const T* xp = x + g.x_plane(plane);
    double acc = 0;  // in double, as the CPU
    for (int64_t hh = win.hs; hh < win.he; ++hh)
      for (int64_t ww = win.ws; ww < win.we; ++ww) acc += static_cast<double>(xp[hh * g.w + ww]);
    y[i] = static_cast<T>(acc / static_cast<double>(win.divisor));
  }
};

template <class T>
struct AvgPoolBackward {
  const T* gy;
  T* gx;
  PoolGeom g;
  bool include_pad;
  __device__ void operator()(int64_t i) const {
    const int64_t w_i = i % g.w, h_i = (i / g.w) % g.h, plane = i / (g.w * g.h);
    int64_t oh0, oh1, ow0, ow1;
    covering(h_i, g.kh, g.sh, g.ph, g.oh, oh0, oh1);
    covering(w_i, g.kw, g.sw, g.pw, g.ow, ow0, ow1);
    const T* gp = gy + plane * g.oh * g.ow;
    T acc = T(0);
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const AvgWindow win = avg_window(g, include_pad, oh, ow);
        // The clipped window decides whether this input is in it (ceil_mode
        // windows can end past the padded edge).
        if (h_i < win.hs || h_i >= win.he || w_i < win.ws || w_i >= win.we) continue;
        acc += gp[oh * g.ow + ow] / static_cast<T>(win.divisor);
      }
    gx[i] = acc;
  }
};

// The window geometry is not an argument of the backward pass, so it scatters
// through the indices. One warp per (n, c) plane: it zeroes the plane, then
// takes the outputs 32 at a time in order; lanes that hit the same input are
// grouped (__match_any_sync) and the group's lowest lane adds their values in
// lane order. Every input therefore receives its gradients in increasing
// output order, as in the CPU's loop: deterministic, no atomics, coalesced
// reads of gy and the indices.
constexpr int kPoolBackThreads = 256;

template <class T>
__global__ void max_pool_backward_kernel(const T* gy, const int32_t* idx, T* gx, int64_t planes,
                                         int64_t in_plane, int64_t out_plane) {
  __shared__ T vals[kPoolBackThreads];
  const int lane = threadIdx.x & 31;
  T* my_vals = vals + (threadIdx.x & ~31);
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t plane = warp; plane < planes; plane += nwarps) {
    const T* gp = gy + plane * out_plane;
    const int32_t* ip = idx + plane * out_plane;
    T* xp = gx + plane * in_plane;
    for (int64_t i = lane; i < in_plane; i += 32) xp[i] = T(0);
    __syncwarp();
    for (int64_t base = 0; base < out_plane; base += 32) {
      const int64_t o = base + lane;
      int32_t t = o < out_plane ? ip[o] : -1;
      if (t >= in_plane) t = -1;  // never write outside the plane
      my_vals[lane] = o < out_plane ? gp[o] : T(0);
      const unsigned group = __match_any_sync(0xffffffffu, t);
      __syncwarp();
      if (t >= 0 && lane == __ffs(group) - 1) {
        T acc = xp[t];
        for (unsigned m = group; m != 0; m &= m - 1) acc += my_vals[__ffs(m) - 1];
        xp[t] = acc;
      }
      __syncwarp();
    }
  }
}

}  // namespace

void max_pool2d_forward(const Tensor& x, const Pool2dParams& p, Tensor& y, Tensor& indices) {
  DeviceGuard dg(x);
  const PoolGeom g = geom_of(x, y, p);
  TTQ_CHECK(indices.dtype() == DType::I32 && indices.is_contiguous() && indices.shape() == y.shape())
      << "cuda::max_pool2d_forward: indices must be contiguous I32 " << shape_str(y.shape());
  TTQ_CHECK(g.h * g.w <= INT32_MAX) << "cuda::max_pool2d_forward: plane too large for I32 indices";
  dispatch_float(x.dtype(), "cuda::max_pool2d_forward", [&](auto tag) {
    using T = decltype(tag);
    launch_elementwise(y.numel(), stream(),
                       MaxPoolForward<T>{x.data<T>(), y.data<T>(), indices.data<int32_t>(), g});
  });
}

void max_pool2d_backward(const Tensor& gy, const Tensor& indices, Tensor& gx) {
  DeviceGuard dg(gy);
  TTQ_CHECK(indices.dtype() == DType::I32 && indices.is_contiguous() && indices.shape() == gy.shape())
      << "cuda::max_pool2d_backward: indices must be contiguous I32 " << shape_str(gy.shape());
  TTQ_CHECK(gx.dim() == 4 && gy.dim() == 4 && gx.is_contiguous() && gy.is_contiguous())
      << "cuda::max_pool2d_backward: contiguous 4-D tensors expected";
  if (gx.numel() == 0) return;
  const int64_t planes = gx.size(0) * gx.size(1);
  const int64_t in_plane = gx.size(2) * gx.size(3), out_plane = gy.size(2) * gy.size(3);
  dispatch_float(gy.dtype(), "cuda::max_pool2d_backward", [&](auto tag) {
    using T = decltype(tag);
    const int64_t warps = planes;
    const unsigned blocks = grid_for(warps * 32, kPoolBackThreads);
    max_pool_backward_kernel<T><<<blocks, kPoolBackThreads, 0, stream()>>>(
        gy.data<T>(), indices.data<int32_t>(), gx.data<T>(), planes, in_plane, out_plane);
    TTQ_CUDA_CHECK_LAUNCH();
  });
}

void avg_pool2d_forward(const Tensor& x, const Pool2dParams& p, Tensor& y) {
  DeviceGuard dg(x);
  const PoolGeom g = geom_of(x, y, p);
  dispatch_float(x.dtype(), "cuda::avg_pool2d_forward", [&](auto tag) {
    using T = decltype(tag);
    launch_elementwise(y.numel(), stream(),
                       AvgPoolForward<T>{x.data<T>(), y.data<T>(), g, p.count_include_pad});
  });
}

void avg_pool2d_backward(const Tensor& gy, const Pool2dParams& p, Tensor& gx) {
  DeviceGuard dg(gy);
  const PoolGeom g = geom_of(gx, gy, p);
  dispatch_float(gy.dtype(), "cuda::avg_pool2d_backward", [&](auto tag) {
    using T = decltype(tag);
    launch_elementwise(gx.numel(), stream(),
                       AvgPoolBackward<T>{gy.data<T>(), gx.data<T>(), g, p.count_include_pad});
  });
}

}  // namespace ttq::cuda
