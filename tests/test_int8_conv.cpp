// The W2A8 convolution (kernels/int8_conv.h): the prepared weight layout round-trips to
// the canonical codes; a hand-computed case; every CPU micro-kernel (scalar, AVX2,
// AVX-VNNI, AVX-512 VNNI, those this machine runs) gives the reference's bytes for all
// three outputs (int32 P / N, f32, int8) on random shapes (odd channel counts, strides
// 1-3, paddings 0-2, groups and depthwise, batches 1-3, kernels 1, 3, 5), each output
// poisoned twice with different bytes so that an unwritten element cannot match; sums at
// the int16 bound of the AVX2 path; every thread count and threading scheme; channel
// slices of wider buffers; the f32 output against the float packed conv on the
// dequantized input; bad arguments; the CUDA twin against the reference (skipped
// without a GPU).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/int8_conv.h"
#include "kernels/pack.h"
#include "kernels/packed_conv.h"
#include "kernels/packed_format.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using kernels::Int8ConvArgs;
using kernels::Int8Isa;
using kernels::Int8Out;
using kernels::Int8Quant;

using test::canonical_of;
using test::random_codes;

// Every micro-kernel this machine can run.
std::vector<Int8Isa> cpu_isas() {
  std::vector<Int8Isa> v;
  for (Int8Isa isa : {Int8Isa::Scalar, Int8Isa::Avx2, Int8Isa::AvxVnni, Int8Isa::Avx512Vnni})
    if (kernels::int8_isa_supported(isa)) v.push_back(isa);
  return v;
}

std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

// ---- the layout ------------------------------------------------------------------------------

TEST(Int8Layout, RoundTripsToTheCanonicalCodesAndCountsEachSign) {
  struct L {
    int64_t co, cg, k, groups;
  };
  for (const L& c : {L{1, 1, 1, 1}, L{5, 3, 3, 1}, L{12, 17, 1, 1}, L{8, 4, 3, 2}, L{9, 1, 3, 9},
                     L{6, 33, 5, 3}, L{64, 129, 1, 4}}) {
    SCOPED_TRACE(testing::Message() << "INT8_LAYOUT(co=" << c.co << ", cg=" << c.cg << ", k=" << c.k
                                    << ", groups=" << c.groups << ")");
    const int64_t numel = c.co * c.cg * c.k * c.k;
    const auto codes = random_codes(numel, 0.4, 10 + numel);
    const auto canon = canonical_of(codes);
    const kernels::Int8WeightLayout l = kernels::relayout_int8(canon.data(), c.co, c.cg, c.k, c.k, c.groups);
    EXPECT_EQ(l.cqs, (c.cg + 3) / 4);
    EXPECT_EQ(l.kqs, l.cqs * c.k * c.k);
    EXPECT_EQ(l.blocks, (c.co / c.groups + 3) / 4);
    ASSERT_EQ(static_cast<int64_t>(l.masks.size()), c.groups * l.blocks * l.kqs * 8);
    for (uint32_t m : l.masks)
      for (int e = 0; e < 4; ++e) ASSERT_LE((m >> (8 * e)) & 0xFF, 1u) << "mask bytes are 0 or 1";
    const int64_t k = c.cg * c.k * c.k;
    for (int64_t o = 0; o < c.co; ++o) {
      int32_t pos = 0, neg = 0;
      for (int64_t i = 0; i < k; ++i) {
        pos += codes[o * k + i] == kernels::packed::kPos;
        neg += codes[o * k + i] == kernels::packed::kNeg;
      }
      EXPECT_EQ(l.counts[o], pos) << "row " << o;
      EXPECT_EQ(l.counts[c.co + o], neg) << "row " << o;
    }
    std::vector<uint8_t> back(canon.size(), 0xAB);
    kernels::relayout_int8_to_canonical(l, back.data());
    EXPECT_EQ(back, canon);
  }
  EXPECT_THROW(kernels::relayout_int8(nullptr, 6, 2, 3, 3, 4), Error);
}

// ---- problems: weights, input, quantization, epilogue -------------------------------------------

struct Case {
  int64_t n, ci, h, w, co, k;
  int stride, pad;
  int64_t groups;
};
std::string case_str(const Case& c) {
  return "INT8_CONV(n=" + std::to_string(c.n) + ", ci=" + std::to_string(c.ci) +
         ", hw=" + std::to_string(c.h) + "x" + std::to_string(c.w) + ", co=" + std::to_string(c.co) +
         ", k=" + std::to_string(c.k) + ", stride=" + std::to_string(c.stride) +
         ", pad=" + std::to_string(c.pad) + ", groups=" + std::to_string(c.groups) + ")";
}

const std::vector<Case> kCases = {
    {1, 3, 7, 9, 5, 3, 1, 1, 1},      // Ci = 3 (a first layer)
    {2, 5, 8, 8, 7, 1, 1, 0, 1},      // Ci = 5, 1x1
    {1, 17, 9, 7, 13, 3, 2, 1, 1},    // Ci = 17, stride 2
    {3, 33, 6, 6, 9, 3, 1, 0, 1},     // Ci = 33, no padding
    {1, 129, 5, 5, 6, 1, 2, 0, 1},    // Ci = 129, strided 1x1
    {2, 12, 10, 10, 12, 3, 1, 1, 3},  // 3 groups of 4 channels
    {1, 10, 7, 11, 10, 3, 2, 1, 10},  // depthwise, strided
    {2, 34, 6, 5, 6, 1, 1, 0, 2},     // 2 groups of 17 channels
    {1, 48, 28, 28, 12, 3, 1, 1, 1},  // small DenseNet growth conv
    {1, 20, 7, 7, 9, 1, 1, 0, 1},     // 49 columns: past one AVX-512 tile
    {2, 16, 14, 14, 64, 3, 1, 1, 1},  // SqueezeNet expand3x3
    {1, 7, 6, 6, 5, 5, 1, 2, 1},      // 5x5, pad 2
    {1, 1, 1, 1, 1, 1, 1, 0, 1},      // one tap
    {2, 9, 9, 4, 4, 3, 3, 0, 1},      // stride 3
    {1, 130, 4, 4, 33, 3, 1, 1, 1},   // 297 quads: several AVX2 int16 windows
    {1, 6, 2, 3, 4, 3, 1, 1, 2},      // a 2x3 input smaller than the kernel, padded
};

struct Problem {
  Case c;
  Int8ConvArgs base;  // shape, quantization, scales, epilogue; pointers into this object
  std::vector<uint8_t> canon;
  kernels::Int8WeightLayout layout;
  std::vector<int8_t> x;
  std::vector<float> post_scale, post_shift;
  int64_t out_numel = 0;
};

// Random problem: codes, int8 input over the whole range, a zero point, scales and a
// per-channel affine (when `affine`).
Problem make_problem(const Case& c, uint64_t seed, bool affine, bool relu) {
  Problem p;
  p.c = c;
  Generator g(seed);
  const int64_t cg = c.ci / c.groups;
  p.canon = canonical_of(random_codes(c.co * cg * c.k * c.k, 0.2 + 0.5 * g.uniform(), seed + 1));
  p.layout = kernels::relayout_int8(p.canon.data(), c.co, cg, c.k, c.k, c.groups);
  p.x.resize(static_cast<size_t>(c.n * c.ci * c.h * c.w));
  for (auto& v : p.x) v = static_cast<int8_t>(static_cast<int>(g.below(256)) - 128);
  Int8ConvArgs& a = p.base;
  a.shape = {c.n, c.ci, c.h, c.w, c.co, c.k, c.k, c.stride, c.pad, c.groups};
  a.x_sn = c.ci * c.h * c.w;
  a.x_sc = c.h * c.w;
  a.x_quant = {static_cast<float>(0.01 + 0.05 * g.uniform()), static_cast<int32_t>(g.below(256)) - 128};
  a.wp = static_cast<float>(0.5 + g.uniform());
  a.wn = static_cast<float>(0.5 + g.uniform());
  const int64_t plane = a.shape.ho() * a.shape.wo();
  a.y_sn = c.co * plane;
  a.y_sc = plane;
  p.out_numel = c.n * c.co * plane;
  if (affine) {
    for (int64_t o = 0; o < c.co; ++o) {
      p.post_scale.push_back(static_cast<float>(0.25 + g.uniform()));
      p.post_shift.push_back(static_cast<float>(g.uniform() - 0.5));
    }
  }
  a.post.relu = relu;
  a.y_quant = {static_cast<float>(0.02 + 0.1 * g.uniform()), static_cast<int32_t>(g.below(41)) - 20};
  return p;
}

// Runs the reference (isa Auto here means "the reference") or the CPU twin with `isa`
// into outputs filled with `poison` bytes; returns the output bytes (P then N for Int32).
std::vector<uint8_t> run(const Problem& p, Int8Out out, bool reference, Int8Isa isa, uint8_t poison) {
  Int8ConvArgs a = p.base;
  a.x = p.x.data();
  a.out = out;
  if (!p.post_scale.empty()) {
    a.post.scale = p.post_scale.data();
    a.post.shift = p.post_shift.data();
  }
  const size_t elem = out == Int8Out::Int8 ? 1 : 4;
  const size_t count = static_cast<size_t>(p.out_numel) * (out == Int8Out::Int32 ? 2 : 1);
  std::vector<uint8_t> bytes(count * elem, poison);
  switch (out) {
    case Int8Out::Int32:
      a.p_sum = reinterpret_cast<int32_t*>(bytes.data());
      a.n_sum = a.p_sum + p.out_numel;
      break;
    case Int8Out::F32: a.y = reinterpret_cast<float*>(bytes.data()); break;
    case Int8Out::Int8: a.yq = reinterpret_cast<int8_t*>(bytes.data()); break;
  }
  if (reference) {
    kernels::ternary_int8_conv_ref(a, p.canon.data());
  } else {
    kernels::ternary_int8_conv_cpu(a, p.layout, isa);
  }
  return bytes;
}

// Index and values of the first differing element of two outputs, for the messages.
std::string first_difference(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, Int8Out out) {
  const size_t elem = out == Int8Out::Int8 ? 1 : 4;
  for (size_t i = 0; i + elem <= a.size(); i += elem) {
    if (std::memcmp(a.data() + i, b.data() + i, elem) == 0) continue;
    std::string s = "element " + std::to_string(i / elem) + ": ";
    if (out == Int8Out::Int8) return s + std::to_string(int8_t(a[i])) + " vs " + std::to_string(int8_t(b[i]));
    if (out == Int8Out::Int32) {
      int32_t u, v;
      std::memcpy(&u, a.data() + i, 4);
      std::memcpy(&v, b.data() + i, 4);
      return s + std::to_string(u) + " vs " + std::to_string(v);
    }
    float u, v;
    std::memcpy(&u, a.data() + i, 4);
    std::memcpy(&v, b.data() + i, 4);
    return s + std::to_string(u) + " vs " + std::to_string(v);
  }
  return a.size() == b.size() ? "none" : "sizes differ";
}

// Every ISA (and the reference) twice, with poison bytes 0x7f and 0x80: an element left
// unwritten would equal the poison in both runs, which no output value does.
void expect_all_isas_match_the_reference(const Problem& p, const std::string& what) {
  for (Int8Out out : {Int8Out::Int32, Int8Out::F32, Int8Out::Int8}) {
    const std::vector<uint8_t> ref = run(p, out, true, Int8Isa::Auto, 0x7f);
    ASSERT_EQ(ref, run(p, out, true, Int8Isa::Auto, 0x80))
        << what << ": the reference leaves outputs unwritten";
    for (Int8Isa isa : cpu_isas())
      for (uint8_t poison : {uint8_t{0x7f}, uint8_t{0x80}}) {
        const std::vector<uint8_t> got = run(p, out, false, isa, poison);
        EXPECT_TRUE(got == ref) << what << " " << kernels::int8_isa_name(isa) << " "
                                << kernels::int8_out_name(out) << " poison " << int(poison) << ": "
                                << first_difference(got, ref, out);
      }
  }
}

// ---- a hand-computed case -------------------------------------------------------------------------

TEST(Int8ConvRef, HandComputedCase) {
  // x (1 channel, 3x3) = 1..9 with zero point 1 and scale 0.5: real values 0.5 * (0..8).
  // Weight codes [+1 0 -1; 0 +1 0; -1 0 +1], stride 2, pad 1: outputs centred on the
  // corners, the padding reading q = zx (real 0). With q - zx = [0 1 2; 3 4 5; 6 7 8]:
  //   (0,0): P = 0 + 4, N = 0 (both -1 taps in the padding)      -> P 4,  N 0
  //   (0,1): P = 2 (centre (0,2)), N = 4 (tap (1,1))             -> P 2,  N 4
  //   (1,0): P = 6 (centre (2,0)), N = 4 (tap (1,1))             -> P 6,  N 4
  //   (1,1): P = 4 + 8, N = 0                                    -> P 12, N 0
  // Wp = 2, Wn = 0.5: y = (2 * 0.5) P - (0.5 * 0.5) N = 4, 1, 5, 12; the affine 0.5 y + 1
  // gives 3, 1.5, 3.5, 7; requantized with scale 0.5 and zero point -3: 3, 0, 4, 11.
  const std::vector<uint8_t> codes = {1, 0, 2, 0, 1, 0, 2, 0, 1};
  const std::vector<uint8_t> canon = canonical_of(codes);
  const std::vector<int8_t> x = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const float scale = 0.5f, shift = 1.0f;
  Int8ConvArgs a;
  a.shape = {1, 1, 3, 3, 1, 3, 3, 2, 1, 1};
  a.x = x.data();
  a.x_sn = 9;
  a.x_sc = 9;
  a.x_quant = {0.5f, 1};
  a.wp = 2.0f;
  a.wn = 0.5f;
  a.y_sn = 4;
  a.y_sc = 4;
  std::vector<int32_t> p(4, -1), n(4, -1);
  a.out = Int8Out::Int32;
  a.p_sum = p.data();
  a.n_sum = n.data();
  kernels::ternary_int8_conv_ref(a, canon.data());
  EXPECT_EQ(p, (std::vector<int32_t>{4, 2, 6, 12}));
  EXPECT_EQ(n, (std::vector<int32_t>{0, 4, 4, 0}));
  std::vector<float> y(4, NAN);
  a.out = Int8Out::F32;
  a.y = y.data();
  kernels::ternary_int8_conv_ref(a, canon.data());
  EXPECT_EQ(y, (std::vector<float>{4, 1, 5, 12}));
  a.post.scale = &scale;
  a.post.shift = &shift;
  kernels::ternary_int8_conv_ref(a, canon.data());
  EXPECT_EQ(y, (std::vector<float>{3, 1.5f, 3.5f, 7}));
  std::vector<int8_t> q(4, 0x7f);
  a.out = Int8Out::Int8;
  a.yq = q.data();
  a.y_quant = {0.5f, -3};
  kernels::ternary_int8_conv_ref(a, canon.data());
  EXPECT_EQ(q, (std::vector<int8_t>{3, 0, 4, 11}));
  // Every micro-kernel gives the same.
  const kernels::Int8WeightLayout l = kernels::relayout_int8(canon.data(), 1, 1, 3, 3);
  for (Int8Isa isa : cpu_isas()) {
    std::vector<int8_t> qi(4, 0x7f);
    a.yq = qi.data();
    kernels::ternary_int8_conv_cpu(a, l, isa);
    EXPECT_EQ(qi, q) << kernels::int8_isa_name(isa);
    a.out = Int8Out::Int32;
    std::vector<int32_t> pi(4, -1), ni(4, -1);
    a.p_sum = pi.data();
    a.n_sum = ni.data();
    kernels::ternary_int8_conv_cpu(a, l, isa);
    EXPECT_EQ(pi, p) << kernels::int8_isa_name(isa);
    EXPECT_EQ(ni, n) << kernels::int8_isa_name(isa);
    a.out = Int8Out::Int8;
  }
}

// ---- every micro-kernel against the reference ---------------------------------------------------

TEST(Int8ConvCpu, EveryIsaGivesTheReferenceBytesOnRandomShapes) {
  ASSERT_FALSE(cpu_isas().empty());
  for (size_t i = 0; i < kCases.size(); ++i) {
    for (int variant = 0; variant < 3; ++variant) {
      // 0: no affine, 1: affine, 2: affine + ReLU
      const Problem p = make_problem(kCases[i], 3000 + 10 * i + variant, variant > 0, variant == 2);
      expect_all_isas_match_the_reference(p, case_str(kCases[i]) + " variant " + std::to_string(variant));
    }
  }
}

TEST(Int8ConvCpu, SumsAtTheBoundsOfTheInt16WindowAndOfTheRange) {
  // x = 127 everywhere (u = 255, the largest byte the AVX2 path multiplies) and every
  // code +1, then every code -1, then x = -128 (u = 0): P (or N) = 255 * taps at the
  // centre with zero point -128. 1152 taps = 288 quads = 4.5 AVX2 windows of 64.
  const Case c{1, 128, 5, 5, 8, 3, 1, 1, 1};
  for (int pattern = 0; pattern < 3; ++pattern) {
    Problem p = make_problem(c, 77, false, false);
    const uint8_t code = pattern == 1 ? kernels::packed::kNeg : kernels::packed::kPos;
    p.canon = canonical_of(std::vector<uint8_t>(static_cast<size_t>(c.co * c.ci * 9), code));
    p.layout = kernels::relayout_int8(p.canon.data(), c.co, c.ci, 3, 3, 1);
    std::fill(p.x.begin(), p.x.end(), static_cast<int8_t>(pattern == 2 ? -128 : 127));
    p.base.x_quant = {0.01f, -128};
    const std::vector<uint8_t> ref = run(p, Int8Out::Int32, true, Int8Isa::Auto, 0x7f);
    int32_t centre_p, centre_n;
    const int64_t centre = 2 * 5 + 2, plane = 25;
    std::memcpy(&centre_p, ref.data() + 4 * centre, 4);
    std::memcpy(&centre_n, ref.data() + 4 * (c.co * plane + centre), 4);
    const int32_t full = pattern == 2 ? 0 : 255 * 1152;
    EXPECT_EQ(centre_p, pattern == 1 ? 0 : full) << "pattern " << pattern;
    EXPECT_EQ(centre_n, pattern == 1 ? full : 0) << "pattern " << pattern;
    expect_all_isas_match_the_reference(p, "bounds pattern " + std::to_string(pattern));
  }
}

TEST(Int8ConvCpu, EveryThreadCountAndThreadingSchemeGivesTheSameBytes) {
  // Above the threading threshold: batch 1 and 2 (one unit at a time, its quads and
  // tiles over threads), batch 5 (whole units per thread), grouped, strided (im2col).
  const int threads = omp_get_max_threads();
  const std::vector<Case> big = {{1, 64, 24, 24, 64, 3, 1, 1, 1},
                                 {5, 64, 24, 24, 64, 3, 1, 1, 1},
                                 {2, 64, 20, 20, 64, 3, 1, 1, 4},
                                 {1, 96, 30, 30, 64, 3, 2, 1, 1},
                                 {6, 128, 14, 14, 48, 1, 1, 0, 1}};
  for (size_t i = 0; i < big.size(); ++i) {
    const Problem p = make_problem(big[i], 4000 + i, true, true);
    for (Int8Out out : {Int8Out::Int32, Int8Out::F32}) {
      const std::vector<uint8_t> ref = run(p, out, true, Int8Isa::Auto, 0x7f);
      for (int t : {1, 2, 3}) {
        omp_set_num_threads(t);
        for (Int8Isa isa : cpu_isas()) {
          const std::vector<uint8_t> got = run(p, out, false, isa, 0x80);
          EXPECT_TRUE(got == ref) << case_str(big[i]) << " threads " << t << " "
                                  << kernels::int8_isa_name(isa) << " " << kernels::int8_out_name(out) << ": "
                                  << first_difference(got, ref, out);
        }
      }
      omp_set_num_threads(threads);
    }
  }
}

TEST(Int8ConvCpu, ReadsAndWritesChannelSlicesOfWiderBuffersAndNothingElse) {
  // x: channels [3, 3 + ci) of a buffer of ci + 5; y: channels [2, 2 + co) of co + 4.
  for (const Case& c : {Case{2, 20, 9, 9, 12, 3, 1, 1, 1}, Case{2, 16, 8, 8, 12, 1, 1, 0, 4}}) {
    const Problem p = make_problem(c, 5000 + c.ci, true, false);
    const std::vector<uint8_t> ref = run(p, Int8Out::F32, true, Int8Isa::Auto, 0x7f);
    const int64_t plane_in = c.h * c.w, ci_total = c.ci + 5;
    std::vector<int8_t> xbuf(static_cast<size_t>(c.n * ci_total * plane_in), 0);
    for (int64_t n = 0; n < c.n; ++n)
      std::memcpy(xbuf.data() + (n * ci_total + 3) * plane_in, p.x.data() + n * c.ci * plane_in,
                  static_cast<size_t>(c.ci * plane_in));
    const int64_t plane = p.base.shape.ho() * p.base.shape.wo(), co_total = c.co + 4;
    for (Int8Isa isa : cpu_isas()) {
      std::vector<float> ybuf(static_cast<size_t>(c.n * co_total * plane), 0.5f);
      Int8ConvArgs a = p.base;
      a.x = xbuf.data() + 3 * plane_in;
      a.x_sn = ci_total * plane_in;
      a.x_sc = plane_in;
      a.out = Int8Out::F32;
      a.y = ybuf.data() + 2 * plane;
      a.y_sn = co_total * plane;
      a.y_sc = plane;
      a.post.scale = p.post_scale.data();
      a.post.shift = p.post_shift.data();
      kernels::ternary_int8_conv_cpu(a, p.layout, isa);
      for (int64_t n = 0; n < c.n; ++n)
        for (int64_t ch = 0; ch < co_total; ++ch)
          for (int64_t e = 0; e < plane; ++e) {
            const float got = ybuf[static_cast<size_t>((n * co_total + ch) * plane + e)];
            if (ch < 2 || ch >= 2 + c.co) {
              ASSERT_EQ(got, 0.5f) << "written outside the slice: channel " << ch;
            } else {
              float want;
              std::memcpy(&want, ref.data() + 4 * ((n * c.co + ch - 2) * plane + e), 4);
              ASSERT_EQ(got, want) << case_str(c) << " " << kernels::int8_isa_name(isa);
            }
          }
    }
  }
}

// ---- against the float packed conv ------------------------------------------------------------

TEST(Int8ConvCpu, F32OutputMatchesTheFloatPackedConvOnTheDequantizedInput) {
  for (size_t i = 0; i < kCases.size(); ++i) {
    const Case& c = kCases[i];
    const Problem p = make_problem(c, 6000 + i, true, i % 2 == 0);
    const Tensor codes = Tensor::from_vector(p.canon, {static_cast<int64_t>(p.canon.size())});
    const kernels::PackedConvWeight pw = kernels::PackedConvWeight::from_codes(
        codes, {c.co, c.ci / c.groups, c.k, c.k}, p.base.wp, p.base.wn, Device::cpu(), "w", c.groups);
    const kernels::Int8ConvWeight w = kernels::Int8ConvWeight::from_packed(pw, Device::cpu());
    std::vector<uint8_t> xbytes(p.x.size());
    std::memcpy(xbytes.data(), p.x.data(), p.x.size());
    const Tensor xq = Tensor::from_vector(xbytes, {c.n, c.ci, c.h, c.w});
    const Tensor xf = kernels::dequantize_int8(xq, p.base.x_quant);
    kernels::PackedConvOptions fo;
    fo.stride = c.stride;
    fo.pad = c.pad;
    fo.post_scale = Tensor::from_vector(p.post_scale, {c.co});
    fo.post_shift = Tensor::from_vector(p.post_shift, {c.co});
    fo.post_relu = p.base.post.relu;
    const Tensor expect = kernels::packed_conv2d_ref(xf, pw, fo);
    kernels::Int8ConvOptions o;
    o.stride = c.stride;
    o.pad = c.pad;
    o.post_scale = fo.post_scale;
    o.post_shift = fo.post_shift;
    o.post_relu = fo.post_relu;
    for (Int8Isa isa : cpu_isas()) {
      o.cpu_isa = isa;
      const Tensor y = kernels::ternary_int8_conv2d(xq, p.base.x_quant, w, o);
      ASSERT_EQ(y.shape(), expect.shape());
      EXPECT_LT(test::max_rel_error(y, expect), 1e-5) << case_str(c) << " " << kernels::int8_isa_name(isa);
    }
    // The tensor entry's int8 output is the requantized f32 output.
    o.cpu_isa = Int8Isa::Auto;
    o.out = Int8Out::Int8;
    o.y_quant = p.base.y_quant;
    const Tensor yq = kernels::ternary_int8_conv2d(xq, p.base.x_quant, w, o);
    o.out = Int8Out::F32;
    const Tensor yf = kernels::ternary_int8_conv2d(xq, p.base.x_quant, w, o);
    EXPECT_EQ(yq.to_vector<uint8_t>(), kernels::quantize_int8(yf, p.base.y_quant).to_vector<uint8_t>())
        << case_str(c);
    // The tensor entry's int32 output: [2, n, co, ho, wo], P then N, the reference's.
    o.out = Int8Out::Int32;
    const Tensor sums = kernels::ternary_int8_conv2d(xq, p.base.x_quant, w, o);
    ASSERT_EQ(sums.shape(), Shape({2, expect.size(0), expect.size(1), expect.size(2), expect.size(3)}));
    const std::vector<uint8_t> ref = run(p, Int8Out::Int32, true, Int8Isa::Auto, 0x7f);
    EXPECT_EQ(std::memcmp(sums.data<int32_t>(), ref.data(), ref.size()), 0) << case_str(c);
  }
}

TEST(Int8Quantize, RoundsHalfToEvenAndClamps) {
  const Tensor x = Tensor::from_vector<float>(
      {0.0f, 0.25f, 0.75f, 1.25f, -0.25f, -0.75f, 100.0f, -100.0f, NAN, 63.5f}, {10});
  const Int8Quant q{0.5f, 0};
  const std::vector<uint8_t> b = kernels::quantize_int8(x, q).to_vector<uint8_t>();
  const std::vector<int8_t> expect = {0, 0, 2, 2, 0, -2, 127, -128, -128, 127};
  for (size_t i = 0; i < expect.size(); ++i)
    EXPECT_EQ(static_cast<int8_t>(b[i]), expect[i]) << "element " << i;
  // With a zero point, and back: dequantize(quantize(v)) = v on the grid.
  const Int8Quant z{0.25f, -128};
  const Tensor grid = Tensor::from_vector<float>({0.0f, 0.25f, 63.75f, 10.0f}, {4});
  const Tensor qz = kernels::quantize_int8(grid, z);
  EXPECT_EQ(static_cast<int8_t>(qz.to_vector<uint8_t>()[0]), -128);
  EXPECT_EQ(static_cast<int8_t>(qz.to_vector<uint8_t>()[2]), 127);
  EXPECT_EQ(kernels::dequantize_int8(qz, z).to_vector<float>(), grid.to_vector<float>());
}

// ---- bad arguments ---------------------------------------------------------------------------------

TEST(Int8ConvArgs, BadArgumentsAreRejectedWithClearErrors) {
  const Case c{1, 8, 6, 6, 4, 3, 1, 1, 2};
  const Problem p = make_problem(c, 7000, false, false);
  const Tensor codes = Tensor::from_vector(p.canon, {static_cast<int64_t>(p.canon.size())});
  const kernels::PackedConvWeight pw =
      kernels::PackedConvWeight::from_codes(codes, {4, 4, 3, 3}, 1.0f, 1.0f, Device::cpu(), "w", 2);
  const kernels::Int8ConvWeight w = kernels::Int8ConvWeight::from_packed(pw, Device::cpu());
  EXPECT_EQ(w.ci(), 8);
  EXPECT_EQ(w.groups(), 2);
  const Tensor xq = Tensor::zeros({1, 8, 6, 6}, DType::U8);
  kernels::Int8ConvOptions o;
  o.pad = 1;
  EXPECT_EQ(kernels::ternary_int8_conv2d(xq, {0.1f, 0}, w, o).shape(), Shape({1, 4, 6, 6}));

  EXPECT_NE(error_message([&] {
              kernels::ternary_int8_conv2d(Tensor::zeros({1, 8, 6, 6}), {0.1f, 0}, w, o);
            }).find("U8 (int8 bytes)"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              kernels::ternary_int8_conv2d(Tensor::zeros({1, 6, 6, 6}, DType::U8), {0.1f, 0}, w, o);
            }).find("x has 6 channels, the weight 8"),
            std::string::npos);
  EXPECT_INPUT_ERROR_MENTIONS(kernels::ternary_int8_conv2d(xq, {0.0f, 0}, w, o), "input scale");
  EXPECT_INPUT_ERROR_MENTIONS(kernels::ternary_int8_conv2d(xq, {NAN, 0}, w, o), "input scale");
  EXPECT_INPUT_ERROR_MENTIONS(kernels::ternary_int8_conv2d(xq, {0.1f, 200}, w, o), "zero point 200");
  kernels::Int8ConvOptions bad = o;
  bad.out = Int8Out::Int8;
  bad.y_quant = {-1.0f, 0};
  EXPECT_INPUT_ERROR_MENTIONS(kernels::ternary_int8_conv2d(xq, {0.1f, 0}, w, bad), "output scale");
  bad = o;
  bad.pad = 0;
  bad.stride = 0;
  EXPECT_NE(error_message([&] {
              kernels::ternary_int8_conv2d(xq, {0.1f, 0}, w, bad);
            }).find("bad stride 0"),
            std::string::npos);
  bad = o;
  bad.pad = 0;
  EXPECT_NE(error_message([&] {
              kernels::ternary_int8_conv2d(Tensor::zeros({1, 8, 2, 2}, DType::U8), {0.1f, 0}, w, bad);
            }).find("larger than the padded input"),
            std::string::npos);
  bad = o;
  bad.post_scale = Tensor::ones({5});
  EXPECT_NE(error_message([&] {
              kernels::ternary_int8_conv2d(xq, {0.1f, 0}, w, bad);
            }).find("post_scale"),
            std::string::npos);
  EXPECT_THROW(kernels::quantize_int8(Tensor::zeros({3}), {0.0f, 0}), InputError);
  EXPECT_THROW(kernels::quantize_int8(Tensor::zeros({3}, DType::U8), {1.0f, 0}), Error);

  // Raw arguments.
  float y[144];
  Int8ConvArgs a = p.base;
  a.x = p.x.data();
  a.out = Int8Out::F32;
  a.y = y;
  EXPECT_NO_THROW(kernels::ternary_int8_conv_cpu(a, p.layout, Int8Isa::Scalar));
  Int8ConvArgs empty = a;  // an empty batch writes nothing
  empty.shape.n = 0;
  std::fill(y, y + 144, 0.5f);
  for (Int8Isa isa : cpu_isas()) kernels::ternary_int8_conv_cpu(empty, p.layout, isa);
  kernels::ternary_int8_conv_ref(empty, p.canon.data());
  EXPECT_TRUE(std::all_of(y, y + 144, [](float v) { return v == 0.5f; }));
  Int8ConvArgs b = a;
  b.x = nullptr;
  EXPECT_NE(error_message([&] { kernels::ternary_int8_conv_cpu(b, p.layout); }).find("null x"),
            std::string::npos);
  b = a;
  b.y = nullptr;
  EXPECT_NE(
      error_message([&] { kernels::ternary_int8_conv_ref(b, p.canon.data()); }).find("f32 output needs y"),
      std::string::npos);
  b = a;
  b.shape.groups = 3;
  EXPECT_NE(error_message([&] { kernels::ternary_int8_conv_cpu(b, p.layout); }).find("groups do not divide"),
            std::string::npos);
  b = a;
  b.shape.groups = 1;
  EXPECT_NE(error_message([&] { kernels::ternary_int8_conv_cpu(b, p.layout); }).find("layout"),
            std::string::npos);
  b = a;
  b.shape.ci = b.shape.groups * 932068;  // 8.4 M taps per output
  EXPECT_NE(error_message([&] { kernels::ternary_int8_conv_ref(b, p.canon.data()); }).find("exact up to"),
            std::string::npos);
  b = a;
  b.wp = INFINITY;
  EXPECT_INPUT_ERROR_MENTIONS(kernels::ternary_int8_conv_cpu(b, p.layout), "weight scales");
  EXPECT_TRUE(kernels::int8_isa_supported(Int8Isa::Scalar));
  EXPECT_TRUE(kernels::int8_isa_supported(kernels::int8_isa_auto()));
  for (Int8Isa isa : {Int8Isa::Avx2, Int8Isa::AvxVnni, Int8Isa::Avx512Vnni}) {
    if (kernels::int8_isa_supported(isa)) continue;
    EXPECT_NE(error_message([&] { kernels::ternary_int8_conv_cpu(a, p.layout, isa); }).find("cannot run"),
              std::string::npos);
  }
}

// ---- the CUDA twin -------------------------------------------------------------------------------

#ifdef TTQ_HAS_CUDA
TEST(Int8ConvCuda, GivesTheReferenceBytes) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
  const Device gpu = Device::cuda(0);
  for (size_t i = 0; i < kCases.size(); ++i) {
    const Case& c = kCases[i];
    for (int variant = 0; variant < 2; ++variant) {
      const Problem p = make_problem(c, 8000 + 10 * i + variant, variant == 1, variant == 1);
      const Tensor codes = Tensor::from_vector(p.canon, {static_cast<int64_t>(p.canon.size())});
      const kernels::PackedConvWeight pw = kernels::PackedConvWeight::from_codes(
          codes, {c.co, c.ci / c.groups, c.k, c.k}, p.base.wp, p.base.wn, Device::cpu(), "w", c.groups);
      const kernels::Int8ConvWeight w = kernels::Int8ConvWeight::from_packed(pw, gpu);
      std::vector<uint8_t> xbytes(p.x.size());
      std::memcpy(xbytes.data(), p.x.data(), p.x.size());
      const Tensor xq = Tensor::from_vector(xbytes, {c.n, c.ci, c.h, c.w}, gpu);
      kernels::Int8ConvOptions o;
      o.stride = c.stride;
      o.pad = c.pad;
      o.post_relu = p.base.post.relu;
      o.y_quant = p.base.y_quant;
      if (!p.post_scale.empty()) {
        o.post_scale = Tensor::from_vector(p.post_scale, {c.co}, gpu);
        o.post_shift = Tensor::from_vector(p.post_shift, {c.co}, gpu);
      }
      for (Int8Out out : {Int8Out::Int32, Int8Out::F32, Int8Out::Int8}) {
        const std::vector<uint8_t> ref = run(p, out, true, Int8Isa::Auto, 0x7f);
        // The raw entry into poisoned device outputs (NaN / 0xAB bytes, then 0x7f bytes).
        for (int fill = 0; fill < 2; ++fill) {
          const DType dt =
              out == Int8Out::Int32 ? DType::I32 : (out == Int8Out::F32 ? DType::F32 : DType::U8);
          Tensor y = Tensor::empty({static_cast<int64_t>(ref.size() / dtype_size(dt))}, dt, gpu);
          if (fill == 0) {
            test::poison(y);
          } else {
            Tensor h = Tensor::empty(y.shape(), dt);
            std::memset(h.raw_data(), 0x7f, h.nbytes());
            y.copy_(h);
          }
          Int8ConvArgs a = p.base;
          a.x = reinterpret_cast<const int8_t*>(xq.data<uint8_t>());
          a.out = out;
          if (out == Int8Out::Int32) {
            a.p_sum = y.data<int32_t>();
            a.n_sum = a.p_sum + p.out_numel;
          } else if (out == Int8Out::F32) {
            a.y = y.data<float>();
          } else {
            a.yq = reinterpret_cast<int8_t*>(y.data<uint8_t>());
          }
          a.post.scale = o.post_scale.defined() ? o.post_scale.data<float>() : nullptr;
          a.post.shift = o.post_shift.defined() ? o.post_shift.data<float>() : nullptr;
          kernels::ternary_int8_conv_cuda(
              a, reinterpret_cast<const uint32_t*>(w.device_masks().data<uint8_t>()),
              w.device_counts().data<int32_t>(), static_cast<cudaStream_t>(cuda::current_stream()));
          const Tensor back = y.to(Device::cpu());
          std::vector<uint8_t> got(ref.size());
          std::memcpy(got.data(), back.raw_data(), ref.size());
          EXPECT_TRUE(got == ref) << case_str(c) << " " << kernels::int8_out_name(out) << " fill " << fill
                                  << ": " << first_difference(got, ref, out);
        }
        // The tensor entry.
        o.out = out;
        const Tensor t = kernels::ternary_int8_conv2d(xq, p.base.x_quant, w, o).to(Device::cpu());
        ASSERT_EQ(t.nbytes(), ref.size());
        EXPECT_EQ(std::memcmp(t.raw_data(), ref.data(), ref.size()), 0) << case_str(c) << " tensor entry";
      }
    }
  }
}

#else
TEST(Int8ConvCuda, GivesTheReferenceBytes) { GTEST_SKIP() << "no CUDA device (built without CUDA)"; }
#endif

}  // namespace
}  // namespace ttq
