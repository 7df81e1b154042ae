// CPU max / average 2-D pooling with PyTorch's output-size and divisor rules
// (padding, ceil_mode, count_include_pad), and ttq::pool_out_size.
// OpenMP over (n, c) planes. CUDA twin: engine/cuda/pool.cu. Reference: the
// MAX_POOL2D / AVG_POOL2D cases of tests/test_backend_ops.cpp, with hand-computed
// output sizes.
#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/backend.h"
#include "engine/cpu/parallel.h"

namespace ttq {

int64_t pool_out_size(int64_t in, int kernel, int stride, int pad, bool ceil_mode) {
  const int64_t num = in + 2 * static_cast<int64_t>(pad) - kernel + (ceil_mode ? stride - 1 : 0);
  // Floor division (num may be negative for a kernel larger than the padded input).
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  // In ceil mode the last window must start inside the input or the left padding.
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

}  // namespace ttq

namespace ttq::cpu {

namespace {

struct PoolGeom {
  int64_t planes, c, h, w, ho, wo, x_batch_stride;
};

// x: each sample a dense [C,H,W] block, any batch stride; y / gy / gx contiguous.
PoolGeom geometry(const Tensor& x, const Tensor& y) {
  TTQ_CHECK(x.dim() == 4 && x.stride(3) == 1 && x.stride(2) == x.size(3) &&
            x.stride(1) == x.size(2) * x.size(3))
      << "pool: dense NCHW samples expected, got strides of " << x.str();
  TTQ_CHECK(y.is_contiguous()) << "pool: contiguous output expected";
  const int64_t chw = x.size(1) * x.size(2) * x.size(3);
  return {x.size(0) * x.size(1),
          x.size(1),
          x.size(2),
          x.size(3),
          y.size(2),
          y.size(3),
          x.size(0) > 1 ? x.stride(0) : chw};
}

// Offset of plane `pl` = (n, c) in x.
inline int64_t plane_offset(const PoolGeom& g, int64_t pl) {
  return (pl / g.c) * g.x_batch_stride + (pl % g.c) * g.h * g.w;
}

// One output (oh, ow) of a max pool: rows [ih0, ih1), columns [max(w0, 0), w1).
// Strictly greater keeps the first maximum; NaN propagates, as PyTorch.
template <class T>
inline void max_window(const T* xs, int64_t w, int64_t ih0, int64_t ih1, int64_t w0, int64_t w1, T& y,
                       int32_t& idx) {
  T best = -std::numeric_limits<T>::infinity();
  int64_t best_i = ih0 * w + std::max<int64_t>(w0, 0);
  for (int64_t ih = ih0; ih < ih1; ++ih) {
    for (int64_t iw = std::max<int64_t>(w0, 0); iw < w1; ++iw) {
      const T v = xs[ih * w + iw];
      if (v > best || std::isnan(v)) {
        best = v;
        best_i = ih * w + iw;
      }
    }
  }
  y = best;
  idx = static_cast<int32_t>(best_i);
}

template <class T>
void max_forward_typed(const Tensor& x, const Pool2dParams& p, Tensor& y, Tensor& indices) {
  const PoolGeom g = geometry(x, y);
  const T* xp = x.data<T>();
  T* yp = y.data<T>();
  int32_t* ip = indices.data<int32_t>();
  // Outputs whose window lies inside the row, [ow_lo, ow_hi), run kChunk at a time
  // with the window taps outermost: the same comparisons in the same order per output
  // as max_window, but as selects over a vector of outputs instead of unpredictable
  // branches (they made this pool 6% of a small-DenseNet training step).
  const int64_t ow_lo = std::min<int64_t>(g.wo, (p.pad_w + p.stride_w - 1) / p.stride_w);
  const int64_t last_start = g.w - p.kernel_w + p.pad_w;  // ow * stride may not pass it; may be negative
  const int64_t ow_hi =
      last_start < 0 ? ow_lo : std::max<int64_t>(ow_lo, std::min<int64_t>(g.wo, last_start / p.stride_w + 1));
  constexpr int64_t kChunk = 64;
#pragma omp parallel for schedule(static) if (g.planes * g.ho * g.wo * p.kernel_h * p.kernel_w >= \
                                              kParallelElements)
  for (int64_t pl = 0; pl < g.planes; ++pl) {
    const T* xs = xp + plane_offset(g, pl);
    T* ys = yp + pl * g.ho * g.wo;
    int32_t* is = ip + pl * g.ho * g.wo;
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      const int64_t h0 = oh * p.stride_h - p.pad_h;
      const int64_t ih0 = std::max<int64_t>(h0, 0), ih1 = std::min<int64_t>(h0 + p.kernel_h, g.h);
      auto edge = [&](int64_t ow) {
        const int64_t w0 = ow * p.stride_w - p.pad_w;
        max_window(xs, g.w, ih0, ih1, w0, std::min<int64_t>(w0 + p.kernel_w, g.w), ys[oh * g.wo + ow],
                   is[oh * g.wo + ow]);
      };
      for (int64_t ow = 0; ow < ow_lo; ++ow) edge(ow);
      for (int64_t c0 = ow_lo; c0 < ow_hi; c0 += kChunk) {
        const int64_t len = std::min<int64_t>(kChunk, ow_hi - c0);
        T best[kChunk];
        int32_t bi[kChunk];
        for (int64_t j = 0; j < len; ++j) {
          best[j] = -std::numeric_limits<T>::infinity();
          bi[j] = static_cast<int32_t>(ih0 * g.w + (c0 + j) * p.stride_w - p.pad_w);
        }
        for (int64_t ih = ih0; ih < ih1; ++ih) {
          for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
            const int64_t col0 = c0 * p.stride_w - p.pad_w + kw;
            const T* row = xs + ih * g.w + col0;
            const int32_t i0 = static_cast<int32_t>(ih * g.w + col0);
            for (int64_t j = 0; j < len; ++j) {
              const T v = row[j * p.stride_w];
              const bool take = (v > best[j]) | (v != v);
              best[j] = take ? v : best[j];
              bi[j] = take ? i0 + static_cast<int32_t>(j * p.stride_w) : bi[j];
            }
          }
        }
        std::copy(best, best + len, ys + oh * g.wo + c0);
        std::copy(bi, bi + len, is + oh * g.wo + c0);
      }
      for (int64_t ow = ow_hi; ow < g.wo; ++ow) edge(ow);
    }
  }
}

template <class T>
void max_backward_typed(const Tensor& gy, const Tensor& indices, Tensor& gx) {
  TTQ_CHECK(gy.is_contiguous() && indices.is_contiguous() && gx.is_contiguous())
      << "max_pool2d_backward: contiguous operands expected";
  const int64_t planes = gx.size(0) * gx.size(1), hw = gx.size(2) * gx.size(3);
  const int64_t ohw = gy.size(2) * gy.size(3);
  const T* gyp = gy.data<T>();
  const int32_t* ip = indices.data<int32_t>();
  T* gxp = gx.data<T>();
#pragma omp parallel for schedule(static) if (planes * hw >= kParallelElements)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* gs = gxp + pl * hw;
    std::fill(gs, gs + hw, T(0));
    const T* g = gyp + pl * ohw;
    const int32_t* is = ip + pl * ohw;
    for (int64_t o = 0; o < ohw; ++o) gs[is[o]] += g[o];
  }
}

// The window of output (oh, ow) clipped to the input, and its divisor:
// PyTorch clips the window to the padded input first (this is what shrinks the
// last window in ceil mode), counts it when count_include_pad, then clips to the input.
struct AvgWindow {
  int64_t h0, h1, w0, w1;
  double divisor;
};

inline AvgWindow avg_window(const Pool2dParams& p, int64_t h, int64_t w, int64_t oh, int64_t ow) {
  int64_t h0 = oh * p.stride_h - p.pad_h, w0 = ow * p.stride_w - p.pad_w;
  int64_t h1 = std::min<int64_t>(h0 + p.kernel_h, h + p.pad_h);
  int64_t w1 = std::min<int64_t>(w0 + p.kernel_w, w + p.pad_w);
  const int64_t padded = (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0), w0 = std::max<int64_t>(w0, 0);
  h1 = std::min<int64_t>(h1, h), w1 = std::min<int64_t>(w1, w);
  const int64_t inside = std::max<int64_t>(h1 - h0, 0) * std::max<int64_t>(w1 - w0, 0);
  return {h0, h1, w0, w1, static_cast<double>(p.count_include_pad ? padded : inside)};
}

template <class T>
void avg_forward_typed(const Tensor& x, const Pool2dParams& p, Tensor& y) {
  const PoolGeom g = geometry(x, y);
  const T* xp = x.data<T>();
  T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (g.planes * g.h * g.w >= kParallelElements)
  for (int64_t pl = 0; pl < g.planes; ++pl) {
    const T* xs = xp + plane_offset(g, pl);
    T* ys = yp + pl * g.ho * g.wo;
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      for (int64_t ow = 0; ow < g.wo; ++ow) {
        const AvgWindow win = avg_window(p, g.h, g.w, oh, ow);
        double s = 0;
        for (int64_t ih = win.h0; ih < win.h1; ++ih)
          for (int64_t iw = win.w0; iw < win.w1; ++iw) s += static_cast<double>(xs[ih * g.w + iw]);
        ys[oh * g.wo + ow] = win.divisor > 0 ? static_cast<T>(s / win.divisor) : T(0);
      }
    }
  }
}

template <class T>
void avg_backward_typed(const Tensor& gy, const Pool2dParams& p, Tensor& gx) {
  TTQ_CHECK(gy.is_contiguous() && gx.is_contiguous()) << "avg_pool2d_backward: contiguous operands expected";
  const int64_t planes = gx.size(0) * gx.size(1), h = gx.size(2), w = gx.size(3);
  const int64_t ho = gy.size(2), wo = gy.size(3);
  const T* gyp = gy.data<T>();
  T* gxp = gx.data<T>();
#pragma omp parallel for schedule(static) if (planes * h * w >= kParallelElements)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* gs = gxp + pl * h * w;
    std::fill(gs, gs + h * w, T(0));
    const T* g = gyp + pl * ho * wo;
    for (int64_t oh = 0; oh < ho; ++oh) {
      for (int64_t ow = 0; ow < wo; ++ow) {
        const AvgWindow win = avg_window(p, h, w, oh, ow);
        if (win.divisor <= 0) continue;
        const T v = static_cast<T>(g[oh * wo + ow] / static_cast<T>(win.divisor));
        for (int64_t ih = win.h0; ih < win.h1; ++ih)
          for (int64_t iw = win.w0; iw < win.w1; ++iw) gs[ih * w + iw] += v;
      }
    }
  }
}

}  // namespace

void max_pool2d_forward(const Tensor& x, const Pool2dParams& p, Tensor& y, Tensor& indices) {
  dispatch_float(x.dtype(), "max_pool2d_forward",
                 [&](auto tag) { max_forward_typed<decltype(tag)>(x, p, y, indices); });
}

void max_pool2d_backward(const Tensor& gy, const Tensor& indices, Tensor& gx) {
  dispatch_float(gy.dtype(), "max_pool2d_backward",
                 [&](auto tag) { max_backward_typed<decltype(tag)>(gy, indices, gx); });
}

void avg_pool2d_forward(const Tensor& x, const Pool2dParams& p, Tensor& y) {
  dispatch_float(x.dtype(), "avg_pool2d_forward",
                 [&](auto tag) { avg_forward_typed<decltype(tag)>(x, p, y); });
}

void avg_pool2d_backward(const Tensor& gy, const Pool2dParams& p, Tensor& gx) {
  dispatch_float(gy.dtype(), "avg_pool2d_backward",
                 [&](auto tag) { avg_backward_typed<decltype(tag)>(gy, p, gx); });
}

}  // namespace ttq::cpu
