// The fast CPU twin of the packed 2-bit convolution (kernels/packed_conv.h):
// packed_conv_cpu (one group, and any group count over per-group layouts), its
// micro-kernels and the instruction-set detection that picks them. Reference:
// kernels/packed_conv_ref.cpp; CUDA twin: kernels/packed_conv.cu; layouts:
// kernels/packed_layout.cpp. Tests: tests/test_packed_conv.cpp; timing:
// bench/bench_packed_conv.cpp.
//
// The fast CPU twin is a GEMM over "columns" q of a prepared input X' (the
// prologue applied once, zero-padded, one sample laid out [ci][hp][wp]). With stride 1
// an output (oh, ow) is column q = oh*wp + ow of a "wide" output that also covers the
// padding columns, and tap k = (c, i, j) reads X'[q + koff[k]] with
// koff[k] = c*hp*wp + i*wp + j: no im2col, every load a contiguous vector; the wide
// columns that fall on padding are computed and dropped (7% at 28x28, 3x3). Other
// strides build an explicit im2col whose columns are exactly the outputs. A conv with
// no prologue, pooling or padding reads x in place (X' = x).
// Register block: 4 output channels x 3 column vectors, 24 columns with AVX2 (12
// accumulators, 3 column vectors, 1 broadcast = 16 ymm), 48 with AVX-512 (the same
// in zmm: half the code reads and broadcasts per multiply-add; AVX-512 also runs two
// blocks at once, 8 x 48 with 24 accumulators, over the union of their masks). Per surviving k the kernel
// reads one code byte, broadcasts four values from a 4 KB table (lut[byte] = the four weights), loads three
// column vectors and issues 12 FMAs, so it runs near the FMA rate; columns where all four codes are zero are
// skipped through the block's bit mask (41-72% of the SqueezeNet expand3x3 columns, ~2% of the DenseNet
// ones). The epilogue runs on the accumulators and stores straight into y where a tile maps to consecutive
// outputs. Threads: whole samples each when the batch has at least two per thread (a sample's X' stays in its
// thread's L2; a batch-wide X' does not and made batch 32 latency-bound on L3), else the channels and
// register blocks of one sample at a time.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "kernels/packed_conv.h"
#include "kernels/packed_conv_internal.h"

namespace ttq::kernels {

using detail::check_args;

// ---- instruction sets ------------------------------------------------------------------

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Auto: return "auto";
    case CpuIsa::Scalar: return "scalar";
    case CpuIsa::Avx2: return "avx2";
    case CpuIsa::Avx512: return "avx512";
  }
  return "?";
}

bool cpu_isa_supported(CpuIsa isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();  // libgcc also checks that the OS saves the wider registers
  switch (isa) {
    case CpuIsa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::Avx512: return __builtin_cpu_supports("avx512f") != 0;
    default: return true;
  }
#else
  return isa == CpuIsa::Auto || isa == CpuIsa::Scalar;
#endif
}

CpuIsa cpu_isa_auto() {
  static const CpuIsa isa = [] {
    for (CpuIsa c : {CpuIsa::Avx512, CpuIsa::Avx2})
      if (cpu_isa_supported(c)) return c;
    return CpuIsa::Scalar;
  }();
  return isa;
}

// ---- the fast CPU twin ---------------------------------------------------------------

namespace {

constexpr int kRows = 4;        // output channels per register block
constexpr int kVec = 8;         // floats per column group (AVX2 vector; the unit of `straight`)
constexpr int kMaxTile = 48;    // widest register block (3 AVX-512 vectors)
constexpr int64_t kSlack = 32;  // readable floats past the last column the kernel may touch
constexpr int64_t kParallelMacs = int64_t(1) << 21;  // ~30 us on one core (bench/RESULTS.md)

// Where a register block goes: row r's 8 * NV values to out[r] (+ res[r] when res is
// non-null). Straight tiles point these at y and the residual; other tiles at a buffer
// that the caller scatters.
struct BlockOut {
  float* out[8];  // 4 rows, or 8 for a pair of blocks
  const float* res[8];
  bool has_res;
};

// The micro-kernel contract: out[r][col] = relu?(sum * esc[r] + esh[r]) (+ res[r][col])
// where sum runs over the block's surviving k of lut[code byte * 4 + r] * xq[koff[k] + col],
// for col < 8 * NV (the epilogue's affine is applied in registers; 1 and 0 when absent).
template <int NV>
void block_kernel_scalar(const float* xq, const int64_t* koff, const uint64_t* mask, int64_t mask_words,
                         const uint8_t* codes, const float* lut, const float* esc, const float* esh,
                         bool relu, const BlockOut& o) {
  float a[kRows][kVec * NV] = {};
  for (int64_t wi = 0; wi < mask_words; ++wi) {
    uint64_t m = mask[wi];
    const int64_t* ko = koff + wi * 64;
    while (m) {
      const int bit = __builtin_ctzll(m);
      m &= m - 1;
      const float* xp = xq + ko[bit];
      const float* l = lut + 4 * *codes++;
      for (int r = 0; r < kRows; ++r) {
        const float wv = l[r];
        for (int c = 0; c < kVec * NV; ++c) a[r][c] += wv * xp[c];
      }
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kVec * NV; ++c) {
      float v = a[r][c] * esc[r];
      v = v + esh[r];
      v = relu && !(v > 0.0f) ? 0.0f : v;
      o.out[r][c] = o.has_res ? v + o.res[r][c] : v;
    }
}

#if defined(__x86_64__)
template <int NV>
__attribute__((target("avx2,fma"))) void block_kernel_avx2(const float* xq, const int64_t* koff,
                                                           const uint64_t* mask, int64_t mask_words,
                                                           const uint8_t* codes, const float* lut,
                                                           const float* esc, const float* esh, bool relu,
                                                           const BlockOut& o) {
  __m256 a[kRows][NV];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) a[r][v] = _mm256_setzero_ps();
  for (int64_t wi = 0; wi < mask_words; ++wi) {
    uint64_t m = mask[wi];
    const int64_t* ko = koff + wi * 64;
    while (m) {
      const int bit = __builtin_ctzll(m);
      m &= m - 1;
      const float* xp = xq + ko[bit];
      const float* l = lut + 4 * *codes++;
      __m256 xv[NV];
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) xv[v] = _mm256_loadu_ps(xp + kVec * v);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) {
        const __m256 wv = _mm256_broadcast_ss(l + r);
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) a[r][v] = _mm256_fmadd_ps(wv, xv[v], a[r][v]);
      }
    }
  }
  const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
    // Multiply, then add (two roundings, as the reference).
    const __m256 sc = _mm256_broadcast_ss(esc + r), sh = _mm256_broadcast_ss(esh + r);
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
      __m256 t = _mm256_add_ps(_mm256_mul_ps(a[r][v], sc), sh);
      if (relu) t = _mm256_max_ps(t, zero);
      if (o.has_res) t = _mm256_add_ps(t, _mm256_loadu_ps(o.res[r] + kVec * v));
      _mm256_storeu_ps(o.out[r] + kVec * v, t);
    }
  }
}

// The AVX2 kernel's loop with 16-float vectors, over NB register blocks at once:
// 4 x 48 with 12 accumulators (NB = 1), or 8 x 48 with 24 (NB = 2), where each
// loaded column vector feeds 8 FMAs instead of 4. With two blocks the k loop runs
// over the union of their masks; a block without that k reads code byte 0, whose
// weights are zero, so each row sees the AVX2 kernel's FMAs plus exact additions of
// +-0 (finite inputs): the same bits as the AVX2 kernel. mask1 / codes1: the second
// block's (ignored when NB = 1).
template <int NB, int NV>
__attribute__((target("avx512f"))) void blocks_kernel_avx512(const float* xq, const int64_t* koff,
                                                             const uint64_t* mask0, const uint64_t* mask1,
                                                             int64_t mask_words, const uint8_t* codes0,
                                                             const uint8_t* codes1, const float* lut,
                                                             const float* esc, const float* esh, bool relu,
                                                             const BlockOut& o) {
  constexpr int kW = 16, kR = NB * kRows;
  __m512 a[kR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < kR; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) a[r][v] = _mm512_setzero_ps();
  for (int64_t wi = 0; wi < mask_words; ++wi) {
    const uint64_t m0 = mask0[wi], m1 = NB == 2 ? mask1[wi] : 0;
    uint64_t m = m0 | m1;
    const int64_t* ko = koff + wi * 64;
    while (m) {
      const int bit = __builtin_ctzll(m);
      m &= m - 1;
      const float* l[NB];
      if constexpr (NB == 1) {
        l[0] = lut + 4 * *codes0++;
      } else {
        // Branch-free: the next byte of each stream counts only when its block has
        // this k (one-past-the-end bytes are readable: relayout_cpu pads the codes).
        const unsigned in0 = static_cast<unsigned>(m0 >> bit) & 1u,
                       in1 = static_cast<unsigned>(m1 >> bit) & 1u;
        l[0] = lut + 4 * (*codes0 & (0u - in0));
        l[1] = lut + 4 * (*codes1 & (0u - in1));
        codes0 += in0;
        codes1 += in1;
      }
      const float* xp = xq + ko[bit];
      __m512 xv[NV];
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_ps(xp + kW * v);
#pragma GCC unroll 2
      for (int j = 0; j < NB; ++j)
#pragma GCC unroll 4
        for (int r = 0; r < kRows; ++r) {
          const __m512 wv = _mm512_set1_ps(l[j][r]);
#pragma GCC unroll 3
          for (int v = 0; v < NV; ++v) a[j * kRows + r][v] = _mm512_fmadd_ps(wv, xv[v], a[j * kRows + r][v]);
        }
    }
  }
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < kR; ++r) {
    const __m512 sc = _mm512_set1_ps(esc[r]), sh = _mm512_set1_ps(esh[r]);
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
      __m512 t = _mm512_add_ps(_mm512_mul_ps(a[r][v], sc), sh);
      // max(t, 0) as _mm512_max_ps computes it, spelled with a full mask: GCC 12's
      // _mm512_max_ps trips -Wmaybe-uninitialized.
      if (relu) t = _mm512_mask_max_ps(t, static_cast<__mmask16>(0xffff), t, zero);
      if (o.has_res) t = _mm512_add_ps(t, _mm512_loadu_ps(o.res[r] + kW * v));
      _mm512_storeu_ps(o.out[r] + kW * v, t);
    }
  }
}

template <int NV>
__attribute__((target("avx512f"))) void block_kernel_avx512(const float* xq, const int64_t* koff,
                                                            const uint64_t* mask, int64_t mask_words,
                                                            const uint8_t* codes, const float* lut,
                                                            const float* esc, const float* esh, bool relu,
                                                            const BlockOut& o) {
  blocks_kernel_avx512<1, NV>(xq, koff, mask, mask, mask_words, codes, codes, lut, esc, esh, relu, o);
}
#endif

using BlockKernel = void (*)(const float*, const int64_t*, const uint64_t*, int64_t, const uint8_t*,
                             const float*, const float*, const float*, bool, const BlockOut&);
using PairKernel = void (*)(const float*, const int64_t*, const uint64_t*, const uint64_t*, int64_t,
                            const uint8_t*, const uint8_t*, const float*, const float*, const float*, bool,
                            const BlockOut&);

PairKernel pick_pair_kernel(CpuIsa isa, int nv) {
#if defined(__x86_64__)
  if (isa == CpuIsa::Avx512) {
    switch (nv) {
      case 1: return blocks_kernel_avx512<2, 1>;
      case 2: return blocks_kernel_avx512<2, 2>;
      default: return blocks_kernel_avx512<2, 3>;
    }
  }
#endif
  return nullptr;  // other ISAs run one block at a time
}

// Columns per vector of each micro-kernel (a register block is up to 3 vectors wide).
int isa_vec(CpuIsa isa) { return isa == CpuIsa::Avx512 ? 16 : kVec; }

BlockKernel pick_kernel(CpuIsa isa, int nv) {
#if defined(__x86_64__)
  if (isa == CpuIsa::Avx512) {
    switch (nv) {
      case 1: return block_kernel_avx512<1>;
      case 2: return block_kernel_avx512<2>;
      default: return block_kernel_avx512<3>;
    }
  }
  if (isa == CpuIsa::Avx2) {
    switch (nv) {
      case 1: return block_kernel_avx2<1>;
      case 2: return block_kernel_avx2<2>;
      default: return block_kernel_avx2<3>;
    }
  }
#endif
  switch (nv) {
    case 1: return block_kernel_scalar<1>;
    case 2: return block_kernel_scalar<2>;
    default: return block_kernel_scalar<3>;
  }
}

// Per-call scratch of the calling thread (the pool threads only read it).
// Per-call tables (built by the calling thread, read by all) and per-thread buffers.
struct Scratch {
  std::vector<float> esc, esh;
  std::vector<int64_t> koff, koff_tail;
  std::vector<int32_t> col_p;      // column -> output position in the sample's plane (-1: dropped)
  std::vector<uint8_t> straight;   // per 8 columns: consecutive positions
  std::vector<uint8_t> tile_live;  // per tile: some column kept
  std::vector<float> xprep, cols, pool_rows, panel;  // the thread's X' (and im2col) of one sample
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// out[i] = relu?(in[i] * sc + sh), specialised so that each variant is a plain
// vectorisable loop.
template <bool kScale, bool kShift, bool kRelu>
void act_row(const float* __restrict in, float* __restrict out, int64_t len, float sc, float sh) {
  for (int64_t i = 0; i < len; ++i) {
    float v = in[i];
    if constexpr (kScale) v = v * sc;
    if constexpr (kShift) v = v + sh;
    if constexpr (kRelu) v = v > 0.0f ? v : 0.0f;
    out[i] = v;
  }
}
using ActRow = void (*)(const float*, float*, int64_t, float, float);
ActRow pick_act_row(const ChannelAffine& a) {
  static constexpr ActRow table[8] = {act_row<false, false, false>, act_row<false, false, true>,
                                      act_row<false, true, false>,  act_row<false, true, true>,
                                      act_row<true, false, false>,  act_row<true, false, true>,
                                      act_row<true, true, false>,   act_row<true, true, true>};
  return table[(a.scale ? 4 : 0) | (a.shift ? 2 : 0) | (a.relu ? 1 : 0)];
}

// X'[c][n][hp][wp] = prologue(x) (pooled when asked), zero border of `pad`. `tmp`
// holds two activated rows (pool2 only).
void prepare_input_plane(const PackedConvArgs& a, int64_t c, int64_t n, float* dst, float* tmp) {
  const PackedConvShape& s = a.shape;
  const int64_t hs = s.hs(), ws = s.ws(), wp = ws + 2 * s.pad, hp = hs + 2 * s.pad;
  std::fill(dst, dst + s.pad * wp, 0.0f);
  std::fill(dst + (s.pad + hs) * wp, dst + hp * wp, 0.0f);
  const float* plane = a.x + n * a.x_sn + c * a.x_sc;
  const float sc = a.pre.scale ? a.pre.scale[c] : 1.0f, sh = a.pre.shift ? a.pre.shift[c] : 0.0f;
  const ActRow act = pick_act_row(a.pre);
  for (int64_t ih = 0; ih < hs; ++ih) {
    float* row = dst + (ih + s.pad) * wp;
    std::fill(row, row + s.pad, 0.0f);
    std::fill(row + s.pad + ws, row + wp, 0.0f);
    float* out = row + s.pad;
    if (!s.pool2) {
      act(plane + ih * s.w, out, ws, sc, sh);
    } else {
      float* r0 = tmp;
      float* r1 = tmp + s.w;
      act(plane + 2 * ih * s.w, r0, 2 * ws, sc, sh);
      act(plane + (2 * ih + 1) * s.w, r1, 2 * ws, sc, sh);
      // PyTorch's avg_pool2d order: rows, then columns, then the division (by 4, exact).
      for (int64_t iw = 0; iw < ws; ++iw)
        out[iw] = (((r0[2 * iw] + r0[2 * iw + 1]) + r1[2 * iw]) + r1[2 * iw + 1]) * 0.25f;
    }
  }
}

// The per-call geometry and tables shared by every sample.
struct ConvPlan {
  const PackedConvArgs* a;
  const CpuCodeLayout* layout;
  const float* lut;
  BlockKernel kernels[3];
  PairKernel pair_kernels[3];  // null: one block per item
  int64_t groups;              // register-block groups per tile: pairs of blocks (AVX-512) or blocks
  int64_t hs, ws, hp, wp, ho, wo, k, plane;
  bool wide;                 // stride 1: read X' in place; else im2col
  bool direct;               // no prologue, pooling or padding: read x itself (X' = x)
  const int64_t* koff_tail;  // direct: offsets into the last tile's panel
  int64_t q_count;           // columns of one sample
  int64_t col_stride;        // im2col row length
  int vec;                   // columns per micro-kernel vector (8 AVX2 / scalar, 16 AVX-512)
  int64_t tile;              // columns per register block: 3 vectors
  int64_t tiles;
  const int64_t* koff;
  const int32_t* col_p;
  const uint8_t* straight;
  const uint8_t* tile_live;
  const float *esc, *esh;
};

// X' of sample n, channels [c0, c1): dst is [ci][hp][wp] (+ slack).
void prepare_channels(const ConvPlan& P, int64_t n, int64_t c0, int64_t c1, float* xprep, float* pool_rows) {
  for (int64_t c = c0; c < c1; ++c) prepare_input_plane(*P.a, c, n, xprep + c * P.plane, pool_rows);
}

// im2col rows [k0, k1) of one sample from its X'.
void im2col_rows(const ConvPlan& P, int64_t k0, int64_t k1, const float* xprep, float* cols) {
  const PackedConvShape& s = P.a->shape;
  for (int64_t kk = k0; kk < k1; ++kk) {
    const int64_t c = kk / (s.kh * s.kw), i = (kk / s.kw) % s.kh, j = kk % s.kw;
    float* row = cols + kk * P.col_stride;
    const float* src = xprep + c * P.plane + i * P.wp + j;
    int64_t q = 0;
    for (int64_t oh = 0; oh < P.ho; ++oh)
      for (int64_t ow = 0; ow < P.wo; ++ow) row[q++] = src[oh * s.stride * P.wp + ow * s.stride];
    std::fill(row + P.q_count, row + P.col_stride, 0.0f);
  }
}

// Direct mode: the last tile's rows of sample n copied to [k][tile] (zero-padded),
// because reading x in place would run past its end.
void fill_tail_panel(const ConvPlan& P, const float* base, std::vector<float>& panel) {
  const int64_t q0 = (P.tiles - 1) * P.tile, len = P.q_count - q0;
  if (panel.size() < static_cast<size_t>(P.k * P.tile)) panel.resize(static_cast<size_t>(P.k * P.tile));
  for (int64_t kk = 0; kk < P.k; ++kk) {
    float* row = panel.data() + kk * P.tile;
    std::copy(base + q0 + P.koff[kk], base + q0 + P.koff[kk] + len, row);
    std::fill(row + len, row + P.tile, 0.0f);
  }
}

// Register block `item` (tile t, row block b) of sample n, epilogue included. base:
// X' (or the im2col, or x itself in direct mode with tail_panel from fill_tail_panel).
void run_item(const ConvPlan& P, int64_t n, int64_t item, const float* base, const float* tail_panel) {
  const PackedConvArgs& a = *P.a;
  const PackedConvShape& s = a.shape;
  const CpuCodeLayout& layout = *P.layout;
  const int64_t t = item / P.groups, g = item % P.groups;
  if (!P.tile_live[t]) return;
  const bool pair = P.pair_kernels[0] != nullptr && 2 * g + 1 < layout.blocks;
  const int64_t b = P.pair_kernels[0] != nullptr ? 2 * g : g;  // first block of the group
  const int rows = pair ? 2 * kRows : kRows;
  const int64_t q0 = t * P.tile, len = std::min<int64_t>(P.tile, P.q_count - q0);
  const int nv = static_cast<int>((len + P.vec - 1) / P.vec);
  const int64_t width = int64_t{nv} * P.vec;  // columns the kernel computes and stores
  // A straight tile maps each of its 8-column groups to consecutive outputs: stored in place.
  bool in_place = true;
  for (int64_t e = 0; e < width && in_place; e += kVec) {
    const int64_t qv = q0 + e;
    in_place = qv < P.q_count && P.straight[qv / kVec] && P.col_p[qv] == P.col_p[q0] + e;
  }
  alignas(64) float acc[2 * kRows * kMaxTile];
  BlockOut bo;
  bo.has_res = in_place && a.residual != nullptr;
  for (int r = 0; r < rows; ++r) {
    const int64_t co = 4 * b + r;
    if (in_place && co < s.co) {
      const int64_t p = P.col_p[q0];
      bo.out[r] = a.y + n * a.y_sn + co * a.y_sc + p;
      bo.res[r] = a.residual ? a.residual + n * a.r_sn + co * a.r_sc + p : nullptr;
    } else {  // a scattered tile, or a padding row of the block
      bo.out[r] = acc + r * kMaxTile;
      bo.res[r] = bo.has_res ? acc + r * kMaxTile : nullptr;
    }
  }
  if (bo.has_res && 4 * b + rows > s.co) std::fill(acc, acc + rows * kMaxTile, 0.0f);
  const float* xq = base + q0;
  const int64_t* koff = P.koff;
  if (tail_panel && q0 + width > P.q_count) {  // x read in place has no slack: use the panel
    xq = tail_panel;
    koff = P.koff_tail;
  }
  const uint64_t* mask = layout.mask.data() + b * layout.mask_words;
  const uint8_t* codes = layout.codes.data() + layout.start[b];
  if (pair) {
    P.pair_kernels[nv - 1](xq, koff, mask, mask + layout.mask_words, layout.mask_words, codes,
                           layout.codes.data() + layout.start[b + 1], P.lut, P.esc + 4 * b, P.esh + 4 * b,
                           a.post.relu, bo);
  } else {
    P.kernels[nv - 1](xq, koff, mask, layout.mask_words, codes, P.lut, P.esc + 4 * b, P.esh + 4 * b,
                      a.post.relu, bo);
  }
  if (in_place) return;
  for (int r = 0; r < rows; ++r) {
    const int64_t co = 4 * b + r;
    if (co >= s.co) break;
    const float* ar = acc + r * kMaxTile;
    for (int64_t e = 0; e < width && q0 + e < P.q_count; ++e) {
      const int64_t p = P.col_p[q0 + e];
      if (p < 0) continue;
      float val = ar[e];
      if (a.residual) val += a.residual[n * a.r_sn + co * a.r_sc + p];
      a.y[n * a.y_sn + co * a.y_sc + p] = val;
    }
  }
}

void grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

void packed_conv_cpu(const PackedConvArgs& a, const CpuCodeLayout& layout, const float* lut, CpuIsa isa) {
  check_args(a);
  const PackedConvShape& s = a.shape;
  TTQ_CHECK(s.groups == 1) << "packed_conv_cpu: a conv of " << s.groups
                           << " groups takes one layout per group (relayout_cpu_groups)";
  TTQ_CHECK(layout.co == s.co && layout.k == s.k())
      << "packed_conv_cpu: layout [" << layout.co << ", " << layout.k << "] for a conv [" << s.co << ", "
      << s.k() << "]";
  if (s.n == 0) return;
  if (isa == CpuIsa::Auto) isa = cpu_isa_auto();
  TTQ_CHECK(cpu_isa_supported(isa)) << "packed_conv_cpu: this CPU cannot run the " << cpu_isa_name(isa)
                                    << " micro-kernel";

  ConvPlan P;
  P.a = &a;
  P.layout = &layout;
  P.lut = lut;
  for (int nv = 1; nv <= 3; ++nv) {
    P.kernels[nv - 1] = pick_kernel(isa, nv);
    P.pair_kernels[nv - 1] = pick_pair_kernel(isa, nv);
  }
  P.groups = P.pair_kernels[0] != nullptr ? (layout.blocks + 1) / 2 : layout.blocks;
  P.vec = isa_vec(isa);
  P.tile = 3 * P.vec;
  P.hs = s.hs();
  P.ws = s.ws();
  P.hp = P.hs + 2 * s.pad;
  P.wp = P.ws + 2 * s.pad;
  P.ho = s.ho();
  P.wo = s.wo();
  P.k = s.k();
  P.plane = P.hp * P.wp;
  P.wide = s.stride == 1;
  P.direct = P.wide && s.pad == 0 && !s.pool2 && a.pre.identity();
  P.q_count = P.wide ? (P.ho - 1) * P.wp + P.wo : P.ho * P.wo;
  P.col_stride = P.q_count + kSlack;
  P.tiles = (P.q_count + P.tile - 1) / P.tile;

  // Tables, by nested loops (no divisions: this runs on every call).
  Scratch& sc = scratch();
  sc.koff.resize(static_cast<size_t>(layout.mask_words * 64));
  for (int64_t c = 0, kk = 0; c < s.ci; ++c)
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j, ++kk)
        sc.koff[kk] =
            P.direct ? c * a.x_sc + i * s.w + j : (P.wide ? c * P.plane + i * P.wp + j : kk * P.col_stride);
  if (P.direct) {
    sc.koff_tail.resize(static_cast<size_t>(layout.mask_words * 64));
    for (int64_t kk = 0; kk < P.k; ++kk) sc.koff_tail[kk] = kk * P.tile;
    P.koff_tail = sc.koff_tail.data();
  }
  sc.col_p.resize(static_cast<size_t>(P.q_count));
  {
    const int64_t row_len = P.wide ? P.wp : P.wo;
    int64_t q = 0;
    for (int64_t oh = 0; oh < P.ho && q < P.q_count; ++oh)
      for (int64_t ow = 0; ow < row_len && q < P.q_count; ++ow, ++q)
        sc.col_p[q] = ow < P.wo ? static_cast<int32_t>(oh * P.wo + ow) : -1;
  }
  const int64_t groups = (P.q_count + kVec - 1) / kVec;
  sc.straight.assign(static_cast<size_t>(groups), 0);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t q0 = g * kVec;
    bool ok = q0 + kVec <= P.q_count;
    for (int64_t e = 0; ok && e < kVec; ++e)
      ok = sc.col_p[q0 + e] >= 0 && sc.col_p[q0 + e] == sc.col_p[q0] + e;
    sc.straight[g] = ok;
  }
  sc.tile_live.assign(static_cast<size_t>(P.tiles), 0);
  for (int64_t q = 0; q < P.q_count; ++q)
    if (sc.col_p[q] >= 0) sc.tile_live[q / P.tile] = 1;
  // The epilogue's per-channel scale and shift, padded to whole register blocks.
  sc.esc.assign(static_cast<size_t>(4 * layout.blocks), 1.0f);
  sc.esh.assign(static_cast<size_t>(4 * layout.blocks), 0.0f);
  for (int64_t co = 0; co < s.co; ++co) {
    if (a.post.scale) sc.esc[co] = a.post.scale[co];
    if (a.post.shift) sc.esh[co] = a.post.shift[co];
  }
  P.koff = sc.koff.data();
  P.col_p = sc.col_p.data();
  P.straight = sc.straight.data();
  P.tile_live = sc.tile_live.data();
  P.esc = sc.esc.data();
  P.esh = sc.esh.data();

  const size_t xprep_size = static_cast<size_t>(s.ci * P.plane + kSlack);
  const size_t cols_size = P.wide ? 0 : static_cast<size_t>(P.k * P.col_stride);
  const size_t pool_size = s.pool2 ? static_cast<size_t>(2 * s.w) : 0;
  const int64_t items = P.tiles * P.groups;
  const int threads = omp_get_max_threads();
  // Threads pay off only above tens of microseconds of work: a fork / join costs
  // microseconds on an idle machine and far more on a busy one. A call from inside a
  // parallel region (the groups of a grouped conv) runs on its own thread.
  const bool parallel = s.macs() >= kParallelMacs && threads > 1 && !omp_in_parallel();

  if (parallel && s.n >= 2 * threads) {
    // Whole samples per thread: each X' (and im2col) stays in its thread's cache, no
    // barrier until the end; dynamic so that a descheduled thread holds no one up.
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t n = 0; n < s.n; ++n) {
      Scratch& ts = scratch();
      if (P.direct) {
        fill_tail_panel(P, a.x + n * a.x_sn, ts.panel);
        for (int64_t item = 0; item < items; ++item) run_item(P, n, item, a.x + n * a.x_sn, ts.panel.data());
        continue;
      }
      grow(ts.xprep, xprep_size);
      grow(ts.cols, cols_size);
      grow(ts.pool_rows, pool_size);
      float* xprep = ts.xprep.data();
      std::fill(xprep + s.ci * P.plane, xprep + xprep_size, 0.0f);
      prepare_channels(P, n, 0, s.ci, xprep, ts.pool_rows.data());
      if (!P.wide) im2col_rows(P, 0, P.k, xprep, ts.cols.data());
      const float* base = P.wide ? xprep : ts.cols.data();
      for (int64_t item = 0; item < items; ++item) run_item(P, n, item, base, nullptr);
    }
    return;
  }
  // Few samples: one at a time, its channels and register blocks split over threads.
  grow(sc.xprep, xprep_size);
  grow(sc.cols, cols_size);
  float* xprep = sc.xprep.data();
  float* cols = sc.cols.data();
  std::fill(xprep + s.ci * P.plane, xprep + xprep_size, 0.0f);
  const float* base = P.wide ? xprep : cols;
  for (int64_t n = 0; n < s.n; ++n) {
    if (P.direct) {
      fill_tail_panel(P, a.x + n * a.x_sn, sc.panel);
      const float* panel = sc.panel.data();
#pragma omp parallel for schedule(dynamic, 2) if (parallel)
      for (int64_t item = 0; item < items; ++item) run_item(P, n, item, a.x + n * a.x_sn, panel);
      continue;
    }
#pragma omp parallel if (parallel)
    {
      std::vector<float> pool_rows(pool_size);
#pragma omp for schedule(dynamic, 4)
      for (int64_t c = 0; c < s.ci; ++c) prepare_channels(P, n, c, c + 1, xprep, pool_rows.data());
      if (!P.wide) {
#pragma omp for schedule(dynamic, 4)
        for (int64_t kk = 0; kk < P.k; ++kk) im2col_rows(P, kk, kk + 1, xprep, cols);
      }
#pragma omp for schedule(dynamic, 2)
      for (int64_t item = 0; item < items; ++item) run_item(P, n, item, base, nullptr);
    }
  }
}

void packed_conv_cpu(const PackedConvArgs& a, const std::vector<CpuCodeLayout>& group_layouts,
                     const float* lut, CpuIsa isa) {
  check_args(a);
  const PackedConvShape& s = a.shape;
  TTQ_CHECK(static_cast<int64_t>(group_layouts.size()) == s.groups)
      << "packed_conv_cpu: " << group_layouts.size() << " layouts for " << s.groups << " groups";
  if (s.groups == 1) return packed_conv_cpu(a, group_layouts[0], lut, isa);
  const int64_t cg = s.cg(), og = s.og();
  // Group g: a one-group conv on channel slices [g*cg, (g+1)*cg) of x and the prologue,
  // [g*og, (g+1)*og) of y, the residual and the epilogue (the kernels take channel
  // strides, so nothing is copied).
  auto run_group = [&](int64_t g) {
    PackedConvArgs ag = a;
    ag.shape.ci = cg;
    ag.shape.co = og;
    ag.shape.groups = 1;
    ag.x = a.x + g * cg * a.x_sc;
    ag.y = a.y + g * og * a.y_sc;
    if (a.residual) ag.residual = a.residual + g * og * a.r_sc;
    if (a.pre.scale) ag.pre.scale = a.pre.scale + g * cg;
    if (a.pre.shift) ag.pre.shift = a.pre.shift + g * cg;
    if (a.post.scale) ag.post.scale = a.post.scale + g * og;
    if (a.post.shift) ag.post.shift = a.post.shift + g * og;
    packed_conv_cpu(ag, group_layouts[static_cast<size_t>(g)], lut, isa);
  };
  // Many groups (depthwise): whole groups per thread, each run on its thread (the
  // one-group twin does not fork inside a parallel region). Few groups: one after
  // another, each multithreaded when large enough.
  const int threads = omp_get_max_threads();
  const bool by_group = threads > 1 && s.groups >= threads && s.macs() >= kParallelMacs && !omp_in_parallel();
#pragma omp parallel for schedule(dynamic, 1) if (by_group)
  for (int64_t g = 0; g < s.groups; ++g) run_group(g);
}

}  // namespace ttq::kernels
