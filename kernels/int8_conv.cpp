// CPU side of the W2A8 convolution (kernels/int8_conv.h): the weight layout, the
// reference, the CPU twin and the tensor entries. CUDA twin: kernels/int8_conv.cu.
// Arithmetic and layout: docs/int8.md. Tests: tests/test_int8_conv.cpp; timing:
// bench/bench_int8_conv.cpp.
//
// The CPU twin is a GEMM of the layer's mask rows against "columns" of a prepared input.
// Per (sample, group) the input is rewritten once as X4[cq][hp][wp]: 32-bit words holding
// the 4 channels 4cq..4cq+3 of one padded pixel, each byte u = q + 128 (q ^ 0x80, so
// u is in [0, 255] and feeds vpdpbusd's unsigned operand), the zero padding holding
// u(zx) = zx + 128 (a real zero) and channels past cg any value (their weights are 0).
// A k-quad (4 channels at tap (i, j)) of column q is then one word at
// X4[q + koff[kq]], koff = cq*hp*wp + i*wp + j, for stride 1 over "wide" columns
// q = oh*wp + ow (the wp - wo columns per row that fall on padding are computed and
// dropped), so 16 columns of one quad are one contiguous 64-byte load; other strides
// gather an explicit im2col of words. With the masks as the signed operand,
//   dot_P = sum over +1 taps of u = P + (128 + zx) * npos,
// so P = dot_P - (128 + zx) * npos (npos: the row's +1 codes), N likewise: exact.
// Micro-kernels (a block of 4 rows x up to 48 columns) differ only in the instruction;
// the epilogue turns the integer tile into outputs by int8_dequant / int8_requant's
// sequence. Threads: whole (sample, group) units when there are at least two per
// thread, else one unit at a time with its quads and tiles split over threads.
#include "kernels/int8_conv.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/cuda/runtime.h"
#include "kernels/packed_format.h"
#include "kernels/tensor_args.h"

namespace ttq::kernels {

namespace {

inline uint8_t canonical_code(const uint8_t* canonical, int64_t i) {
  return packed::code_at(canonical[packed::byte_of(i)], i);
}

constexpr int64_t kMaxK = int64_t(1) << 23;  // 255 * 2^23 < 2^31: every sum fits an int32
constexpr int kRows = 4;                     // rows per block (the layout's)
constexpr int kMaxTile = 48;                 // widest register tile (3 zmm of 16 columns)
constexpr int64_t kParallelMacs = int64_t(1) << 22;

}  // namespace

const char* int8_out_name(Int8Out o) {
  switch (o) {
    case Int8Out::Int32: return "int32";
    case Int8Out::F32: return "f32";
    case Int8Out::Int8: return "int8";
  }
  return "?";
}

const char* int8_isa_name(Int8Isa isa) {
  switch (isa) {
    case Int8Isa::Auto: return "auto";
    case Int8Isa::Scalar: return "scalar";
    case Int8Isa::Avx2: return "avx2";
    case Int8Isa::AvxVnni: return "avx_vnni";
    case Int8Isa::Avx512Vnni: return "avx512_vnni";
  }
  return "?";
}

bool int8_isa_supported(Int8Isa isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();  // libgcc also checks that the OS saves the wider registers
  switch (isa) {
    case Int8Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Int8Isa::AvxVnni:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("avxvnni");
    case Int8Isa::Avx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vnni");
    default: return true;
  }
#else
  return isa == Int8Isa::Auto || isa == Int8Isa::Scalar;
#endif
}

Int8Isa int8_isa_auto() {
  static const Int8Isa isa = [] {
    for (Int8Isa c : {Int8Isa::Avx512Vnni, Int8Isa::AvxVnni, Int8Isa::Avx2})
      if (int8_isa_supported(c)) return c;
    return Int8Isa::Scalar;
  }();
  return isa;
}

// ---- weight layout -------------------------------------------------------------------------

Int8WeightLayout relayout_int8(const uint8_t* canonical, int64_t co, int64_t cg, int64_t kh, int64_t kw,
                               int64_t groups) {
  TTQ_CHECK(co >= 1 && cg >= 1 && kh >= 1 && kw >= 1 && groups >= 1 && co % groups == 0)
      << "relayout_int8: bad weight [" << co << ", " << cg << ", " << kh << ", " << kw << "] for " << groups
      << " groups";
  Int8WeightLayout l;
  l.co = co;
  l.cg = cg;
  l.kh = kh;
  l.kw = kw;
  l.groups = groups;
  l.cqs = (cg + 3) / 4;
  l.kqs = l.cqs * kh * kw;
  const int64_t og = co / groups;
  l.blocks = (og + kRows - 1) / kRows;
  l.masks.assign(static_cast<size_t>(groups * l.blocks * l.kqs * kRows * 2), 0u);
  l.counts.assign(static_cast<size_t>(2 * co), 0);
  const int64_t k = cg * kh * kw;
  for (int64_t o = 0; o < co; ++o) {
    const int64_t g = o / og, r = o % og, b = r / kRows, rr = r % kRows;
    for (int64_t c = 0; c < cg; ++c)
      for (int64_t i = 0; i < kh; ++i)
        for (int64_t j = 0; j < kw; ++j) {
          const uint8_t code = canonical_code(canonical, o * k + (c * kh + i) * kw + j);
          TTQ_CHECK(code != packed::kInvalid) << "relayout_int8: invalid code 3 in row " << o;
          if (code == packed::kZero) continue;
          const int s = code == packed::kPos ? 0 : 1;
          const int64_t kq = ((c / 4) * kh + i) * kw + j;
          l.masks[static_cast<size_t>((((g * l.blocks + b) * l.kqs + kq) * kRows + rr) * 2 + s)] |=
              1u << (8 * (c % 4));
          ++l.counts[static_cast<size_t>(s * co + o)];
        }
  }
  return l;
}

void relayout_int8_to_canonical(const Int8WeightLayout& l, uint8_t* canonical) {
  const int64_t k = l.cg * l.kh * l.kw, og = l.og();
  std::memset(canonical, 0, static_cast<size_t>(packed::packed_bytes(l.co * k)));
  for (int64_t g = 0; g < l.groups; ++g)
    for (int64_t b = 0; b < l.blocks; ++b)
      for (int64_t kq = 0; kq < l.kqs; ++kq)
        for (int64_t rr = 0; rr < kRows; ++rr) {
          const int64_t r = b * kRows + rr;
          const size_t at = static_cast<size_t>((((g * l.blocks + b) * l.kqs + kq) * kRows + rr) * 2);
          const uint32_t pm = l.masks[at], nm = l.masks[at + 1];
          const int64_t cq = kq / (l.kh * l.kw), i = (kq / l.kw) % l.kh, j = kq % l.kw;
          for (int e = 0; e < 4; ++e) {
            const bool pos = (pm >> (8 * e)) & 0xFF, neg = (nm >> (8 * e)) & 0xFF;
            const int64_t c = 4 * cq + e;
            if (!pos && !neg) continue;
            TTQ_CHECK(!(pos && neg) && r < og && c < l.cg)
                << "relayout_int8_to_canonical: mask bit outside the weight or on both signs";
            const int64_t idx = (g * og + r) * k + (c * l.kh + i) * l.kw + j;
            const uint8_t code = pos ? packed::kPos : packed::kNeg;
            canonical[packed::byte_of(idx)] =
                static_cast<uint8_t>(canonical[packed::byte_of(idx)] | (code << packed::shift_of(idx)));
          }
        }
}

// ---- checks and the shared epilogue --------------------------------------------------------

namespace {

void check_quant(const Int8Quant& q, const char* what) {
  TTQ_INPUT_CHECK(std::isfinite(q.scale) && q.scale > 0.0f)
      << "ternary int8 conv: the " << what << " scale must be finite and positive, got " << q.scale;
  TTQ_INPUT_CHECK(q.zero_point >= -128 && q.zero_point <= 127)
      << "ternary int8 conv: the " << what << " zero point " << q.zero_point << " is outside [-128, 127]";
}

// The per-call constants of the float steps.
struct Epi {
  float a = 1, b = 1;  // wp * sx, wn * sx
  float inv = 1;       // 1 / y_quant.scale
  int32_t zy = 0;
};
Epi make_epi(const Int8ConvArgs& a) {
  Epi e;
  e.a = a.wp * a.x_quant.scale;
  e.b = a.wn * a.x_quant.scale;
  e.inv = 1.0f / a.y_quant.scale;
  e.zy = a.y_quant.zero_point;
  return e;
}

// Output element idx (n * y_sn + o * y_sc + position) from the exact sums P and N.
inline void store_one(const Int8ConvArgs& a, const Epi& e, int64_t o, int64_t idx, int32_t p, int32_t n) {
  if (a.out == Int8Out::Int32) {
    a.p_sum[idx] = p;
    a.n_sum[idx] = n;
    return;
  }
  const float v = int8_dequant(p, n, e.a, e.b, a.post.scale ? a.post.scale[o] : 1.0f,
                               a.post.shift ? a.post.shift[o] : 0.0f, a.post.relu);
  if (a.out == Int8Out::F32) {
    a.y[idx] = v;
  } else {
    a.yq[idx] = int8_requant(v, e.inv, e.zy);
  }
}

}  // namespace

void ternary_int8_conv_check(const Int8ConvArgs& a) {
  const Int8ConvShape& s = a.shape;
  TTQ_CHECK(s.n >= 0 && s.ci >= 1 && s.h >= 1 && s.w >= 1 && s.co >= 1 && s.kh >= 1 && s.kw >= 1 &&
            s.stride >= 1 && s.pad >= 0)
      << "ternary int8 conv: bad shape (n " << s.n << ", ci " << s.ci << ", " << s.h << "x" << s.w << ", co "
      << s.co << ", kernel " << s.kh << "x" << s.kw << ", stride " << s.stride << ", pad " << s.pad << ")";
  TTQ_CHECK(s.groups >= 1 && s.ci % s.groups == 0 && s.co % s.groups == 0)
      << "ternary int8 conv: " << s.groups << " groups do not divide " << s.ci << " input and " << s.co
      << " output channels";
  TTQ_CHECK(s.h + 2 * s.pad >= s.kh && s.w + 2 * s.pad >= s.kw)
      << "ternary int8 conv: kernel " << s.kh << "x" << s.kw << " larger than the padded input " << s.h << "x"
      << s.w << " (pad " << s.pad << ")";
  TTQ_CHECK(s.k() <= kMaxK) << "ternary int8 conv: " << s.k()
                            << " taps per output; int32 sums are exact up to " << kMaxK;
  TTQ_CHECK(a.x != nullptr) << "ternary int8 conv: null x";
  switch (a.out) {
    case Int8Out::Int32:
      TTQ_CHECK(a.p_sum != nullptr && a.n_sum != nullptr)
          << "ternary int8 conv: int32 output needs p_sum and n_sum";
      break;
    case Int8Out::F32: TTQ_CHECK(a.y != nullptr) << "ternary int8 conv: f32 output needs y"; break;
    case Int8Out::Int8: TTQ_CHECK(a.yq != nullptr) << "ternary int8 conv: int8 output needs yq"; break;
    default: TTQ_THROW() << "ternary int8 conv: unknown output kind " << static_cast<int>(a.out);
  }
  check_quant(a.x_quant, "input");
  if (a.out == Int8Out::Int8) check_quant(a.y_quant, "output");
  TTQ_INPUT_CHECK(std::isfinite(a.wp) && std::isfinite(a.wn))
      << "ternary int8 conv: the weight scales must be finite, got Wp " << a.wp << ", Wn " << a.wn;
}

// ---- the reference -------------------------------------------------------------------------

void ternary_int8_conv_ref(const Int8ConvArgs& a, const uint8_t* canonical) {
  ternary_int8_conv_check(a);
  const Int8ConvShape& s = a.shape;
  const int64_t ho = s.ho(), wo = s.wo(), k = s.k(), cg = s.cg(), og = s.og();
  const int32_t zx = a.x_quant.zero_point;
  const Epi e = make_epi(a);
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t o = 0; o < s.co; ++o) {
      const int64_t c0 = o / og * cg;
      for (int64_t oh = 0; oh < ho; ++oh)
        for (int64_t ow = 0; ow < wo; ++ow) {
          int32_t p = 0, m = 0;
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t i = 0; i < s.kh; ++i)
              for (int64_t j = 0; j < s.kw; ++j) {
                const int64_t ih = oh * s.stride - s.pad + i, iw = ow * s.stride - s.pad + j;
                if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;  // q = zx: adds 0
                const uint8_t code = canonical_code(canonical, o * k + (c * s.kh + i) * s.kw + j);
                const int32_t v = int32_t{a.x[n * a.x_sn + (c0 + c) * a.x_sc + ih * s.w + iw]} - zx;
                if (code == packed::kPos) p += v;
                if (code == packed::kNeg) m += v;
              }
          store_one(a, e, o, n * a.y_sn + o * a.y_sc + oh * wo + ow, p, m);
        }
    }
}

// ---- the CPU twin: micro-kernels -------------------------------------------------------------

namespace {

// tp[r * kMaxTile + col], tn[...] = the dot products of the block's rows r = 0..3 with
// columns col < width of xq: sum over quads kq of the bytes of xq[koff[kq] + col] (u,
// unsigned) times the bytes of w[kq * 8 + 2r] (P mask) or w[kq * 8 + 2r + 1] (N mask).
using TileFn = void (*)(const uint32_t* xq, const int64_t* koff, int64_t kqs, const uint32_t* w, int32_t* tp,
                        int32_t* tn);

template <int NV>  // NV groups of 8 columns
void tile_scalar(const uint32_t* xq, const int64_t* koff, int64_t kqs, const uint32_t* w, int32_t* tp,
                 int32_t* tn) {
  constexpr int kW = 8 * NV;
  int32_t ap[kRows][kW] = {}, an[kRows][kW] = {};
  for (int64_t kq = 0; kq < kqs; ++kq, w += 2 * kRows) {
    const uint32_t* xp = xq + koff[kq];
    for (int r = 0; r < kRows; ++r) {
      const uint32_t pm = w[2 * r], nm = w[2 * r + 1];
      if ((pm | nm) == 0) continue;
      for (int c = 0; c < kW; ++c) {
        const uint32_t x = xp[c];
        int32_t sp = 0, sn = 0;
        for (int e = 0; e < 4; ++e) {
          const int32_t u = static_cast<int32_t>((x >> (8 * e)) & 0xFF);
          sp += u * static_cast<int32_t>((pm >> (8 * e)) & 0xFF);
          sn += u * static_cast<int32_t>((nm >> (8 * e)) & 0xFF);
        }
        ap[r][c] += sp;
        an[r][c] += sn;
      }
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kW; ++c) {
      tp[r * kMaxTile + c] = ap[r][c];
      tn[r * kMaxTile + c] = an[r][c];
    }
}

#if defined(__x86_64__)

// 4 rows x NV zmm (16 columns each): 8 * NV accumulators.
template <int NV>
__attribute__((target("avx512f,avx512bw,avx512vnni,fma"))) void tile_avx512(const uint32_t* xq,
                                                                            const int64_t* koff, int64_t kqs,
                                                                            const uint32_t* w, int32_t* tp,
                                                                            int32_t* tn) {
  __m512i ap[kRows][NV], an[kRows][NV];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) ap[r][v] = an[r][v] = _mm512_setzero_si512();
  for (int64_t kq = 0; kq < kqs; ++kq, w += 2 * kRows) {
    const uint32_t* xp = xq + koff[kq];
    __m512i xv[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_si512(xp + 16 * v);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const __m512i bp = _mm512_set1_epi32(static_cast<int>(w[2 * r]));
      const __m512i bn = _mm512_set1_epi32(static_cast<int>(w[2 * r + 1]));
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) {
        ap[r][v] = _mm512_dpbusd_epi32(ap[r][v], xv[v], bp);
        an[r][v] = _mm512_dpbusd_epi32(an[r][v], xv[v], bn);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
      _mm512_store_si512(tp + r * kMaxTile + 16 * v, ap[r][v]);
      _mm512_store_si512(tn + r * kMaxTile + 16 * v, an[r][v]);
    }
}

// Two passes of 2 rows x NV ymm (8 columns each): 4 * NV accumulators (16 ymm registers).
template <int NV>
__attribute__((target("avx2,avxvnni,fma"))) void tile_avxvnni(const uint32_t* xq, const int64_t* koff,
                                                              int64_t kqs, const uint32_t* w, int32_t* tp,
                                                              int32_t* tn) {
  for (int half = 0; half < 2; ++half) {
    __m256i ap[2][NV], an[2][NV];
#pragma GCC unroll 2
    for (int r = 0; r < 2; ++r)
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) ap[r][v] = an[r][v] = _mm256_setzero_si256();
    const uint32_t* wk = w + 4 * half;
    for (int64_t kq = 0; kq < kqs; ++kq, wk += 2 * kRows) {
      const uint32_t* xp = xq + koff[kq];
      __m256i xv[NV];
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) xv[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 8 * v));
#pragma GCC unroll 2
      for (int r = 0; r < 2; ++r) {
        // One broadcast live at a time: 12 accumulators + 3 columns + 1 = 16 registers.
        const __m256i bp = _mm256_set1_epi32(static_cast<int>(wk[2 * r]));
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) ap[r][v] = _mm256_dpbusd_avx_epi32(ap[r][v], xv[v], bp);
        const __m256i bn = _mm256_set1_epi32(static_cast<int>(wk[2 * r + 1]));
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) an[r][v] = _mm256_dpbusd_avx_epi32(an[r][v], xv[v], bn);
      }
    }
#pragma GCC unroll 2
    for (int r = 0; r < 2; ++r)
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) {
        const int row = 2 * half + r;
        _mm256_store_si256(reinterpret_cast<__m256i*>(tp + row * kMaxTile + 8 * v), ap[r][v]);
        _mm256_store_si256(reinterpret_cast<__m256i*>(tn + row * kMaxTile + 8 * v), an[r][v]);
      }
  }
}

// AVX2 without VNNI: vpmaddubsw multiplies u (unsigned, <= 255) by a mask byte (0 or 1)
// and adds adjacent pairs into int16: each lane is in [0, 510], so it never saturates,
// and 64 quads summed in int16 stay <= 64 * 510 = 32640 <= 32767. Every 64 quads the
// int16 sums are widened by vpmaddwd with ones (pairs -> int32) into the tile.
constexpr int64_t kAvx2Window = 64;
static_assert(kAvx2Window * 2 * 255 <= 32767, "the int16 window must not overflow");

template <int NV>
__attribute__((target("avx2,fma"))) void tile_avx2(const uint32_t* xq, const int64_t* koff, int64_t kqs,
                                                   const uint32_t* w, int32_t* tp, int32_t* tn) {
  // One row per pass: 2 * NV int16 sums + NV columns + a broadcast + a product = 11
  // registers (two rows at once spill on 16).
  const __m256i ones = _mm256_set1_epi16(1);
  for (int r = 0; r < kRows; ++r) {
    __m256i* dp = reinterpret_cast<__m256i*>(tp + r * kMaxTile);
    __m256i* dn = reinterpret_cast<__m256i*>(tn + r * kMaxTile);
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) dp[v] = dn[v] = _mm256_setzero_si256();
    for (int64_t kq0 = 0; kq0 < kqs; kq0 += kAvx2Window) {
      const int64_t kq1 = std::min(kqs, kq0 + kAvx2Window);
      __m256i sp[NV], sn[NV];
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) sp[v] = sn[v] = _mm256_setzero_si256();
      const uint32_t* wk = w + kq0 * 2 * kRows + 2 * r;
      for (int64_t kq = kq0; kq < kq1; ++kq, wk += 2 * kRows) {
        const uint32_t* xp = xq + koff[kq];
        __m256i xv[NV];
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) xv[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 8 * v));
        const __m256i bp = _mm256_set1_epi32(static_cast<int>(wk[0]));
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) sp[v] = _mm256_add_epi16(sp[v], _mm256_maddubs_epi16(xv[v], bp));
        const __m256i bn = _mm256_set1_epi32(static_cast<int>(wk[1]));
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) sn[v] = _mm256_add_epi16(sn[v], _mm256_maddubs_epi16(xv[v], bn));
      }
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) {
        dp[v] = _mm256_add_epi32(dp[v], _mm256_madd_epi16(sp[v], ones));
        dn[v] = _mm256_add_epi32(dn[v], _mm256_madd_epi16(sn[v], ones));
      }
    }
  }
}

#endif  // __x86_64__

// ---- the CPU twin: epilogues -------------------------------------------------------------------

// A run of consecutive outputs within a tile: columns [off, off + len) of the tile are
// outputs [p, p + len) of the plane.
struct Seg {
  int32_t off, len;
  int64_t p;
};

// The epilogue of one register block: for each of its rows r < rows, the output offset
// at[r] = n * y_sn + o * y_sc, the corrections (128 + zx) * count and the affine; the
// tile's segments. tp / tn hold the dot products ([kRows][kMaxTile]).
struct TileEpi {
  const Int8ConvArgs* a;
  const Epi* e;
  int rows;
  int64_t at[kRows];
  int32_t corr_p[kRows], corr_n[kRows];
  float sc[kRows], sh[kRows];
  const Seg* segs;
  int64_t nsegs;
};
using EpiFn = void (*)(const TileEpi& te, const int32_t* tp, const int32_t* tn);

// store_one with the output kind and the ReLU fixed.
template <Int8Out OUT, bool RELU>
inline void store_t(const Int8ConvArgs& a, const Epi& e, int64_t idx, int32_t p, int32_t n, float sc,
                    float sh) {
  if constexpr (OUT == Int8Out::Int32) {
    a.p_sum[idx] = p;
    a.n_sum[idx] = n;
  } else {
    const float v = int8_dequant(p, n, e.a, e.b, sc, sh, RELU);
    if constexpr (OUT == Int8Out::F32) {
      a.y[idx] = v;
    } else {
      a.yq[idx] = int8_requant(v, e.inv, e.zy);
    }
  }
}

// Elements [i0, len) of row r's segment sg, one at a time (every variant's tail).
template <Int8Out OUT, bool RELU>
inline void epi_rest(const TileEpi& te, int r, const Seg& sg, int64_t i0, const int32_t* tp,
                     const int32_t* tn) {
  const int32_t* pr = tp + r * kMaxTile + sg.off;
  const int32_t* nr = tn + r * kMaxTile + sg.off;
  const int64_t at = te.at[r] + sg.p;
  for (int64_t i = i0; i < sg.len; ++i)
    store_t<OUT, RELU>(*te.a, *te.e, at + i, pr[i] - te.corr_p[r], nr[i] - te.corr_n[r], te.sc[r], te.sh[r]);
}

template <Int8Out OUT, bool RELU>
void epi_scalar(const TileEpi& te, const int32_t* tp, const int32_t* tn) {
  for (int r = 0; r < te.rows; ++r)
    for (int64_t si = 0; si < te.nsegs; ++si) epi_rest<OUT, RELU>(te, r, te.segs[si], 0, tp, tn);
}

#if defined(__x86_64__)

template <Int8Out OUT, bool RELU>
__attribute__((target("avx2,fma"))) void epi_avx2(const TileEpi& te, const int32_t* tp, const int32_t* tn) {
  const Int8ConvArgs& a = *te.a;
  const Epi& e = *te.e;
  const __m256 va = _mm256_set1_ps(e.a), vb = _mm256_set1_ps(e.b), zero = _mm256_setzero_ps(),
               inv = _mm256_set1_ps(e.inv), lo = _mm256_set1_ps(-256.0f), hi = _mm256_set1_ps(256.0f);
  const __m256i zy = _mm256_set1_epi32(e.zy), qlo = _mm256_set1_epi32(-128), qhi = _mm256_set1_epi32(127);
  for (int r = 0; r < te.rows; ++r) {
    const __m256i cp = _mm256_set1_epi32(te.corr_p[r]), cn = _mm256_set1_epi32(te.corr_n[r]);
    const __m256 vsc = _mm256_set1_ps(te.sc[r]), vsh = _mm256_set1_ps(te.sh[r]);
    for (int64_t si = 0; si < te.nsegs; ++si) {
      const Seg& sg = te.segs[si];
      const int32_t* pr = tp + r * kMaxTile + sg.off;
      const int32_t* nr = tn + r * kMaxTile + sg.off;
      const int64_t at = te.at[r] + sg.p;
      int64_t i = 0;
      for (; i + 8 <= sg.len; i += 8) {
        const __m256i p = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pr + i)), cp);
        const __m256i n = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(nr + i)), cn);
        if constexpr (OUT == Int8Out::Int32) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.p_sum + at + i), p);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.n_sum + at + i), n);
        } else {
          __m256 v = _mm256_fmsub_ps(va, _mm256_cvtepi32_ps(p), _mm256_mul_ps(vb, _mm256_cvtepi32_ps(n)));
          v = _mm256_fmadd_ps(v, vsc, vsh);
          if constexpr (RELU) v = _mm256_max_ps(v, zero);
          if constexpr (OUT == Int8Out::F32) {
            _mm256_storeu_ps(a.y + at + i, v);
          } else {
            __m256 f = _mm256_mul_ps(v, inv);
            f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
            __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(f), zy);
            q = _mm256_min_epi32(_mm256_max_epi32(q, qlo), qhi);
            // int32 lanes in [-128, 127] -> 8 bytes by two saturating packs (exact here).
            const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storel_epi64(reinterpret_cast<__m128i*>(a.yq + at + i), _mm_packs_epi16(w16, w16));
          }
        }
      }
      epi_rest<OUT, RELU>(te, r, sg, i, tp, tn);
    }
  }
}

template <Int8Out OUT, bool RELU>
__attribute__((target("avx512f,avx512bw,avx512vnni,fma"))) void epi_avx512(const TileEpi& te,
                                                                           const int32_t* tp,
                                                                           const int32_t* tn) {
  const Int8ConvArgs& a = *te.a;
  const Epi& e = *te.e;
  const __m512 va = _mm512_set1_ps(e.a), vb = _mm512_set1_ps(e.b), zero = _mm512_setzero_ps(),
               inv = _mm512_set1_ps(e.inv), lo = _mm512_set1_ps(-256.0f), hi = _mm512_set1_ps(256.0f);
  const __m512i zy = _mm512_set1_epi32(e.zy), qlo = _mm512_set1_epi32(-128), qhi = _mm512_set1_epi32(127);
  const __mmask16 all = 0xFFFF;
  for (int r = 0; r < te.rows; ++r) {
    const __m512i cp = _mm512_set1_epi32(te.corr_p[r]), cn = _mm512_set1_epi32(te.corr_n[r]);
    const __m512 vsc = _mm512_set1_ps(te.sc[r]), vsh = _mm512_set1_ps(te.sh[r]);
    for (int64_t si = 0; si < te.nsegs; ++si) {
      const Seg& sg = te.segs[si];
      const int32_t* pr = tp + r * kMaxTile + sg.off;
      const int32_t* nr = tn + r * kMaxTile + sg.off;
      const int64_t at = te.at[r] + sg.p;
      for (int64_t i = 0; i < sg.len; i += 16) {
        const __mmask16 m =
            sg.len - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (sg.len - i)) - 1);
        const __m512i p = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, pr + i), cp);
        const __m512i n = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, nr + i), cn);
        if constexpr (OUT == Int8Out::Int32) {
          _mm512_mask_storeu_epi32(a.p_sum + at + i, m, p);
          _mm512_mask_storeu_epi32(a.n_sum + at + i, m, n);
        } else {
          // Full-mask spellings of cvt / max / min (the same instructions): GCC 12's
          // unmasked intrinsics trip -Wmaybe-uninitialized.
          const __m512 pf = _mm512_mask_cvtepi32_ps(zero, all, p), nf = _mm512_mask_cvtepi32_ps(zero, all, n);
          __m512 v = _mm512_fmsub_ps(va, pf, _mm512_mul_ps(vb, nf));
          v = _mm512_fmadd_ps(v, vsc, vsh);
          if constexpr (RELU) v = _mm512_mask_max_ps(v, all, v, zero);
          if constexpr (OUT == Int8Out::F32) {
            _mm512_mask_storeu_ps(a.y + at + i, m, v);
          } else {
            __m512 f = _mm512_mul_ps(v, inv);
            f = _mm512_mask_max_ps(f, all, f, lo);
            f = _mm512_mask_min_ps(f, all, f, hi);
            __m512i q = _mm512_add_epi32(_mm512_mask_cvtps_epi32(zy, all, f), zy);
            q = _mm512_mask_max_epi32(q, all, q, qlo);
            q = _mm512_mask_min_epi32(q, all, q, qhi);
            _mm512_mask_cvtepi32_storeu_epi8(a.yq + at + i, m, q);
          }
        }
      }
    }
  }
}

#endif  // __x86_64__

// The six instantiations of an epilogue, indexed by output kind * 2 + relu.
#define TTQ_INT8_EPI_TABLE(fn)                                                                            \
  {                                                                                                       \
    fn<Int8Out::Int32, false>, fn<Int8Out::Int32, true>, fn<Int8Out::F32, false>, fn<Int8Out::F32, true>, \
        fn<Int8Out::Int8, false>, fn<Int8Out::Int8, true>                                                 \
  }

struct Kernels {
  TileFn tile[3];  // by the number of vectors
  EpiFn epi;
  int vec;  // columns per vector
};
Kernels pick_kernels(Int8Isa isa, Int8Out out, bool relu) {
  const int e = static_cast<int>(out) * 2 + (out != Int8Out::Int32 && relu ? 1 : 0);
  switch (isa) {
#if defined(__x86_64__)
    case Int8Isa::Avx512Vnni: {
      static constexpr EpiFn epi[6] = TTQ_INT8_EPI_TABLE(epi_avx512);
      return {{tile_avx512<1>, tile_avx512<2>, tile_avx512<3>}, epi[e], 16};
    }
    case Int8Isa::AvxVnni: {
      static constexpr EpiFn epi[6] = TTQ_INT8_EPI_TABLE(epi_avx2);
      return {{tile_avxvnni<1>, tile_avxvnni<2>, tile_avxvnni<3>}, epi[e], 8};
    }
    case Int8Isa::Avx2: {
      static constexpr EpiFn epi[6] = TTQ_INT8_EPI_TABLE(epi_avx2);
      return {{tile_avx2<1>, tile_avx2<2>, tile_avx2<3>}, epi[e], 8};
    }
#endif
    default: {
      static constexpr EpiFn epi[6] = TTQ_INT8_EPI_TABLE(epi_scalar);
      return {{tile_scalar<1>, tile_scalar<2>, tile_scalar<3>}, epi[e], 8};
    }
  }
}
#undef TTQ_INT8_EPI_TABLE

// ---- the CPU twin: input preparation, plan, driver -------------------------------------------

template <class T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

struct Scratch {
  std::vector<int64_t> koff, seg_start;  // per call (the calling thread's)
  std::vector<Seg> segs;
  std::vector<float> esc, esh;
  std::vector<int8_t> fill;           // a plane of zero points
  std::vector<uint32_t> xprep, cols;  // per thread
  std::vector<uint32_t> plane;        // per thread: one interleaved plane before padding
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

struct Plan {
  const Int8ConvArgs* a;
  const Int8WeightLayout* l;
  Kernels k;
  Epi e;
  int64_t hp, wp, plane, ho, wo, cg, og;
  bool wide;           // stride 1: read X4 in place; else an im2col of words
  int64_t q_count;     // columns per unit
  int64_t col_stride;  // im2col row length (words)
  int64_t tile, tiles, items;
  int64_t xprep_words, cols_words;
  const int64_t* koff;
  const int64_t* seg_start;
  const Seg* segs;
  const float *esc, *esh;
  const int8_t* fill;
};

inline uint32_t quad_word(int8_t a, int8_t b, int8_t c, int8_t d) {
  return (uint32_t(uint8_t(a) ^ 0x80u)) | (uint32_t(uint8_t(b) ^ 0x80u) << 8) |
         (uint32_t(uint8_t(c) ^ 0x80u) << 16) | (uint32_t(uint8_t(d) ^ 0x80u) << 24);
}

// out[i] = the word of src[0..3][i] (each byte ^ 0x80), i < len.
void interleave4(const int8_t* const src[4], int64_t len, uint32_t* out) {
  int64_t i = 0;
#if defined(__x86_64__)  // SSE2: part of the x86-64 baseline
  const __m128i flip = _mm_set1_epi8(static_cast<char>(0x80));
  for (; i + 16 <= len; i += 16) {
    const __m128i a = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src[0] + i)), flip);
    const __m128i b = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src[1] + i)), flip);
    const __m128i c = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src[2] + i)), flip);
    const __m128i d = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src[3] + i)), flip);
    const __m128i ab_lo = _mm_unpacklo_epi8(a, b), ab_hi = _mm_unpackhi_epi8(a, b);
    const __m128i cd_lo = _mm_unpacklo_epi8(c, d), cd_hi = _mm_unpackhi_epi8(c, d);
    __m128i* o = reinterpret_cast<__m128i*>(out + i);
    _mm_storeu_si128(o + 0, _mm_unpacklo_epi16(ab_lo, cd_lo));
    _mm_storeu_si128(o + 1, _mm_unpackhi_epi16(ab_lo, cd_lo));
    _mm_storeu_si128(o + 2, _mm_unpacklo_epi16(ab_hi, cd_hi));
    _mm_storeu_si128(o + 3, _mm_unpackhi_epi16(ab_hi, cd_hi));
  }
#endif
  for (; i < len; ++i) out[i] = quad_word(src[0][i], src[1][i], src[2][i], src[3][i]);
}

// X4 quad cq of sample n, group g: dst is [hp][wp] words. The quad's four planes are
// interleaved in one pass: straight into dst without padding, else into a buffer whose
// rows are then copied between the padding.
void prepare_quad(const Plan& P, int64_t n, int64_t g, int64_t cq, uint32_t* dst) {
  const Int8ConvArgs& a = *P.a;
  const Int8ConvShape& s = a.shape;
  const int64_t hw = s.h * s.w, pad = s.pad;
  const int8_t* planes[4];
  for (int e = 0; e < 4; ++e) {
    const int64_t c = 4 * cq + e;
    planes[e] = c < P.cg ? a.x + n * a.x_sn + (g * P.cg + c) * a.x_sc : P.fill;
  }
  if (pad == 0) {
    interleave4(planes, hw, dst);
    return;
  }
  Scratch& ts = scratch();
  grow(ts.plane, static_cast<size_t>(hw));
  const uint32_t* tmp = ts.plane.data();
  interleave4(planes, hw, ts.plane.data());
  const uint32_t fillw = 0x01010101u * ((static_cast<uint32_t>(a.x_quant.zero_point) & 0xFFu) ^ 0x80u);
  std::fill(dst, dst + pad * P.wp, fillw);
  std::fill(dst + (pad + s.h) * P.wp, dst + P.plane, fillw);
  for (int64_t ih = 0; ih < s.h; ++ih) {
    uint32_t* row = dst + (ih + pad) * P.wp;
    std::fill(row, row + pad, fillw);
    std::copy(tmp + ih * s.w, tmp + (ih + 1) * s.w, row + pad);
    std::fill(row + pad + s.w, row + P.wp, fillw);
  }
}

// im2col quads [kq0, kq1) of one unit from its X4.
void im2col_quads(const Plan& P, int64_t kq0, int64_t kq1, const uint32_t* xprep, uint32_t* cols) {
  const Int8ConvShape& s = P.a->shape;
  for (int64_t kq = kq0; kq < kq1; ++kq) {
    const int64_t cq = kq / (s.kh * s.kw), i = (kq / s.kw) % s.kh, j = kq % s.kw;
    uint32_t* row = cols + kq * P.col_stride;
    const uint32_t* src = xprep + cq * P.plane + i * P.wp + j;
    int64_t q = 0;
    for (int64_t oh = 0; oh < P.ho; ++oh) {
      const uint32_t* sr = src + oh * s.stride * P.wp;
      for (int64_t ow = 0; ow < P.wo; ++ow) row[q++] = sr[ow * s.stride];
    }
    std::fill(row + P.q_count, row + P.col_stride, 0u);
  }
}

// Tile t x row block b of unit (n, g): the micro-kernel, then the epilogue per segment.
void run_item(const Plan& P, int64_t n, int64_t g, int64_t item, const uint32_t* base) {
  const Int8ConvArgs& a = *P.a;
  const Int8WeightLayout& l = *P.l;
  const int64_t t = item / l.blocks, b = item % l.blocks;
  const int64_t q0 = t * P.tile, len = std::min<int64_t>(P.tile, P.q_count - q0);
  const int nv = static_cast<int>((len + P.k.vec - 1) / P.k.vec);
  alignas(64) int32_t tp[kRows * kMaxTile];
  alignas(64) int32_t tn[kRows * kMaxTile];
  const uint32_t* w = l.masks.data() + (g * l.blocks + b) * l.kqs * 2 * kRows;
  P.k.tile[nv - 1](base + q0, P.koff, l.kqs, w, tp, tn);
  const int32_t u0 = 128 + a.x_quant.zero_point;  // u of a real zero
  TileEpi te;
  te.a = &a;
  te.e = &P.e;
  te.rows = static_cast<int>(std::min<int64_t>(kRows, P.og - b * kRows));
  for (int r = 0; r < te.rows; ++r) {
    const int64_t o = g * P.og + b * kRows + r;
    te.at[r] = n * a.y_sn + o * a.y_sc;
    te.corr_p[r] = u0 * l.counts[static_cast<size_t>(o)];
    te.corr_n[r] = u0 * l.counts[static_cast<size_t>(l.co + o)];
    te.sc[r] = P.esc[o];
    te.sh[r] = P.esh[o];
  }
  te.segs = P.segs + P.seg_start[t];
  te.nsegs = P.seg_start[t + 1] - P.seg_start[t];
  P.k.epi(te, tp, tn);
}

// The whole of unit (n, g) on the calling thread, in its own scratch.
void run_unit(const Plan& P, int64_t n, int64_t g) {
  Scratch& ts = scratch();
  grow(ts.xprep, static_cast<size_t>(P.xprep_words));
  grow(ts.cols, static_cast<size_t>(P.cols_words));
  uint32_t* xprep = ts.xprep.data();
  std::fill(xprep + P.l->cqs * P.plane, xprep + P.xprep_words, 0u);
  for (int64_t cq = 0; cq < P.l->cqs; ++cq) prepare_quad(P, n, g, cq, xprep + cq * P.plane);
  if (!P.wide) im2col_quads(P, 0, P.l->kqs, xprep, ts.cols.data());
  const uint32_t* base = P.wide ? xprep : ts.cols.data();
  for (int64_t item = 0; item < P.items; ++item) run_item(P, n, g, item, base);
}

}  // namespace

void ternary_int8_conv_cpu(const Int8ConvArgs& a, const Int8WeightLayout& l, Int8Isa isa) {
  ternary_int8_conv_check(a);
  const Int8ConvShape& s = a.shape;
  TTQ_CHECK(l.co == s.co && l.cg == s.cg() && l.kh == s.kh && l.kw == s.kw && l.groups == s.groups &&
            l.masks.size() == static_cast<size_t>(l.groups * l.blocks * l.kqs * 2 * kRows) &&
            l.counts.size() == static_cast<size_t>(2 * l.co))
      << "ternary_int8_conv_cpu: layout [" << l.co << ", " << l.cg << ", " << l.kh << ", " << l.kw << "] of "
      << l.groups << " groups for a conv [" << s.co << ", " << s.cg() << ", " << s.kh << ", " << s.kw
      << "] of " << s.groups;
  if (s.n == 0) return;
  if (isa == Int8Isa::Auto) isa = int8_isa_auto();
  TTQ_CHECK(int8_isa_supported(isa)) << "ternary_int8_conv_cpu: this CPU cannot run the "
                                     << int8_isa_name(isa) << " micro-kernel";
  Plan P;
  P.a = &a;
  P.l = &l;
  P.k = pick_kernels(isa, a.out, a.post.relu);
  P.e = make_epi(a);
  P.hp = s.h + 2 * s.pad;
  P.wp = s.w + 2 * s.pad;
  P.plane = P.hp * P.wp;
  P.ho = s.ho();
  P.wo = s.wo();
  P.cg = s.cg();
  P.og = s.og();
  P.wide = s.stride == 1;
  P.q_count = P.wide ? (P.ho - 1) * P.wp + P.wo : P.ho * P.wo;
  P.col_stride = P.q_count + kMaxTile;
  P.tile = 3 * P.k.vec;
  P.tiles = (P.q_count + P.tile - 1) / P.tile;
  P.items = P.tiles * l.blocks;
  // X4 plus slack: the last tile reads up to tile - 1 words past the last column.
  P.xprep_words = l.cqs * P.plane + kMaxTile;
  P.cols_words = P.wide ? 0 : l.kqs * P.col_stride;

  Scratch& sc = scratch();
  sc.koff.resize(static_cast<size_t>(l.kqs));
  for (int64_t cq = 0, kq = 0; cq < l.cqs; ++cq)
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j, ++kq)
        sc.koff[static_cast<size_t>(kq)] = P.wide ? cq * P.plane + i * P.wp + j : kq * P.col_stride;
  sc.segs.clear();
  sc.seg_start.assign(static_cast<size_t>(P.tiles + 1), 0);
  for (int64_t t = 0; t < P.tiles; ++t) {
    sc.seg_start[static_cast<size_t>(t)] = static_cast<int64_t>(sc.segs.size());
    const int64_t q0 = t * P.tile, q1 = std::min(P.q_count, q0 + P.tile);
    for (int64_t q = q0; q < q1;) {
      int64_t len = q1 - q, p = q;
      if (P.wide) {
        const int64_t oh = q / P.wp, ow = q % P.wp;
        if (ow >= P.wo) {
          q = (oh + 1) * P.wp;
          continue;
        }
        len = std::min(len, P.wo - ow);
        p = oh * P.wo + ow;
      }
      sc.segs.push_back({static_cast<int32_t>(q - q0), static_cast<int32_t>(len), p});
      q += len;
    }
  }
  sc.seg_start[static_cast<size_t>(P.tiles)] = static_cast<int64_t>(sc.segs.size());
  sc.esc.assign(static_cast<size_t>(s.co), 1.0f);
  sc.esh.assign(static_cast<size_t>(s.co), 0.0f);
  for (int64_t o = 0; o < s.co; ++o) {
    if (a.post.scale) sc.esc[static_cast<size_t>(o)] = a.post.scale[o];
    if (a.post.shift) sc.esh[static_cast<size_t>(o)] = a.post.shift[o];
  }
  sc.fill.assign(static_cast<size_t>(s.h * s.w), static_cast<int8_t>(a.x_quant.zero_point));
  P.koff = sc.koff.data();
  P.seg_start = sc.seg_start.data();
  P.segs = sc.segs.data();
  P.esc = sc.esc.data();
  P.esh = sc.esh.data();
  P.fill = sc.fill.data();

  const int64_t units = s.n * s.groups;
  const int threads = omp_get_max_threads();
  const bool parallel = s.macs() >= kParallelMacs && threads > 1 && !omp_in_parallel();
  if (parallel && units >= 2 * threads) {
    // Whole units per thread: each X4 stays in its thread's cache, no barrier until the end.
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t u = 0; u < units; ++u) run_unit(P, u / s.groups, u % s.groups);
    return;
  }
  if (!parallel) {
    for (int64_t u = 0; u < units; ++u) run_unit(P, u / s.groups, u % s.groups);
    return;
  }
  // Few units: one at a time, its quads and tiles split over threads.
  grow(sc.xprep, static_cast<size_t>(P.xprep_words));
  grow(sc.cols, static_cast<size_t>(P.cols_words));
  uint32_t* xprep = sc.xprep.data();
  uint32_t* cols = sc.cols.data();
  std::fill(xprep + l.cqs * P.plane, xprep + P.xprep_words, 0u);
  const uint32_t* base = P.wide ? xprep : cols;
  for (int64_t u = 0; u < units; ++u) {
    const int64_t n = u / s.groups, g = u % s.groups;
#pragma omp parallel
    {
#pragma omp for schedule(static)
      for (int64_t cq = 0; cq < l.cqs; ++cq) prepare_quad(P, n, g, cq, xprep + cq * P.plane);
      if (!P.wide) {
#pragma omp for schedule(static)
        for (int64_t kq = 0; kq < l.kqs; ++kq) im2col_quads(P, kq, kq + 1, xprep, cols);
      }
#pragma omp for schedule(dynamic, 2)
      for (int64_t item = 0; item < P.items; ++item) run_item(P, n, g, item, base);
    }
  }
}

// ---- quantization helpers ----------------------------------------------------------------------

Tensor quantize_int8(const Tensor& x_in, Int8Quant quant) {
  TTQ_CHECK(x_in.dtype() == DType::F32 && x_in.device().is_cpu())
      << "quantize_int8: F32 on the CPU expected, got " << x_in.str();
  check_quant(quant, "quantization");
  const Tensor x = x_in.contiguous();
  Tensor q = Tensor::empty(x.shape(), DType::U8);
  const float* src = x.data<float>();
  uint8_t* dst = q.data<uint8_t>();
  const float inv = 1.0f / quant.scale;
  for (int64_t i = 0; i < x.numel(); ++i)
    dst[i] = static_cast<uint8_t>(int8_requant(src[i], inv, quant.zero_point));
  return q;
}

Tensor dequantize_int8(const Tensor& q_in, Int8Quant quant) {
  TTQ_CHECK(q_in.dtype() == DType::U8 && q_in.device().is_cpu())
      << "dequantize_int8: U8 (int8 bytes) on the CPU expected, got " << q_in.str();
  check_quant(quant, "quantization");
  const Tensor q = q_in.contiguous();
  Tensor x = Tensor::empty(q.shape(), DType::F32);
  const uint8_t* src = q.data<uint8_t>();
  float* dst = x.data<float>();
  for (int64_t i = 0; i < q.numel(); ++i)
    dst[i] = quant.scale * static_cast<float>(int32_t{static_cast<int8_t>(src[i])} - quant.zero_point);
  return x;
}

// ---- Int8ConvWeight and the tensor entry ---------------------------------------------------------

Int8ConvWeight Int8ConvWeight::from_packed(const PackedConvWeight& pw, Device device) {
  TTQ_CHECK(pw.defined()) << "Int8ConvWeight::from_packed: undefined packed weight";
  const Tensor codes = pw.codes().to(Device::cpu()).contiguous();
  Int8ConvWeight w;
  w.m_layout =
      relayout_int8(codes.data<uint8_t>(), pw.co(), pw.ci_per_group(), pw.kh(), pw.kw(), pw.groups());
  w.m_wp = pw.wp();
  w.m_wn = pw.wn();
  w.m_device = device;
  if (device.is_cuda()) {
    const std::vector<uint32_t>& m = w.m_layout.masks;
    Tensor bytes = Tensor::empty({static_cast<int64_t>(m.size() * 4)}, DType::U8);
    std::memcpy(bytes.data<uint8_t>(), m.data(), m.size() * 4);
    w.m_masks = bytes.to(device);
    w.m_counts = Tensor::from_vector(w.m_layout.counts, {2 * w.m_layout.co}).to(device);
  }
  return w;
}

int64_t Int8ConvWeight::bytes() const {
  return static_cast<int64_t>(m_layout.masks.size() * 4 + m_layout.counts.size() * 4);
}

Shape ternary_int8_conv_output_shape(const Tensor& xq, const Int8ConvWeight& w, const Int8ConvOptions& o) {
  TTQ_CHECK(w.defined()) << "ternary_int8_conv2d: undefined weight";
  TTQ_CHECK(xq.dim() == 4) << "ternary_int8_conv2d: x must be 4-d, got " << xq.str();
  TTQ_CHECK(o.stride >= 1 && o.pad >= 0)
      << "ternary_int8_conv2d: bad stride " << o.stride << " / padding " << o.pad;
  const int64_t h = xq.size(2), wd = xq.size(3);
  TTQ_CHECK(h + 2 * o.pad >= w.kh() && wd + 2 * o.pad >= w.kw())
      << "ternary_int8_conv2d: kernel " << w.kh() << "x" << w.kw() << " larger than the padded input " << h
      << "x" << wd << " (pad " << o.pad << ")";
  const int64_t ho = (h + 2 * o.pad - w.kh()) / o.stride + 1, wo = (wd + 2 * o.pad - w.kw()) / o.stride + 1;
  if (o.out == Int8Out::Int32) return {2, xq.size(0), w.co(), ho, wo};
  return {xq.size(0), w.co(), ho, wo};
}

namespace {

// One plane of affine_pool_quantize_int8_out, specialised so that the loops have no
// branches (the unpooled loop vectorises). always_inline: the FMA clone below compiles
// it with vfmadd and vroundps instead of calls to fmaf / nearbyintf.
template <bool kAffine, bool kRelu, bool kPool, bool kQuant>
__attribute__((always_inline)) inline void quantize_plane(const float* __restrict src, int64_t w, int64_t ho,
                                                          int64_t wo, float a, float b, float inv, int32_t zp,
                                                          uint8_t* __restrict yq, float* __restrict yf) {
  auto value = [&](float x) {
    float v = kAffine ? std::fma(x, a, b) : x;
    if (kRelu) v = v > 0.0f ? v : 0.0f;
    return v;
  };
  auto store = [&](int64_t o, float v) {
    if constexpr (kQuant) {
      float f = v * inv;
      f = f > -256.0f ? f : -256.0f;
      f = f < 256.0f ? f : 256.0f;
      int32_t q = static_cast<int32_t>(std::nearbyint(f)) + zp;
      q = q < -128 ? -128 : (q > 127 ? 127 : q);
      yq[o] = static_cast<uint8_t>(static_cast<int8_t>(q));
    } else {
      yf[o] = v;
    }
  };
  if constexpr (kPool) {
    for (int64_t oh = 0; oh < ho; ++oh) {
      const float* r0 = src + 2 * oh * w;
      const float* r1 = r0 + w;
      for (int64_t ow = 0; ow < wo; ++ow)
        store(oh * wo + ow,
              ((value(r0[2 * ow]) + value(r0[2 * ow + 1])) + (value(r1[2 * ow]) + value(r1[2 * ow + 1]))) *
                  0.25f);
    }
  } else {
    const int64_t n = ho * wo;
    for (int64_t k = 0; k < n; ++k) store(k, value(src[k]));
  }
}

struct QuantizeJob {
  const float* x;
  int64_t sn, sc, c, h, w, ho, wo;
  const float *scale, *shift;
  bool relu, pool2;
  float inv;
  int32_t zp;
  uint8_t* yq;
  float* yf;
};

template <bool kAffine, bool kRelu, bool kPool, bool kQuant>
__attribute__((always_inline)) inline void quantize_planes(const QuantizeJob& j, int64_t p0, int64_t p1) {
  for (int64_t pl = p0; pl < p1; ++pl) {
    const int64_t s = pl / j.c, ch = pl % j.c;
    const float a = kAffine ? j.scale[ch] : 1.0f, b = kAffine ? j.shift[ch] : 0.0f;
    const int64_t o = pl * j.ho * j.wo;
    quantize_plane<kAffine, kRelu, kPool, kQuant>(j.x + s * j.sn + ch * j.sc, j.w, j.ho, j.wo, a, b, j.inv,
                                                  j.zp, j.yq ? j.yq + o : nullptr, j.yf ? j.yf + o : nullptr);
  }
}

template <bool kFma>
void quantize_dispatch(const QuantizeJob& j, int64_t p0, int64_t p1);

#define TTQ_QUANTIZE_CASES                                                                   \
  const int key = (j.scale ? 8 : 0) | (j.relu ? 4 : 0) | (j.pool2 ? 2 : 0) | (j.yq ? 1 : 0); \
  switch (key) {                                                                             \
    case 0: return quantize_planes<false, false, false, false>(j, p0, p1);                   \
    case 1: return quantize_planes<false, false, false, true>(j, p0, p1);                    \
    case 2: return quantize_planes<false, false, true, false>(j, p0, p1);                    \
    case 3: return quantize_planes<false, false, true, true>(j, p0, p1);                     \
    case 4: return quantize_planes<false, true, false, false>(j, p0, p1);                    \
    case 5: return quantize_planes<false, true, false, true>(j, p0, p1);                     \
    case 6: return quantize_planes<false, true, true, false>(j, p0, p1);                     \
    case 7: return quantize_planes<false, true, true, true>(j, p0, p1);                      \
    case 8: return quantize_planes<true, false, false, false>(j, p0, p1);                    \
    case 9: return quantize_planes<true, false, false, true>(j, p0, p1);                     \
    case 10: return quantize_planes<true, false, true, false>(j, p0, p1);                    \
    case 11: return quantize_planes<true, false, true, true>(j, p0, p1);                     \
    case 12: return quantize_planes<true, true, false, false>(j, p0, p1);                    \
    case 13: return quantize_planes<true, true, false, true>(j, p0, p1);                     \
    case 14: return quantize_planes<true, true, true, false>(j, p0, p1);                     \
    default: return quantize_planes<true, true, true, true>(j, p0, p1);                      \
  }

template <>
void quantize_dispatch<false>(const QuantizeJob& j, int64_t p0, int64_t p1) {
  TTQ_QUANTIZE_CASES
}
// The same code with FMA and AVX2 (fma and round are single instructions; the same bits).
template <>
__attribute__((target("avx2,fma"))) void quantize_dispatch<true>(const QuantizeJob& j, int64_t p0,
                                                                 int64_t p1) {
  TTQ_QUANTIZE_CASES
}
#undef TTQ_QUANTIZE_CASES

}  // namespace

void affine_pool_quantize_int8_out(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu,
                                   bool pool2, const Int8Quant* quant, Tensor& y) {
  TTQ_CHECK(x.dim() == 4 && x.dtype() == DType::F32 && x.device().is_cpu() && detail::dense_planes(x))
      << "affine_pool_quantize_int8_out: x must be F32 [n, c, h, w] on the CPU with dense planes, got "
      << x.str();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t ho = pool2 ? h / 2 : h, wo = pool2 ? w / 2 : w;
  const DType dt = quant ? DType::U8 : DType::F32;
  TTQ_CHECK(y.shape() == Shape({n, c, ho, wo}) && y.dtype() == dt && y.device().is_cpu() && y.is_contiguous())
      << "affine_pool_quantize_int8_out: y must be " << dtype_name(dt) << " " << shape_str({n, c, ho, wo})
      << " contiguous on the CPU, got " << y.str();
  TTQ_CHECK(!pool2 || (ho >= 1 && wo >= 1)) << "affine_pool_quantize_int8_out: input smaller than the pool";
  if (quant) check_quant(*quant, "quantization");
  QuantizeJob j;
  j.scale = detail::opt_ptr(scale, c, Device::cpu(), "affine_pool_quantize_int8_out: scale");
  j.shift = detail::opt_ptr(shift, c, Device::cpu(), "affine_pool_quantize_int8_out: shift");
  TTQ_CHECK((j.scale == nullptr) == (j.shift == nullptr))
      << "affine_pool_quantize_int8_out: scale and shift go together";
  j.x = x.data<float>();
  j.sn = x.stride(0);
  j.sc = x.stride(1);
  j.c = c, j.h = h, j.w = w, j.ho = ho, j.wo = wo;
  j.relu = relu;
  j.pool2 = pool2;
  j.inv = quant ? 1.0f / quant->scale : 1.0f;
  j.zp = quant ? quant->zero_point : 0;
  j.yq = quant ? y.data<uint8_t>() : nullptr;
  j.yf = quant ? nullptr : y.data<float>();
  static const bool fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const int64_t planes = n * c;
  const int threads = omp_get_max_threads();
  if (planes * h * w < (1 << 18) || threads < 2 || omp_in_parallel()) {
    fma ? quantize_dispatch<true>(j, 0, planes) : quantize_dispatch<false>(j, 0, planes);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int t = 0; t < threads; ++t) {
    const int64_t p0 = planes * t / threads, p1 = planes * (t + 1) / threads;
    fma ? quantize_dispatch<true>(j, p0, p1) : quantize_dispatch<false>(j, p0, p1);
  }
}

void ternary_int8_conv2d_out(const Tensor& x, Int8Quant x_quant, const Int8ConvWeight& w,
                             const Int8ConvOptions& o, Tensor& y) {
  TTQ_CHECK(w.defined()) << "ternary_int8_conv2d_out: undefined weight";
  TTQ_CHECK(x.dim() == 4 && x.dtype() == DType::U8 && detail::dense_planes(x))
      << "ternary_int8_conv2d_out: x must be U8 (int8 bytes) [n, c, h, w] with dense planes, got " << x.str();
  TTQ_CHECK(x.size(1) == w.ci()) << "ternary_int8_conv2d_out: x has " << x.size(1) << " channels, the weight "
                                 << w.ci();
  TTQ_CHECK(x.device() == w.device() && y.device() == w.device())
      << "ternary_int8_conv2d_out: x on " << x.device().str() << ", y on " << y.device().str()
      << ", the weight on " << w.device().str();
  TTQ_CHECK(o.out != Int8Out::Int32)
      << "ternary_int8_conv2d_out: Int32 output goes through ternary_int8_conv2d";
  const DType dt = o.out == Int8Out::F32 ? DType::F32 : DType::U8;
  const Shape out = ternary_int8_conv_output_shape(x, w, o);
  TTQ_CHECK(y.shape() == out && y.dtype() == dt && detail::dense_planes(y))
      << "ternary_int8_conv2d_out: y must be " << dtype_name(dt) << " " << shape_str(out)
      << " with dense planes, got " << y.str();
  Int8ConvArgs a;
  a.shape = {x.size(0), x.size(1), x.size(2), x.size(3), w.co(), w.kh(), w.kw(), o.stride, o.pad, w.groups()};
  a.x = reinterpret_cast<const int8_t*>(x.data<uint8_t>());
  a.x_sn = x.stride(0);
  a.x_sc = x.stride(1);
  a.x_quant = x_quant;
  a.wp = w.wp();
  a.wn = w.wn();
  a.out = o.out;
  a.y_sn = y.stride(0);
  a.y_sc = y.stride(1);
  if (o.out == Int8Out::F32) {
    a.y = y.data<float>();
  } else {
    a.yq = reinterpret_cast<int8_t*>(y.data<uint8_t>());
  }
  a.post = {detail::opt_ptr(o.post_scale, w.co(), w.device(), "ternary_int8_conv2d_out: post_scale"),
            detail::opt_ptr(o.post_shift, w.co(), w.device(), "ternary_int8_conv2d_out: post_shift"),
            o.post_relu};
  a.y_quant = o.y_quant;
  if (w.device().is_cpu()) {
    ternary_int8_conv_cpu(a, w.layout(), o.cpu_isa);
    return;
  }
#ifdef TTQ_HAS_CUDA
  ternary_int8_conv_cuda(a, reinterpret_cast<const uint32_t*>(w.device_masks().data<uint8_t>()),
                         w.device_counts().data<int32_t>(),
                         static_cast<cudaStream_t>(cuda::current_stream()));
#else
  TTQ_THROW() << "ternary_int8_conv2d_out: this build has no CUDA backend";
#endif
}

Tensor ternary_int8_conv2d(const Tensor& xq_in, Int8Quant x_quant, const Int8ConvWeight& w,
                           const Int8ConvOptions& o) {
  TTQ_CHECK(w.defined()) << "ternary_int8_conv2d: undefined weight";
  TTQ_CHECK(xq_in.dim() == 4 && xq_in.dtype() == DType::U8)
      << "ternary_int8_conv2d: x must be U8 (int8 bytes) [n, c, h, w], got " << xq_in.str();
  TTQ_CHECK(xq_in.size(1) == w.ci()) << "ternary_int8_conv2d: x has " << xq_in.size(1)
                                     << " channels, the weight " << w.ci();
  TTQ_CHECK(xq_in.device() == w.device())
      << "ternary_int8_conv2d: x on " << xq_in.device().str() << ", the weight on " << w.device().str();
  const Tensor x = detail::dense_planes(xq_in) ? xq_in : xq_in.contiguous();
  const Shape out = ternary_int8_conv_output_shape(x, w, o);
  const DType dt = o.out == Int8Out::Int32 ? DType::I32 : (o.out == Int8Out::F32 ? DType::F32 : DType::U8);
  Tensor y = Tensor::empty(out, dt, w.device());
  Int8ConvArgs a;
  a.shape = {x.size(0), x.size(1), x.size(2), x.size(3), w.co(), w.kh(), w.kw(), o.stride, o.pad, w.groups()};
  a.x = reinterpret_cast<const int8_t*>(x.data<uint8_t>());
  a.x_sn = x.stride(0);
  a.x_sc = x.stride(1);
  a.x_quant = x_quant;
  a.wp = w.wp();
  a.wn = w.wn();
  a.out = o.out;
  const int64_t plane = a.shape.ho() * a.shape.wo();
  a.y_sn = w.co() * plane;
  a.y_sc = plane;
  switch (o.out) {
    case Int8Out::Int32:
      a.p_sum = y.data<int32_t>();
      a.n_sum = a.p_sum + a.shape.n * a.y_sn;
      break;
    case Int8Out::F32: a.y = y.data<float>(); break;
    case Int8Out::Int8: a.yq = reinterpret_cast<int8_t*>(y.data<uint8_t>()); break;
  }
  a.post = {detail::opt_ptr(o.post_scale, w.co(), w.device(), "ternary_int8_conv2d: post_scale"),
            detail::opt_ptr(o.post_shift, w.co(), w.device(), "ternary_int8_conv2d: post_shift"),
            o.post_relu};
  a.y_quant = o.y_quant;
  if (w.device().is_cpu()) {
    ternary_int8_conv_cpu(a, w.layout(), o.cpu_isa);
    return y;
  }
#ifdef TTQ_HAS_CUDA
  ternary_int8_conv_cuda(a, reinterpret_cast<const uint32_t*>(w.device_masks().data<uint8_t>()),
                         w.device_counts().data<int32_t>(),
                         static_cast<cudaStream_t>(cuda::current_stream()));
  return y;
#else
  TTQ_THROW() << "ternary_int8_conv2d: this build has no CUDA backend";
#endif
}

}  // namespace ttq::kernels
