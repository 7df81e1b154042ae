// CPU conv2d (cross-correlation with stride, padding, dilation and groups): im2col +
// BLAS GEMM, one GEMM per group. A 1x1 / stride 1 / pad 0 convolution is a plain
// GEMM on the input plane; a depthwise conv (groups > 1, one input channel per group)
// runs direct loops. CUDA twin: engine/cuda/conv.cu.
// Reference: the naive loops in tests/backend_ops_cases.h (CONV2D and GROUPED_CONV2D
// cases of tests/test_backend_ops.cpp); timing: bench/bench_conv_cpu.cpp.
//
// Parallelism: OpenMP over output tiles (row bands of one sample), each tile
// an im2col into per-thread scratch plus a single-threaded GEMM per group; the
// filter gradient sums into one buffer per thread. The data gradient's tiles
// overlap within a sample, so it goes over whole samples (or splits each step
// when there are fewer samples than threads: the GEMM and col2im of each group,
// or the groups themselves when there are at least as many as threads). The
// depthwise loops go over (sample, channel) planes, the filter gradient over
// output channels.
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
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t groups, cg, cog;  // groups; input and output channels per group
  // x (and y in the forward) may be a channel slice of a wider buffer: each sample dense, batch stride free
  int64_t x_batch_stride, y_batch_stride;
  int64_t k() const { return cg * kh * kw; }  // the GEMMs' K: one group's taps
  int64_t p() const { return ho * wo; }
  bool direct() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  bool depthwise() const { return groups > 1 && cg == 1; }  // direct loops, no GEMM
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
  g.dh = p.dilation_h, g.dw = p.dilation_w;
  g.groups = p.groups, g.cg = w.size(1), g.cog = g.co / g.groups;
  g.x_batch_stride = x.size(0) > 1 ? x.stride(0) : g.ci * g.h * g.w;
  g.y_batch_stride = y_or_gy.size(0) > 1 ? y_or_gy.stride(0) : g.co * g.ho * g.wo;
  return g;
}

// Output tiles: rows [oh0, oh1) of sample n, i.e. columns [oh0*wo, oh1*wo) of
// the GEMMs. Tiling keeps a tile's im2col block (K x rows*wo) in L2 between
// im2col writing it and the GEMM reading it (an untiled 3x3 48->12 conv at
// 28x28 has a 1.35 MB block per sample and runs memory-bound at a fifth of the
// 1x1 convs' rate); with fewer samples than threads, tiles also split samples.
struct Tile {
  int64_t n, oh0, oh1;
};
constexpr int64_t kTileBytes = int64_t(256) << 10;

std::vector<Tile> make_tiles(const ConvGeom& g, size_t esize) {
  const int threads = omp_get_max_threads();
  int64_t rows = g.ho;
  if (!g.direct())
    rows = std::clamp<int64_t>(kTileBytes / static_cast<int64_t>(esize * g.k() * g.wo), 1, g.ho);
  if (g.n < threads) {
    const int64_t per_sample = (threads + g.n - 1) / std::max<int64_t>(g.n, 1);
    rows = std::min(rows, (g.ho + per_sample - 1) / per_sample);
  }
  std::vector<Tile> tiles;
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t oh0 = 0; oh0 < g.ho; oh0 += rows) tiles.push_back({n, oh0, std::min(oh0 + rows, g.ho)});
  return tiles;
}

bool worth_forking(const ConvGeom& g, size_t units) {
  return units > 1 && omp_get_max_threads() > 1 && g.n * g.co * g.k() * g.p() >= kParallelMacs;
}

// Valid ow range of kernel column j: 0 <= ow*sw - pw + j*dw < w.
inline void ow_range(const ConvGeom& g, int64_t j, int64_t* lo, int64_t* hi) {
  const int64_t jd = j * g.dw;
  *lo = std::clamp<int64_t>((g.pw - jd + g.sw - 1) / g.sw, 0, g.wo);
  *hi = std::clamp<int64_t>((g.w + g.pw - jd + g.sw - 1) / g.sw, *lo, g.wo);
}

// col[(c*kh+i)*kw+j, (oh-oh0)*wo+ow] = x[c, oh*sh-ph+i*dh, ow*sw-pw+j*dw] (0 outside) for oh
// in [oh0, oh1) and channels [c0, c1) of x (one group's first channel); col rows are
// (oh1-oh0)*wo long.
template <class T>
void im2col_tile(const T* x, const ConvGeom& g, int64_t oh0, int64_t oh1, int64_t c0, int64_t c1, T* col) {
  const int64_t tp = (oh1 - oh0) * g.wo;
  for (int64_t c = c0; c < c1; ++c) {
    const T* xc = x + c * g.h * g.w;
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        T* row = col + ((c * g.kh + i) * g.kw + j) * tp;
        int64_t lo, hi;
        ow_range(g, j, &lo, &hi);
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          T* r = row + (oh - oh0) * g.wo;
          const int64_t ih = oh * g.sh - g.ph + i * g.dh;
          if (ih < 0 || ih >= g.h) {
            std::fill(r, r + g.wo, T(0));
            continue;
          }
          const T* xr = xc + ih * g.w - g.pw + j * g.dw;
          std::fill(r, r + lo, T(0));
          if (g.sw == 1) {
            std::memcpy(r + lo, xr + lo, sizeof(T) * (hi - lo));
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) r[ow] = xr[ow * g.sw];
          }
          std::fill(r + hi, r + g.wo, T(0));
        }
      }
    }
  }
}

// The adjoint of im2col_tile: gx[c] += col for channels [c0, c1) (gx zeroed by the caller).
template <class T>
void col2im_tile(const T* col, const ConvGeom& g, int64_t oh0, int64_t oh1, int64_t c0, int64_t c1, T* gx) {
  const int64_t tp = (oh1 - oh0) * g.wo;
  for (int64_t c = c0; c < c1; ++c) {
    T* gc = gx + c * g.h * g.w;
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        const T* row = col + ((c * g.kh + i) * g.kw + j) * tp;
        int64_t lo, hi;
        ow_range(g, j, &lo, &hi);
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          const int64_t ih = oh * g.sh - g.ph + i * g.dh;
          if (ih < 0 || ih >= g.h) continue;
          const T* r = row + (oh - oh0) * g.wo;
          T* gr = gc + ih * g.w - g.pw + j * g.dw;
          if (g.sw == 1) {
#pragma omp simd
            for (int64_t ow = lo; ow < hi; ++ow) gr[ow] += r[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) gr[ow * g.sw] += r[ow];
          }
        }
      }
    }
  }
}

// The B operand of a tile for group gi: the group's input planes themselves for a
// direct (1x1) conv, else the tile's im2col block in the calling thread's scratch.
// Sets ldb.
template <class T>
const T* tile_operand(const T* x, const ConvGeom& g, const Tile& t, int64_t gi, int64_t* ldb) {
  const T* xn = x + t.n * g.x_batch_stride + gi * g.cg * g.h * g.w;
  if (g.direct()) {
    *ldb = g.p();
    return xn + t.oh0 * g.wo;
  }
  const int64_t tp = (t.oh1 - t.oh0) * g.wo;
  T* col = thread_scratch<T>(static_cast<size_t>(g.k() * tp));
  im2col_tile(xn, g, t.oh0, t.oh1, int64_t(0), g.cg, col);
  *ldb = tp;
  return col;
}

template <class T>
void forward_typed(const T* x, const T* w, const T* bias, const ConvGeom& g, T* y) {
  const int64_t K = g.k(), P = g.p();
  const std::vector<Tile> tiles = make_tiles(g, sizeof(T));
  const int64_t count = static_cast<int64_t>(tiles.size());
#pragma omp parallel for schedule(static) if (worth_forking(g, tiles.size()))
  for (int64_t ti = 0; ti < count; ++ti) {
    const Tile& t = tiles[ti];
    const int64_t q0 = t.oh0 * g.wo, tp = (t.oh1 - t.oh0) * g.wo;
    T* yt = y + t.n * g.y_batch_stride + q0;
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      int64_t ldb;
      const T* b = tile_operand(x, g, t, gi, &ldb);
      gemm_rm(false, false, g.cog, tp, K, T(1), w + gi * g.cog * K, K, b, ldb, T(0), yt + gi * g.cog * P, P);
    }
    if (bias) {
      for (int64_t c = 0; c < g.co; ++c) {
        const T bc = bias[c];
#pragma omp simd
        for (int64_t q = 0; q < tp; ++q) yt[c * P + q] += bc;
      }
    }
  }
}

template <class T>
void backward_data_typed(const T* gy, const T* w, const ConvGeom& g, T* gx) {
  // Per tile and group: gcol[K, tp] = w_g^T [K,Cog] @ gy[n][group rows, tile] [Cog,tp];
  // gx[n][group channels] += col2im(gcol).
  const int64_t K = g.k(), P = g.p(), xs = g.ci * g.h * g.w, gxs = g.cg * g.h * g.w;
  const std::vector<Tile> tiles = make_tiles(g, sizeof(T));
  if (g.direct()) {  // gx[n][:, tile] = w^T @ gy[n][:, tile] per group: tiles are independent
    const int64_t count = static_cast<int64_t>(tiles.size());
#pragma omp parallel for schedule(static) if (worth_forking(g, tiles.size()))
    for (int64_t ti = 0; ti < count; ++ti) {
      const Tile& t = tiles[ti];
      const int64_t q0 = t.oh0 * g.wo, tp = (t.oh1 - t.oh0) * g.wo;
      for (int64_t gi = 0; gi < g.groups; ++gi)
        gemm_rm(true, false, K, tp, g.cog, T(1), w + gi * g.cog * K, K,
                gy + t.n * g.y_batch_stride + gi * g.cog * P + q0, P, T(0), gx + t.n * xs + gi * gxs + q0, P);
    }
    return;
  }
  // Tiles of one sample overlap in gx (the kernel's halo): a sample's tiles run
  // in order on one thread; with fewer samples than threads, each tile's GEMM
  // and col2im (over channels) are split instead, or, with at least as many
  // groups as threads, the groups (disjoint channels of gx) go to threads.
  auto group_tile = [&](const Tile& t, int64_t gi, T* gxn) {
    const int64_t q0 = t.oh0 * g.wo, tp = (t.oh1 - t.oh0) * g.wo;
    T* gcol = thread_scratch<T>(static_cast<size_t>(K * tp));
    gemm_rm(true, false, K, tp, g.cog, T(1), w + gi * g.cog * K, K,
            gy + t.n * g.y_batch_stride + gi * g.cog * P + q0, P, T(0), gcol, tp);
    col2im_tile(gcol, g, t.oh0, t.oh1, int64_t(0), g.cg, gxn + gi * gxs);
  };
  auto sample_tiles = [&](int64_t n, bool split) {
    T* gxn = gx + n * xs;
    std::fill(gxn, gxn + xs, T(0));
    for (const Tile& t : tiles) {
      if (t.n != n) continue;
      if (!split) {
        for (int64_t gi = 0; gi < g.groups; ++gi) group_tile(t, gi, gxn);
        continue;
      }
      if (g.groups >= omp_get_max_threads()) {
#pragma omp parallel for schedule(static)
        for (int64_t gi = 0; gi < g.groups; ++gi) group_tile(t, gi, gxn);
        continue;
      }
      const int64_t q0 = t.oh0 * g.wo, tp = (t.oh1 - t.oh0) * g.wo;
      T* gcol = thread_scratch<T>(static_cast<size_t>(K * tp));
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        gemm_parallel(true, false, K, tp, g.cog, T(1), w + gi * g.cog * K, K,
                      gy + n * g.y_batch_stride + gi * g.cog * P + q0, P, T(0), gcol, tp);
        T* gxg = gxn + gi * gxs;
#pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < g.cg; ++c) col2im_tile(gcol, g, t.oh0, t.oh1, c, c + 1, gxg);
      }
    }
  };
  const bool fork = worth_forking(g, static_cast<size_t>(g.n));
  if (!fork || g.n >= omp_get_max_threads()) {
#pragma omp parallel for schedule(static) if (fork)
    for (int64_t n = 0; n < g.n; ++n) sample_tiles(n, false);
  } else {
    for (int64_t n = 0; n < g.n; ++n) sample_tiles(n, worth_forking(g, 2));
  }
}

// gbias[c] = sum over samples and positions of gy[n, c], in double.
template <class T>
void bias_grad(const T* gy, const ConvGeom& g, T* gbias) {
  const int64_t P = g.p();
#pragma omp parallel for schedule(static) if (g.n * g.co * P >= kParallelElements)
  for (int64_t c = 0; c < g.co; ++c) {
    double s = 0;
    for (int64_t n = 0; n < g.n; ++n) {
      const T* r = gy + n * g.y_batch_stride + c * P;
#pragma omp simd reduction(+ : s)
      for (int64_t q = 0; q < P; ++q) s += static_cast<double>(r[q]);
    }
    gbias[c] = static_cast<T>(s);
  }
}

template <class T>
void backward_filter_typed(const T* gy, const T* x, const ConvGeom& g, T* gw, T* gbias) {
  // gw [Co,K] = sum over tiles of gy[n][:, tile] [Co,tp] @ col(tile)^T [tp,K], group by
  // group (rows [gi*Cog, (gi+1)*Cog) of gw from the group's columns); each thread sums
  // a contiguous range of tiles into its own buffer, then the buffers add up.
  const int64_t K = g.k(), P = g.p(), CK = g.co * K;
  const std::vector<Tile> tiles = make_tiles(g, sizeof(T));
  const int64_t count = static_cast<int64_t>(tiles.size());
  const int threads =
      worth_forking(g, tiles.size()) ? std::min<int>(omp_get_max_threads(), static_cast<int>(count)) : 1;
  std::vector<T> partial(static_cast<size_t>(threads - 1) * CK);  // thread 0 sums into gw
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    T* acc = t == 0 ? gw : partial.data() + (t - 1) * CK;
    const int64_t t0 = count * t / nt, t1 = count * (t + 1) / nt;
    if (t0 == t1) std::fill(acc, acc + CK, T(0));
    for (int64_t ti = t0; ti < t1; ++ti) {
      const Tile& tile = tiles[ti];
      const int64_t q0 = tile.oh0 * g.wo, tp = (tile.oh1 - tile.oh0) * g.wo;
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        int64_t ldb;
        const T* b = tile_operand(x, g, tile, gi, &ldb);
        gemm_rm(false, true, g.cog, K, tp, T(1), gy + tile.n * g.y_batch_stride + gi * g.cog * P + q0, P, b,
                ldb, ti == t0 ? T(0) : T(1), acc + gi * g.cog * K, K);
      }
    }
    if (nt > 1) {
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t i = 0; i < CK; ++i) {
        T s = gw[i];
        for (int u = 1; u < nt; ++u) s += partial[(u - 1) * CK + i];
        gw[i] = s;
      }
    }
  }
  if (gbias) bias_grad(gy, g, gbias);
}

// ---- depthwise: one input channel per group -------------------------------------------
//
// With one input channel per group the GEMMs degenerate to 1 x tp x kh*kw products
// (a BLAS call per group and tile, on an im2col block written only to be read once),
// so these run direct loops instead: per output row and tap, a contiguous
// multiply-add over the row's valid columns (strided reads when sw > 1). Output
// channel o reads input channel o / cog (cog > 1: a channel multiplier). Used only
// when groups > 1: a one-group conv keeps the GEMM path and its bits.

// ow_range of every kernel column, computed once per call (two divisions each).
struct ColumnRanges {
  std::vector<int64_t> lo, hi;
  explicit ColumnRanges(const ConvGeom& g) : lo(static_cast<size_t>(g.kw)), hi(static_cast<size_t>(g.kw)) {
    for (int64_t j = 0; j < g.kw; ++j)
      ow_range(g, j, &lo[static_cast<size_t>(j)], &hi[static_cast<size_t>(j)]);
  }
};

template <class T>
void depthwise_forward_typed(const T* x, const T* w, const T* bias, const ConvGeom& g, T* y) {
  const int64_t P = g.p(), taps = g.kh * g.kw;
  const ColumnRanges cr(g);
  const size_t planes = static_cast<size_t>(g.n * g.co);
#pragma omp parallel for schedule(static) if (worth_forking(g, planes))
  for (int64_t nc = 0; nc < g.n * g.co; ++nc) {
    const int64_t n = nc / g.co, o = nc % g.co;
    const T* xc = x + n * g.x_batch_stride + (o / g.cog) * g.h * g.w;
    const T* wo = w + o * taps;
    T* yp = y + n * g.y_batch_stride + o * P;
    std::fill(yp, yp + P, T(0));
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      T* yr = yp + oh * g.wo;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.ph + i * g.dh;
        if (ih < 0 || ih >= g.h) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t lo = cr.lo[static_cast<size_t>(j)], hi = cr.hi[static_cast<size_t>(j)];
          const T wv = wo[i * g.kw + j];
          const T* xr = xc + ih * g.w - g.pw + j * g.dw;
          if (g.sw == 1) {
#pragma omp simd
            for (int64_t ow = lo; ow < hi; ++ow) yr[ow] += wv * xr[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) yr[ow] += wv * xr[ow * g.sw];
          }
        }
      }
    }
    if (bias) {
      const T b = bias[o];
#pragma omp simd
      for (int64_t q = 0; q < P; ++q) yp[q] += b;
    }
  }
}

// gx[n, c] = sum over the cog outputs of channel c and their taps of w * gy, scattered
// back along the forward's index map; each (n, c) plane belongs to one thread.
template <class T>
void depthwise_backward_data_typed(const T* gy, const T* w, const ConvGeom& g, T* gx) {
  const int64_t P = g.p(), taps = g.kh * g.kw, plane = g.h * g.w;
  const ColumnRanges cr(g);
  const size_t planes = static_cast<size_t>(g.n * g.ci);
#pragma omp parallel for schedule(static) if (worth_forking(g, planes))
  for (int64_t nc = 0; nc < g.n * g.ci; ++nc) {
    const int64_t n = nc / g.ci, c = nc % g.ci;
    T* gxc = gx + n * g.ci * plane + c * plane;
    std::fill(gxc, gxc + plane, T(0));
    for (int64_t o = c * g.cog; o < (c + 1) * g.cog; ++o) {
      const T* gyp = gy + n * g.y_batch_stride + o * P;
      const T* wo = w + o * taps;
      for (int64_t oh = 0; oh < g.ho; ++oh) {
        const T* gr = gyp + oh * g.wo;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh * g.sh - g.ph + i * g.dh;
          if (ih < 0 || ih >= g.h) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t lo = cr.lo[static_cast<size_t>(j)], hi = cr.hi[static_cast<size_t>(j)];
            const T wv = wo[i * g.kw + j];
            T* xr = gxc + ih * g.w - g.pw + j * g.dw;
            if (g.sw == 1) {
#pragma omp simd
              for (int64_t ow = lo; ow < hi; ++ow) xr[ow] += wv * gr[ow];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) xr[ow * g.sw] += wv * gr[ow];
            }
          }
        }
      }
    }
  }
}

// gw[o, i, j] = sum over samples and outputs of gy[n, o] * x[n, o / cog] at the tap's
// offset: one output channel per thread; per tap, each row's products summed in T and
// the rows (samples, then output rows) in double.
template <class T>
void depthwise_backward_filter_typed(const T* gy, const T* x, const ConvGeom& g, T* gw, T* gbias) {
  const int64_t P = g.p(), taps = g.kh * g.kw;
  const ColumnRanges cr(g);
  const size_t units = static_cast<size_t>(g.co);
#pragma omp parallel for schedule(static) if (worth_forking(g, units))
  for (int64_t o = 0; o < g.co; ++o) {
    std::vector<double> acc(static_cast<size_t>(taps), 0.0);
    for (int64_t n = 0; n < g.n; ++n) {
      const T* xc = x + n * g.x_batch_stride + (o / g.cog) * g.h * g.w;
      const T* gyp = gy + n * g.y_batch_stride + o * P;
      for (int64_t oh = 0; oh < g.ho; ++oh) {
        const T* gr = gyp + oh * g.wo;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh * g.sh - g.ph + i * g.dh;
          if (ih < 0 || ih >= g.h) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t lo = cr.lo[static_cast<size_t>(j)], hi = cr.hi[static_cast<size_t>(j)];
            const T* xr = xc + ih * g.w - g.pw + j * g.dw;
            T row = 0;
            if (g.sw == 1) {
#pragma omp simd reduction(+ : row)
              for (int64_t ow = lo; ow < hi; ++ow) row += gr[ow] * xr[ow];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) row += gr[ow] * xr[ow * g.sw];
            }
            acc[static_cast<size_t>(i * g.kw + j)] += static_cast<double>(row);
          }
        }
      }
    }
    for (int64_t t = 0; t < taps; ++t) gw[o * taps + t] = static_cast<T>(acc[static_cast<size_t>(t)]);
  }
  if (gbias) bias_grad(gy, g, gbias);
}

}  // namespace

void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Tensor& y) {
  TTQ_CHECK(sample_dense(x) && w.is_contiguous() && sample_dense(y))
      << "conv2d_forward: dense NCHW operands expected";
  blas_init_threading();
  const ConvGeom g = geometry(x, w, p, y);
  dispatch_float(x.dtype(), "conv2d_forward", [&](auto tag) {
    using T = decltype(tag);
    const T* b = bias.defined() ? bias.data<T>() : nullptr;
    if (g.depthwise()) {
      depthwise_forward_typed<T>(x.data<T>(), w.data<T>(), b, g, y.data<T>());
    } else {
      forward_typed<T>(x.data<T>(), w.data<T>(), b, g, y.data<T>());
    }
  });
}

void conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dParams& p, Tensor& gx) {
  TTQ_CHECK(gy.is_contiguous() && w.is_contiguous() && gx.is_contiguous())
      << "conv2d_backward_data: contiguous operands expected";
  blas_init_threading();
  const ConvGeom g = geometry(gx, w, p, gy);
  dispatch_float(gy.dtype(), "conv2d_backward_data", [&](auto tag) {
    using T = decltype(tag);
    if (g.depthwise()) {
      depthwise_backward_data_typed<T>(gy.data<T>(), w.data<T>(), g, gx.data<T>());
    } else {
      backward_data_typed<T>(gy.data<T>(), w.data<T>(), g, gx.data<T>());
    }
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
    T* gb = gbias.defined() ? gbias.data<T>() : nullptr;
    if (g.depthwise()) {
      depthwise_backward_filter_typed<T>(gy.data<T>(), x.data<T>(), g, gw.data<T>(), gb);
    } else {
      backward_filter_typed<T>(gy.data<T>(), x.data<T>(), g, gw.data<T>(), gb);
    }
  });
}

}  // namespace ttq::cpu
