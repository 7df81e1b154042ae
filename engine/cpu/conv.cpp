// CPU conv2d (cross-correlation, dilation 1, groups 1): im2col + OpenBLAS GEMM.
// A 1x1 / stride 1 / pad 0 convolution is a plain GEMM on the input plane.
// Reference: the naive loops in tests/test_backend_ops.cpp (CONV2D cases);
// timing: bench/bench_conv_cpu.cpp.
//
// Parallelism: with at least as many samples as threads, each thread takes
// whole samples (im2col + single-threaded GEMM, no synchronisation; the filter
// gradient goes to one partial sum per thread). With fewer samples (inference
// on one image) the samples run in turn and each step is split instead.
#include <algorithm>
#include <cstring>
#include <vector>

#include "engine/backend.h"
#include "engine/cpu/blas.h"
#include "engine/cpu/parallel.h"

namespace ttq::cpu {

namespace {

struct ConvGeom {
  int64_t n, ci, h, w, co, kh, kw, ho, wo;
  int64_t sh, sw, ph, pw;
  int64_t x_batch_stride;  // x may be a channel slice of a wider buffer: each sample dense, batch stride free
  int64_t k() const { return ci * kh * kw; }
  int64_t p() const { return ho * wo; }
  bool direct() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

// True when every sample x[n] is a dense [C,H,W] block.
bool sample_dense(const Tensor& x) {
  return x.dim() == 4 && x.stride(3) == 1 && x.stride(2) == x.size(3) && x.stride(1) == x.size(2) * x.size(3);
}

ConvGeom geometry(const Tensor& x, const Tensor& w, const Conv2dParams& p, const Tensor& y_or_gy) {
  ConvGeom g;
  g.n = x.size(0), g.ci = x.size(1), g.h = x.size(2), g.w = x.size(3);
  g.co = w.size(0), g.kh = w.size(2), g.kw = w.size(3);
  g.ho = y_or_gy.size(2), g.wo = y_or_gy.size(3);
  g.sh = p.stride_h, g.sw = p.stride_w, g.ph = p.pad_h, g.pw = p.pad_w;
  g.x_batch_stride = x.size(0) > 1 ? x.stride(0) : g.ci * g.h * g.w;
  return g;
}

// Rows of channel c: col[(c*kh+i)*kw+j, oh*wo+ow] = x[c, oh*sh-ph+i, ow*sw-pw+j], 0 outside.
template <class T>
void im2col_channel(const T* x, const ConvGeom& g, int64_t c, T* col) {
  const int64_t P = g.p();
  const T* xc = x + c * g.h * g.w;
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      T* row = col + ((c * g.kh + i) * g.kw + j) * P;
      // Valid ow range for this tap: 0 <= ow*sw - pw + j < w.
      const int64_t ow_lo = std::clamp<int64_t>((g.pw - j + g.sw - 1) / g.sw, 0, g.wo);
      const int64_t ow_hi = std::clamp<int64_t>((g.w + g.pw - j + g.sw - 1) / g.sw, ow_lo, g.wo);
      for (int64_t oh = 0; oh < g.ho; ++oh) {
        T* r = row + oh * g.wo;
        const int64_t ih = oh * g.sh - g.ph + i;
        if (ih < 0 || ih >= g.h) {
          std::fill(r, r + g.wo, T(0));
          continue;
        }
        const T* xr = xc + ih * g.w - g.pw + j;
        std::fill(r, r + ow_lo, T(0));
        if (g.sw == 1) {
          std::memcpy(r + ow_lo, xr + ow_lo, sizeof(T) * (ow_hi - ow_lo));
        } else {
          for (int64_t ow = ow_lo; ow < ow_hi; ++ow) r[ow] = xr[ow * g.sw];
        }
        std::fill(r + ow_hi, r + g.wo, T(0));
      }
    }
  }
}

// gx[c] += the rows of channel c of col (the adjoint of im2col_channel); gx[c] zeroed first.
template <class T>
void col2im_channel(const T* col, const ConvGeom& g, int64_t c, T* gx) {
  const int64_t P = g.p();
  T* gc = gx + c * g.h * g.w;
  std::fill(gc, gc + g.h * g.w, T(0));
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      const T* row = col + ((c * g.kh + i) * g.kw + j) * P;
      const int64_t ow_lo = std::clamp<int64_t>((g.pw - j + g.sw - 1) / g.sw, 0, g.wo);
      const int64_t ow_hi = std::clamp<int64_t>((g.w + g.pw - j + g.sw - 1) / g.sw, ow_lo, g.wo);
      for (int64_t oh = 0; oh < g.ho; ++oh) {
        const int64_t ih = oh * g.sh - g.ph + i;
        if (ih < 0 || ih >= g.h) continue;
        const T* r = row + oh * g.wo;
        T* gr = gc + ih * g.w - g.pw + j;
        if (g.sw == 1) {
#pragma omp simd
          for (int64_t ow = ow_lo; ow < ow_hi; ++ow) gr[ow] += r[ow];
        } else {
          for (int64_t ow = ow_lo; ow < ow_hi; ++ow) gr[ow * g.sw] += r[ow];
        }
      }
    }
  }
}

template <class T>
void add_bias(T* y, const T* bias, int64_t co, int64_t P) {
  for (int64_t c = 0; c < co; ++c) {
    const T b = bias[c];
    T* yc = y + c * P;
#pragma omp simd
    for (int64_t q = 0; q < P; ++q) yc[q] += b;
  }
}

// Whole samples per thread when there are enough samples; a small conv runs
// serially (whole samples on one thread).
bool whole_samples(const ConvGeom& g) {
  const int threads = omp_get_max_threads();
  return threads <= 1 || g.n >= threads || g.n * g.co * g.k() * g.p() < kParallelMacs;
}
bool fork_samples(const ConvGeom& g) { return g.n > 1 && g.n * g.co * g.k() * g.p() >= kParallelMacs; }

template <class T>
void forward_typed(const T* x, const T* w, const T* bias, const ConvGeom& g, T* y) {
  const int64_t K = g.k(), P = g.p();
  if (whole_samples(g)) {
#pragma omp parallel for schedule(static) if (fork_samples(g))
    for (int64_t n = 0; n < g.n; ++n) {
      const T* xn = x + n * g.x_batch_stride;
      const T* col = xn;
      if (!g.direct()) {
        T* buf = thread_scratch<T>(static_cast<size_t>(K * P));
        for (int64_t c = 0; c < g.ci; ++c) im2col_channel(xn, g, c, buf);
        col = buf;
      }
      T* yn = y + n * g.co * P;
      gemm_rm(false, false, g.co, P, K, T(1), w, K, col, P, T(0), yn, P);
      if (bias) add_bias(yn, bias, g.co, P);
    }
    return;
  }
  T* buf = g.direct() ? nullptr : thread_scratch<T>(static_cast<size_t>(K * P));
  for (int64_t n = 0; n < g.n; ++n) {
    const T* xn = x + n * g.x_batch_stride;
    if (buf) {
#pragma omp parallel for schedule(static) if (K * P >= kParallelElements)
      for (int64_t c = 0; c < g.ci; ++c) im2col_channel(xn, g, c, buf);
    }
    T* yn = y + n * g.co * P;
    gemm_parallel(false, false, g.co, P, K, T(1), w, K, buf ? buf : xn, P, T(0), yn, P);
    if (bias) add_bias(yn, bias, g.co, P);
  }
}

template <class T>
void backward_data_typed(const T* gy, const T* w, const ConvGeom& g, T* gx) {
  // gcol[K,P] = w^T [K,Co] @ gy[n] [Co,P]; gx[n] = col2im(gcol).
  const int64_t K = g.k(), P = g.p(), xs = g.ci * g.h * g.w;
  if (whole_samples(g)) {
#pragma omp parallel for schedule(static) if (fork_samples(g))
    for (int64_t n = 0; n < g.n; ++n) {
      const T* gyn = gy + n * g.co * P;
      if (g.direct()) {
        gemm_rm(true, false, K, P, g.co, T(1), w, K, gyn, P, T(0), gx + n * xs, P);
        continue;
      }
      T* gcol = thread_scratch<T>(static_cast<size_t>(K * P));
      gemm_rm(true, false, K, P, g.co, T(1), w, K, gyn, P, T(0), gcol, P);
      for (int64_t c = 0; c < g.ci; ++c) col2im_channel(gcol, g, c, gx + n * xs);
    }
    return;
  }
  T* gcol = g.direct() ? nullptr : thread_scratch<T>(static_cast<size_t>(K * P));
  for (int64_t n = 0; n < g.n; ++n) {
    const T* gyn = gy + n * g.co * P;
    gemm_parallel(true, false, K, P, g.co, T(1), w, K, gyn, P, T(0), gcol ? gcol : gx + n * xs, P);
    if (gcol) {
#pragma omp parallel for schedule(static) if (K * P >= kParallelElements)
      for (int64_t c = 0; c < g.ci; ++c) col2im_channel(gcol, g, c, gx + n * xs);
    }
  }
}

template <class T>
void backward_filter_typed(const T* gy, const T* x, const ConvGeom& g, T* gw, T* gbias) {
  // gw [Co,K] = sum_n gy[n] [Co,P] @ col[n]^T [P,K].
  const int64_t K = g.k(), P = g.p(), CK = g.co * K;
  if (whole_samples(g) && fork_samples(g)) {
    const int threads = std::max(1, std::min<int>(omp_get_max_threads(), static_cast<int>(g.n)));
    std::vector<T> partial(static_cast<size_t>(threads - 1) * CK);  // thread 0 writes gw itself
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      T* acc = t == 0 ? gw : partial.data() + (t - 1) * CK;
      const int64_t n0 = g.n * t / nt, n1 = g.n * (t + 1) / nt;
      if (n0 == n1) std::fill(acc, acc + CK, T(0));
      for (int64_t n = n0; n < n1; ++n) {
        const T* xn = x + n * g.x_batch_stride;
        const T* col = xn;
        if (!g.direct()) {
          T* buf = thread_scratch<T>(static_cast<size_t>(K * P));
          for (int64_t c = 0; c < g.ci; ++c) im2col_channel(xn, g, c, buf);
          col = buf;
        }
        gemm_rm(false, true, g.co, K, P, T(1), gy + n * g.co * P, P, col, P, n == n0 ? T(0) : T(1), acc, K);
      }
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t i = 0; i < CK; ++i) {
        T s = gw[i];
        for (int u = 1; u < nt; ++u) s += partial[(u - 1) * CK + i];
        gw[i] = s;
      }
    }
  } else {
    T* buf = g.direct() ? nullptr : thread_scratch<T>(static_cast<size_t>(K * P));
    if (g.n == 0) std::fill(gw, gw + CK, T(0));
    for (int64_t n = 0; n < g.n; ++n) {
      const T* xn = x + n * g.x_batch_stride;
      if (buf) {
#pragma omp parallel for schedule(static) if (K * P >= kParallelElements)
        for (int64_t c = 0; c < g.ci; ++c) im2col_channel(xn, g, c, buf);
      }
      gemm_parallel(false, true, g.co, K, P, T(1), gy + n * g.co * P, P, buf ? buf : xn, P,
                    n == 0 ? T(0) : T(1), gw, K);
    }
  }
  if (gbias) {
#pragma omp parallel for schedule(static) if (g.n * g.co * P >= kParallelElements)
    for (int64_t c = 0; c < g.co; ++c) {
      double s = 0;
      for (int64_t n = 0; n < g.n; ++n) {
        const T* r = gy + (n * g.co + c) * P;
#pragma omp simd reduction(+ : s)
        for (int64_t q = 0; q < P; ++q) s += static_cast<double>(r[q]);
      }
      gbias[c] = static_cast<T>(s);
    }
  }
}

}  // namespace

void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Tensor& y) {
  TTQ_CHECK(sample_dense(x) && w.is_contiguous() && y.is_contiguous())
      << "conv2d_forward: dense NCHW operands expected";
  blas_init_threading();
  const ConvGeom g = geometry(x, w, p, y);
  dispatch_float(x.dtype(), "conv2d_forward", [&](auto tag) {
    using T = decltype(tag);
    forward_typed<T>(x.data<T>(), w.data<T>(), bias.defined() ? bias.data<T>() : nullptr, g, y.data<T>());
  });
}

void conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dParams& p, Tensor& gx) {
  TTQ_CHECK(gy.is_contiguous() && w.is_contiguous() && gx.is_contiguous())
      << "conv2d_backward_data: contiguous operands expected";
  blas_init_threading();
  const ConvGeom g = geometry(gx, w, p, gy);
  dispatch_float(gy.dtype(), "conv2d_backward_data", [&](auto tag) {
    using T = decltype(tag);
    backward_data_typed<T>(gy.data<T>(), w.data<T>(), g, gx.data<T>());
  });
}

void conv2d_backward_filter(const Tensor& gy, const Tensor& x, const Conv2dParams& p, Tensor& gw,
                            Tensor& gbias) {
  TTQ_CHECK(gy.is_contiguous() && sample_dense(x) && gw.is_contiguous())
      << "conv2d_backward_filter: dense NCHW operands expected";
  blas_init_threading();
  const ConvGeom g = geometry(x, gw, p, gy);
  dispatch_float(gy.dtype(), "conv2d_backward_filter", [&](auto tag) {
    using T = decltype(tag);
    backward_filter_typed<T>(gy.data<T>(), x.data<T>(), g, gw.data<T>(),
                             gbias.defined() ? gbias.data<T>() : nullptr);
  });
}

}  // namespace ttq::cpu
