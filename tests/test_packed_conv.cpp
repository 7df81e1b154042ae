// The packed 2-bit convolution (kernels/packed_conv.h): the load-time re-layouts
// round-trip exactly; the CPU twin (AVX2 and scalar) matches the dense conv
// (ops::conv2d on the decoded weights) and packed_conv_ref on random shapes, strides,
// paddings and odd channel counts with poisoned outputs; an exact case (small
// integers, codes in {-1, 0, +1}, power-of-two scales) is bit-identical on every path;
// the fused prologue / epilogue / residual equal the unfused ops; batch N equals N
// batches of 1; a channel slice of a wider buffer is written and nothing else; grouped
// and depthwise convs (per-group layouts round-trip; against the dense grouped conv, the
// reference and the groups run as separate packed convs, on every thread count); the
// CUDA paths (tensor cores, CUDA cores) match the CPU twin (skipped without a GPU).
#include <omp.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "engine/ops/ops.h"
#include "kernels/pack.h"
#include "kernels/packed_conv.h"
#include "kernels/packed_format.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using kernels::CpuIsa;
using kernels::PackedConvOptions;
using kernels::PackedConvWeight;

using test::canonical_of;
using test::random_codes;

PackedConvWeight random_weight(const Shape& shape, double zero_frac, float wp, float wn, uint64_t seed,
                               Device dev = Device::cpu(), int64_t groups = 1) {
  const auto packed = canonical_of(random_codes(shape_numel(shape), zero_frac, seed));
  Tensor t = Tensor::from_vector(packed, {static_cast<int64_t>(packed.size())});
  return PackedConvWeight::from_codes(t, shape, wp, wn, dev, "packed weight", groups);
}

// Every micro-kernel this machine can run.
std::vector<CpuIsa> cpu_isas() {
  std::vector<CpuIsa> v;
  for (CpuIsa isa : {CpuIsa::Scalar, CpuIsa::Avx2, CpuIsa::Avx512})
    if (kernels::cpu_isa_supported(isa)) v.push_back(isa);
  return v;
}

// ---- re-layouts ----------------------------------------------------------------------

TEST(PackedRelayout, CpuLayoutRoundTripsAndSkipsOnlyZeroColumns) {
  for (int64_t co : {1, 3, 4, 5, 12, 48, 67}) {
    for (int64_t k : {1, 3, 9, 63, 64, 65, 432, 1000}) {
      for (double zf : {0.0, 0.4, 0.9, 1.0}) {
        SCOPED_TRACE(testing::Message() << "RELAYOUT_CPU(co=" << co << ", k=" << k << ", zero=" << zf << ")");
        const auto codes = random_codes(co * k, zf, 100 + co * 7 + k);
        const auto canon = canonical_of(codes);
        const kernels::CpuCodeLayout l = kernels::relayout_cpu(canon.data(), co, k);
        ASSERT_EQ(l.blocks, (co + 3) / 4);
        // Exactly the columns with a non-zero code among the block's rows have a byte.
        int64_t expect_bytes = 0;
        for (int64_t b = 0; b < l.blocks; ++b)
          for (int64_t kk = 0; kk < k; ++kk) {
            bool any = false;
            for (int64_t r = 4 * b; r < std::min(co, 4 * b + 4); ++r) any = any || codes[r * k + kk] != 0;
            expect_bytes += any;
            ASSERT_EQ(any, ((l.mask[b * l.mask_words + kk / 64] >> (kk % 64)) & 1) != 0)
                << "block " << b << " k " << kk;
          }
        EXPECT_EQ(l.start[l.blocks], expect_bytes);
        EXPECT_EQ(static_cast<int64_t>(l.codes.size()), expect_bytes + 1);  // + the padding byte
        std::vector<uint8_t> back(canon.size(), 0xAB);
        kernels::relayout_cpu_to_canonical(l, back.data());
        EXPECT_EQ(back, canon);
      }
    }
  }
}

TEST(PackedRelayout, MmaLayoutRoundTripsAndMatchesTheFragmentMap) {
  for (int64_t co : {1, 12, 16, 17, 48, 200}) {
    for (int64_t k : {1, 15, 16, 17, 48, 432}) {
      SCOPED_TRACE(testing::Message() << "RELAYOUT_MMA(co=" << co << ", k=" << k << ")");
      const auto codes = random_codes(co * k, 0.3, 200 + co * 11 + k);
      const auto canon = canonical_of(codes);
      const kernels::MmaCodeLayout l = kernels::relayout_mma(canon.data(), co, k);
      ASSERT_EQ(l.mtiles, (co + 15) / 16);
      ASSERT_EQ(l.ksteps, (k + 15) / 16);
      // mma.m16n8k16's A fragment: a0 (g, 2t..), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..).
      for (int64_t mt = 0; mt < l.mtiles; ++mt)
        for (int64_t ks = 0; ks < l.ksteps; ++ks)
          for (int lane = 0; lane < 32; ++lane) {
            const unsigned w = l.words[(mt * l.ksteps + ks) * 32 + lane];
            const int64_t g = lane / 4, t = lane % 4;
            const int64_t rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
            for (int reg = 0; reg < 4; ++reg)
              for (int e = 0; e < 2; ++e) {
                const int64_t row = mt * 16 + rows[reg], col = ks * 16 + cols[reg] + e;
                const unsigned expect = row < co && col < k ? codes[row * k + col] : 0u;
                ASSERT_EQ((w >> (4 * reg + 2 * e)) & 3u, expect)
                    << "tile " << mt << "," << ks << " lane " << lane;
              }
          }
      std::vector<uint8_t> back(canon.size(), 0xAB);
      kernels::relayout_mma_to_canonical(l, back.data());
      EXPECT_EQ(back, canon);
    }
  }
}

TEST(PackedRelayout, LutHoldsTheFourWeightsOfEachByte) {
  const std::vector<float> lut = kernels::cpu_code_lut(0.75f, 1.25f);
  ASSERT_EQ(lut.size(), 1024u);
  const uint8_t b = kernels::packed::pack4(1, 2, 0, 1);
  EXPECT_EQ(lut[b * 4 + 0], 0.75f);
  EXPECT_EQ(lut[b * 4 + 1], -1.25f);
  EXPECT_EQ(lut[b * 4 + 2], 0.0f);
  EXPECT_EQ(lut[b * 4 + 3], 0.75f);
}

TEST(PackedRelayout, GroupLayoutsRoundTripToTheirRowsOfTheCanonicalMatrix) {
  for (int64_t groups : {1, 2, 3, 8}) {
    for (int64_t og : {1, 3, 4, 17}) {
      for (int64_t k : {1, 9, 18, 65}) {
        const int64_t co = groups * og;
        SCOPED_TRACE(testing::Message()
                     << "RELAYOUT_GROUPS(co=" << co << ", k=" << k << ", groups=" << groups << ")");
        const auto codes = random_codes(co * k, 0.4, 300 + co * 13 + k);
        const auto canon = canonical_of(codes);
        // CPU: one layout per group, each back to the group's rows.
        const std::vector<kernels::CpuCodeLayout> ls =
            kernels::relayout_cpu_groups(canon.data(), co, k, groups);
        ASSERT_EQ(static_cast<int64_t>(ls.size()), groups);
        for (int64_t g = 0; g < groups; ++g) {
          const std::vector<uint8_t> rows(codes.begin() + g * og * k, codes.begin() + (g + 1) * og * k);
          EXPECT_EQ(kernels::canonical_rows(canon.data(), g * og, og, k), canonical_of(rows))
              << "group " << g;
          ASSERT_EQ(ls[g].co, og);
          ASSERT_EQ(ls[g].k, k);
          std::vector<uint8_t> back(static_cast<size_t>(kernels::packed::packed_bytes(og * k)), 0xAB);
          kernels::relayout_cpu_to_canonical(ls[g], back.data());
          EXPECT_EQ(back, canonical_of(rows)) << "group " << g;
        }
        // Tensor cores: group g's fragments are relayout_mma of its rows, one group after another.
        const kernels::MmaCodeLayout m = kernels::relayout_mma(canon.data(), co, k, groups);
        ASSERT_EQ(m.mtiles, (og + 15) / 16);
        ASSERT_EQ(static_cast<int64_t>(m.words.size()), groups * m.group_words());
        for (int64_t g = 0; g < groups; ++g) {
          const auto rows = kernels::canonical_rows(canon.data(), g * og, og, k);
          const kernels::MmaCodeLayout one = kernels::relayout_mma(rows.data(), og, k);
          EXPECT_TRUE(std::equal(one.words.begin(), one.words.end(), m.words.begin() + g * m.group_words()))
              << "group " << g;
        }
        std::vector<uint8_t> back(canon.size(), 0xAB);
        kernels::relayout_mma_to_canonical(m, back.data());
        EXPECT_EQ(back, canon);
      }
    }
  }
  EXPECT_THROW(kernels::relayout_cpu_groups(nullptr, 6, 9, 4), Error);
  EXPECT_THROW(kernels::relayout_mma(nullptr, 6, 9, 4), Error);
}

TEST(PackedWeight, RejectsInvalidCodesAndBadSizes) {
  std::vector<uint8_t> bytes = {0x00, 0x0C};  // element 5 has code 3
  EXPECT_THROW(
      PackedConvWeight::from_codes(Tensor::from_vector(bytes, {2}), {2, 3, 1, 1}, 1, 1, Device::cpu()),
      InputError);
  bytes = {0x00, 0x40};  // element 7 is padding (n = 6) but non-zero
  EXPECT_THROW(
      PackedConvWeight::from_codes(Tensor::from_vector(bytes, {2}), {2, 3, 1, 1}, 1, 1, Device::cpu()),
      InputError);
  bytes = {0x00};
  EXPECT_THROW(
      PackedConvWeight::from_codes(Tensor::from_vector(bytes, {1}), {2, 3, 1, 1}, 1, 1, Device::cpu()),
      InputError);
  Tensor four = Tensor::from_vector<float>({1, 0, -1, 2}, {1, 4, 1, 1});
  EXPECT_THROW(PackedConvWeight::from_dense(four, Device::cpu()), InputError);
  Tensor three = Tensor::from_vector<float>({0.5f, 0, -2, 0.5f}, {1, 4, 1, 1});
  PackedConvWeight w = PackedConvWeight::from_dense(three, Device::cpu());
  EXPECT_EQ(w.wp(), 0.5f);
  EXPECT_EQ(w.wn(), 2.0f);
  EXPECT_EQ(w.decode().to_vector<float>(), three.to_vector<float>());
  // Groups must divide the output channels; the input channels of the conv are
  // weight_shape[1] * groups.
  const Tensor six = Tensor::from_vector<float>({1, 0, -1, 1, 1, 0}, {6, 1, 1, 1});
  EXPECT_THROW(PackedConvWeight::from_dense(six, Device::cpu(), "w", 4), InputError);
  const PackedConvWeight dw = PackedConvWeight::from_dense(six, Device::cpu(), "w", 3);
  EXPECT_EQ(dw.groups(), 3);
  EXPECT_EQ(dw.ci(), 3);
  EXPECT_EQ(dw.ci_per_group(), 1);
  EXPECT_EQ(dw.cpu_layouts().size(), 3u);
  EXPECT_EQ(dw.weight_shape(), Shape({6, 1, 1, 1}));
  EXPECT_EQ(dw.decode().to_vector<float>(), six.to_vector<float>());
  EXPECT_THROW(kernels::packed_conv2d(Tensor::zeros({1, 6, 2, 2}), dw), Error);  // 3 channels expected
}

// ---- the CPU twin against the dense conv --------------------------------------------------

struct ConvCase {
  int64_t n, ci, h, w, co, k;
  int stride, pad;
};
std::string case_str(const ConvCase& c) {
  return "PACKED_CONV(n=" + std::to_string(c.n) + ", ci=" + std::to_string(c.ci) +
         ", hw=" + std::to_string(c.h) + "x" + std::to_string(c.w) + ", co=" + std::to_string(c.co) +
         ", k=" + std::to_string(c.k) + ", stride=" + std::to_string(c.stride) +
         ", pad=" + std::to_string(c.pad) + ")";
}
const std::vector<ConvCase> kCases = {
    {1, 1, 1, 1, 1, 1, 1, 0},
    {2, 3, 7, 5, 5, 1, 1, 0},
    {1, 7, 9, 11, 13, 3, 1, 1},
    {3, 5, 8, 8, 4, 3, 2, 1},
    {2, 16, 6, 7, 9, 3, 1, 0},
    {1, 48, 28, 28, 12, 3, 1, 1},
    {2, 67, 14, 14, 48, 1, 1, 0},
    {1, 9, 10, 10, 7, 5, 3, 2},
    {2, 33, 7, 7, 31, 3, 1, 2},
    {1, 130, 5, 9, 3, 1, 2, 0},
    {4, 3, 13, 3, 6, 3, 1, 1},
    {1, 64, 7, 7, 200, 1, 1, 0},
    // 48, 49 and 50 columns, and 61 wide columns: the edges of both tile widths
    {2, 17, 8, 6, 5, 1, 1, 0},
    {1, 20, 7, 7, 9, 1, 1, 0},
    {1, 20, 5, 10, 9, 1, 1, 0},
    {1, 12, 7, 7, 6, 3, 1, 1},
};

// The packed conv on every CPU ISA into poisoned outputs: each within 1e-5 of the
// dense conv and of the reference; AVX2 and AVX-512 issue the same FMAs per output in
// the same order, so they agree bit for bit.
void expect_every_isa_matches(const Tensor& x, const PackedConvWeight& w, PackedConvOptions o,
                              const Tensor& dense, const Tensor& ref, const std::string& what) {
  std::map<CpuIsa, Tensor> out;
  for (CpuIsa isa : cpu_isas()) {
    o.cpu_isa = isa;
    Tensor y = Tensor::empty(dense.shape());
    test::poison(y);
    kernels::packed_conv2d_out(x, w, o, y);
    EXPECT_TRUE(test::all_finite(y)) << what << " " << kernels::cpu_isa_name(isa) << ": unwritten outputs";
    EXPECT_LT(test::max_rel_error(y, dense), 1e-5) << what << " " << kernels::cpu_isa_name(isa);
    EXPECT_LT(test::max_rel_error(y, ref), 1e-5) << what << " " << kernels::cpu_isa_name(isa);
    out[isa] = y;
  }
  if (out.count(CpuIsa::Avx2) && out.count(CpuIsa::Avx512)) {
    EXPECT_EQ(test::max_abs_diff(out[CpuIsa::Avx2], out[CpuIsa::Avx512]), 0.0) << what;
  }
}

TEST(PackedConvCpu, MatchesDenseConvAndReferenceOnRandomShapes) {
  for (size_t ci = 0; ci < kCases.size(); ++ci) {
    const ConvCase& c = kCases[ci];
    const PackedConvWeight w = random_weight({c.co, c.ci, c.k, c.k}, 0.4, 0.93f, 1.07f, 300 + ci);
    const Tensor x = test::rand({c.n, c.ci, c.h, c.w}, 400 + ci);
    PackedConvOptions o;
    o.stride = c.stride;
    o.pad = c.pad;
    const Tensor dense = ops::conv2d(x, w.decode(), Tensor(), c.stride, c.pad);
    const Tensor ref = kernels::packed_conv2d_ref(x, w, o);
    EXPECT_LT(test::max_rel_error(ref, dense), 1e-6) << case_str(c) << " reference vs ops::conv2d";
    expect_every_isa_matches(x, w, o, dense, ref, case_str(c));
  }
}

TEST(PackedConvCpu, SparseAndEmptyWeights) {
  const ConvCase c{2, 24, 9, 9, 10, 3, 1, 1};
  const Tensor x = test::rand({c.n, c.ci, c.h, c.w}, 17);
  for (double zf : {0.0, 0.92, 1.0}) {
    const PackedConvWeight w = random_weight({c.co, c.ci, c.k, c.k}, zf, 1.5f, 0.5f, 18);
    PackedConvOptions o;
    o.pad = 1;
    const Tensor dense = ops::conv2d(x, w.decode(), Tensor(), 1, 1);
    for (CpuIsa isa : cpu_isas()) {
      o.cpu_isa = isa;
      Tensor y = Tensor::empty(dense.shape());
      test::poison(y);
      kernels::packed_conv2d_out(x, w, o, y);
      EXPECT_TRUE(test::all_finite(y)) << "zero fraction " << zf;
      double scale = 1;
      for (float v : dense.to_vector<float>()) scale = std::max(scale, double(std::fabs(v)));
      EXPECT_LE(test::max_abs_diff(y, dense), 1e-5 * scale) << "zero fraction " << zf;
    }
  }
}

// ---- exact arithmetic: bit-identical on every path -------------------------------------------

// Integers in [-4, 4]; every product and partial sum is an exact float.
Tensor small_integers(const Shape& shape, uint64_t seed, Device dev = Device::cpu()) {
  Generator g(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& e : v) e = static_cast<float>(static_cast<int>(g.below(9)) - 4);
  return Tensor::from_vector(v, shape, dev);
}

struct Fusion {
  Tensor pre_scale, pre_shift, post_scale, post_shift;
};
Fusion power_of_two_affines(int64_t ci, int64_t co, uint64_t seed, Device dev = Device::cpu()) {
  Generator g(seed);
  auto pick = [&](int64_t n, std::vector<float> choices) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& e : v) e = choices[g.below(choices.size())];
    return Tensor::from_vector(v, {n}, dev);
  };
  return {pick(ci, {0.5f, 1.0f, 2.0f, -1.0f}), pick(ci, {-1.0f, 0.0f, 1.0f, 3.0f}),
          pick(co, {0.25f, 1.0f, 2.0f}), pick(co, {-2.0f, 0.0f, 0.5f})};
}

TEST(PackedConvCpu, ExactCaseIsBitIdenticalToTheReference) {
  for (size_t ci = 0; ci < kCases.size(); ++ci) {
    const ConvCase& c = kCases[ci];
    for (bool fused : {false, true}) {
      const PackedConvWeight w = random_weight({c.co, c.ci, c.k, c.k}, 0.3, 0.5f, 2.0f, 500 + ci);
      const Tensor x = small_integers({c.n, c.ci, c.h, c.w}, 600 + ci);
      PackedConvOptions o;
      o.stride = c.stride;
      o.pad = c.pad;
      if (fused) {
        Fusion f = power_of_two_affines(c.ci, c.co, 700 + ci);
        o.pre_scale = f.pre_scale;
        o.pre_shift = f.pre_shift;
        o.pre_relu = true;
        o.post_scale = f.post_scale;
        o.post_shift = f.post_shift;
        o.post_relu = ci % 2 == 0;
      }
      const Tensor ref = kernels::packed_conv2d_ref(x, w, o);
      if (!fused) {
        EXPECT_EQ(test::max_abs_diff(ops::conv2d(x, w.decode(), Tensor(), c.stride, c.pad), ref), 0.0)
            << case_str(c);
      }
      for (CpuIsa isa : cpu_isas()) {
        o.cpu_isa = isa;
        Tensor y = Tensor::empty(ref.shape());
        test::poison(y);
        kernels::packed_conv2d_out(x, w, o, y);
        EXPECT_EQ(test::max_abs_diff(y, ref), 0.0)
            << case_str(c) << " fused=" << fused << " " << kernels::cpu_isa_name(isa);
      }
    }
  }
}

// ---- fused vs unfused ---------------------------------------------------------------------

// relu?(x * scale[c] + shift[c]) over dim 1, by plain loops.
Tensor affine_loops(const Tensor& x_in, const Tensor& scale, const Tensor& shift, bool relu) {
  Tensor x = x_in.to(Device::cpu()).contiguous().clone();
  const auto s = scale.to_vector<float>(), b = shift.to_vector<float>();
  float* p = x.data<float>();
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j)
      for (int64_t e = 0; e < hw; ++e) {
        float& v = p[(i * c + j) * hw + e];
        v = v * s[j] + b[j];
        if (relu) v = std::max(v, 0.0f);
      }
  return x;
}

TEST(PackedConvCpu, FusedPrologueEpilogueAndResidualEqualTheUnfusedOps) {
  struct FusedCase {
    ConvCase c;
    bool pool2;
  };
  const std::vector<FusedCase> cases = {{{2, 20, 10, 10, 9, 1, 1, 0}, true},   // a transition
                                        {{1, 13, 9, 7, 6, 1, 1, 0}, true},     // odd size: floor pooling
                                        {{2, 11, 8, 9, 12, 3, 1, 1}, false},   // expand3x3
                                        {{3, 30, 6, 6, 17, 1, 1, 0}, false}};  // squeeze / conv.1
  for (size_t i = 0; i < cases.size(); ++i) {
    const ConvCase& c = cases[i].c;
    const bool pool2 = cases[i].pool2;
    const PackedConvWeight w = random_weight({c.co, c.ci, c.k, c.k}, 0.35, 1.1f, 0.9f, 800 + i);
    const Tensor x = test::rand({c.n, c.ci, c.h, c.w}, 810 + i);
    const Tensor pre_s = test::rand({c.ci}, 820 + i), pre_b = test::rand({c.ci}, 830 + i);
    const Tensor post_s = test::rand({c.co}, 840 + i), post_b = test::rand({c.co}, 850 + i);
    Tensor h = affine_loops(x, pre_s, pre_b, true);
    if (pool2) h = ops::avg_pool2d(h, 2, 2);
    h = ops::conv2d(h, w.decode(), Tensor(), c.stride, c.pad);
    const Tensor residual = test::rand(h.shape(), 860 + i);
    const Tensor expect = ops::add(affine_loops(h, post_s, post_b, true), residual);
    PackedConvOptions o;
    o.stride = c.stride;
    o.pad = c.pad;
    o.pool2 = pool2;
    o.pre_scale = pre_s;
    o.pre_shift = pre_b;
    o.pre_relu = true;
    o.post_scale = post_s;
    o.post_shift = post_b;
    o.post_relu = true;
    o.residual = residual;
    EXPECT_LT(test::max_rel_error(kernels::packed_conv2d_ref(x, w, o), expect), 1e-5)
        << case_str(c) << " reference";
    for (CpuIsa isa : cpu_isas()) {
      o.cpu_isa = isa;
      Tensor y = Tensor::empty(expect.shape());
      test::poison(y);
      kernels::packed_conv2d_out(x, w, o, y);
      EXPECT_LT(test::max_rel_error(y, expect), 1e-5)
          << case_str(c) << " pool2=" << pool2 << " " << kernels::cpu_isa_name(isa);
    }
  }
}

TEST(PackedConvCpu, BatchOfNEqualsNBatchesOfOne) {
  const ConvCase c{5, 19, 11, 11, 14, 3, 1, 1};
  const PackedConvWeight w = random_weight({c.co, c.ci, c.k, c.k}, 0.4, 1.0f, 1.0f, 900);
  const Tensor x = test::rand({c.n, c.ci, c.h, c.w}, 901);
  PackedConvOptions o;
  o.pad = 1;
  o.pre_scale = test::rand({c.ci}, 902);
  o.pre_relu = true;
  const Tensor all = kernels::packed_conv2d(x, w, o);
  for (int64_t i = 0; i < c.n; ++i) {
    const Tensor one = kernels::packed_conv2d(x.narrow(0, i, 1), w, o);
    EXPECT_LE(test::max_rel_error(one, all.narrow(0, i, 1).contiguous()), 1e-6) << "sample " << i;
  }
}

TEST(PackedConvCpu, LargeConvsMatchOnEveryThreadingScheme) {
  // Above the threading threshold: N = 1 and 3 split one sample's blocks over threads,
  // N = 5 gives whole samples to threads; X' built (3x3, prologue) or x read in place (1x1).
  struct Big {
    int64_t ci, co, k, hw;
    int pad;
    bool prologue;
  };
  for (const Big& b : {Big{64, 64, 3, 24, 1, true}, Big{64, 136, 1, 32, 0, false}}) {
    const PackedConvWeight w = random_weight({b.co, b.ci, b.k, b.k}, 0.38, 1.0f, 0.9f, 960 + b.k);
    const Tensor pre_s = test::rand({b.ci}, 961), pre_b = test::rand({b.ci}, 962);
    for (int64_t n : {1, 3, 5}) {
      const Tensor x = test::rand({n, b.ci, b.hw, b.hw}, 963 + n);
      const Tensor h = b.prologue ? affine_loops(x, pre_s, pre_b, true) : x;
      const Tensor expect = ops::conv2d(h, w.decode(), Tensor(), 1, b.pad);
      PackedConvOptions o;
      o.pad = b.pad;
      if (b.prologue) {
        o.pre_scale = pre_s;
        o.pre_shift = pre_b;
        o.pre_relu = true;
      }
      Tensor y = Tensor::empty(expect.shape());
      test::poison(y);
      kernels::packed_conv2d_out(x, w, o, y);
      EXPECT_LT(test::max_rel_error(y, expect), 1e-5) << "k " << b.k << " n " << n;
    }
  }
}

TEST(PackedConvCpu, WritesAChannelSliceOfAWiderBufferAndNothingElse) {
  // DenseNet: conv.2 reads a prefix of the block buffer's channels and writes the next 12.
  // Also a 1x1 conv without prologue or padding, which reads the slice in place.
  for (int64_t k : {3, 1}) {
    const int64_t n = 2, total = 40, used = 20, co = 12;
    Tensor buffer = test::rand({n, total, 9, 9}, 950);
    const Tensor before = buffer.clone();
    const PackedConvWeight w = random_weight({co, used, k, k}, 0.4, 1.0f, 1.0f, 951);
    PackedConvOptions o;
    o.pad = static_cast<int>(k / 2);
    const Tensor x = buffer.narrow(1, 0, used);
    const Tensor expect = kernels::packed_conv2d_ref(x.contiguous(), w, o);
    for (CpuIsa isa : cpu_isas()) {
      o.cpu_isa = isa;
      buffer.copy_(before);
      Tensor y = buffer.narrow(1, used, co);
      kernels::packed_conv2d_out(x, w, o, y);
      EXPECT_LT(test::max_rel_error(y.contiguous(), expect), 1e-5) << "k " << k;
      EXPECT_EQ(
          test::max_abs_diff(buffer.narrow(1, 0, used).contiguous(), before.narrow(1, 0, used).contiguous()),
          0.0);
      const int64_t rest = total - used - co;
      EXPECT_EQ(test::max_abs_diff(buffer.narrow(1, used + co, rest).contiguous(),
                                   before.narrow(1, used + co, rest).contiguous()),
                0.0);
    }
  }
}

// ---- grouped and depthwise convs ---------------------------------------------------------------

struct GroupCase {
  int64_t n, ci, h, w, co, k;
  int stride, pad;
  int64_t groups;
};
std::string case_str(const GroupCase& c) {
  return "PACKED_CONV(n=" + std::to_string(c.n) + ", ci=" + std::to_string(c.ci) +
         ", hw=" + std::to_string(c.h) + "x" + std::to_string(c.w) + ", co=" + std::to_string(c.co) +
         ", k=" + std::to_string(c.k) + ", stride=" + std::to_string(c.stride) +
         ", pad=" + std::to_string(c.pad) + ", groups=" + std::to_string(c.groups) + ")";
}
const std::vector<GroupCase> kGroupCases = {
    {2, 8, 9, 7, 8, 3, 1, 1, 8},       // depthwise
    {1, 6, 11, 10, 12, 3, 2, 1, 6},    // depthwise x2, strided
    {2, 12, 7, 7, 9, 3, 1, 1, 3},      // 3 groups
    {3, 4, 8, 9, 6, 1, 1, 0, 2},       // grouped 1x1, read in place
    {1, 10, 12, 12, 10, 5, 1, 2, 5},   // 5x5, 2 channels per group
    {2, 6, 13, 5, 6, 3, 3, 0, 3},      // stride 3, odd sizes
    {1, 32, 20, 20, 32, 3, 1, 1, 32},  // a larger depthwise layer: above the threading threshold
    {2, 16, 10, 10, 48, 1, 1, 0, 4},   // 4 groups of 4 -> 12, several register blocks per group
};

TEST(PackedConvCpu, GroupedAndDepthwiseMatchTheDenseConvAndTheReference) {
  for (size_t i = 0; i < kGroupCases.size(); ++i) {
    const GroupCase& c = kGroupCases[i];
    const PackedConvWeight w = random_weight({c.co, c.ci / c.groups, c.k, c.k}, 0.4, 0.93f, 1.07f, 2000 + i,
                                             Device::cpu(), c.groups);
    ASSERT_EQ(w.ci(), c.ci);
    const Tensor x = test::rand({c.n, c.ci, c.h, c.w}, 2100 + i);
    PackedConvOptions o;
    o.stride = c.stride;
    o.pad = c.pad;
    const Tensor dense = ops::conv2d(x, w.decode(), Tensor(), c.stride, c.pad, 1, static_cast<int>(c.groups));
    const Tensor ref = kernels::packed_conv2d_ref(x, w, o);
    EXPECT_LT(test::max_rel_error(ref, dense), 1e-6) << case_str(c) << " reference vs ops::conv2d";
    expect_every_isa_matches(x, w, o, dense, ref, case_str(c));
  }
}

// Small integers and power-of-two scales: every ISA gives the reference's bits (so the
// scalar kernel's), fused or not, and the dense grouped conv's when not fused.
TEST(PackedConvCpu, GroupedExactCaseIsBitIdenticalOnEveryIsa) {
  for (size_t i = 0; i < kGroupCases.size(); ++i) {
    const GroupCase& c = kGroupCases[i];
    for (bool fused : {false, true}) {
      const PackedConvWeight w = random_weight({c.co, c.ci / c.groups, c.k, c.k}, 0.3, 0.5f, 2.0f, 2200 + i,
                                               Device::cpu(), c.groups);
      const Tensor x = small_integers({c.n, c.ci, c.h, c.w}, 2300 + i);
      PackedConvOptions o;
      o.stride = c.stride;
      o.pad = c.pad;
      if (fused) {
        Fusion f = power_of_two_affines(c.ci, c.co, 2400 + i);
        o.pre_scale = f.pre_scale;
        o.pre_shift = f.pre_shift;
        o.pre_relu = true;
        o.post_scale = f.post_scale;
        o.post_shift = f.post_shift;
        o.post_relu = i % 2 == 0;
        o.residual = small_integers(
            {c.n, c.co, (c.h + 2 * c.pad - c.k) / c.stride + 1, (c.w + 2 * c.pad - c.k) / c.stride + 1},
            2500 + i);
      }
      const Tensor ref = kernels::packed_conv2d_ref(x, w, o);
      if (!fused) {
        EXPECT_EQ(
            test::max_abs_diff(
                ops::conv2d(x, w.decode(), Tensor(), c.stride, c.pad, 1, static_cast<int>(c.groups)), ref),
            0.0)
            << case_str(c);
      }
      for (CpuIsa isa : cpu_isas()) {
        o.cpu_isa = isa;
        Tensor y = Tensor::empty(ref.shape());
        test::poison(y);
        kernels::packed_conv2d_out(x, w, o, y);
        EXPECT_EQ(test::max_abs_diff(y, ref), 0.0)
            << case_str(c) << " fused=" << fused << " " << kernels::cpu_isa_name(isa);
      }
    }
  }
}

// A grouped conv with prologue, epilogue and residual, reading a channel slice of one
// buffer and writing a channel slice of another, gives the bits of its groups run as
// one-group packed convs (weights: the group's rows) on the groups' slices, on 1, 3 and
// 4 threads; nothing outside the output slice is written.
TEST(PackedConvCpu, GroupedEqualsItsGroupsAsSeparatePackedConvsOnEveryThreadCount) {
  const int threads = omp_get_max_threads();
  for (const GroupCase& c :
       {GroupCase{2, 12, 9, 9, 6, 3, 1, 1, 3}, GroupCase{1, 64, 24, 24, 64, 3, 1, 1, 64},
        GroupCase{8, 16, 12, 12, 16, 3, 2, 1, 16}, GroupCase{1, 8, 8, 8, 16, 1, 1, 0, 2}}) {
    const PackedConvWeight w = random_weight({c.co, c.ci / c.groups, c.k, c.k}, 0.35, 1.25f, 0.75f,
                                             2600 + c.ci, Device::cpu(), c.groups);
    const int64_t cg = c.ci / c.groups, og = c.co / c.groups;
    const int64_t ho = (c.h + 2 * c.pad - c.k) / c.stride + 1, wo = (c.w + 2 * c.pad - c.k) / c.stride + 1;
    Tensor xbuf = test::rand({c.n, c.ci + 4, c.h, c.w}, 2601);
    const Tensor x = xbuf.narrow(1, 3, c.ci);
    const Tensor residual = test::rand({c.n, c.co, ho, wo}, 2602);
    PackedConvOptions o;
    o.stride = c.stride;
    o.pad = c.pad;
    o.pre_scale = test::rand({c.ci}, 2603);
    o.pre_shift = test::rand({c.ci}, 2604);
    o.pre_relu = true;
    o.post_scale = test::rand({c.co}, 2605);
    o.post_shift = test::rand({c.co}, 2606);
    o.post_relu = true;
    o.residual = residual;
    // The groups one by one, from the decoded weight's rows.
    const Tensor dense_w = w.decode();
    Tensor expect = Tensor::empty({c.n, c.co, ho, wo});
    for (int64_t g = 0; g < c.groups; ++g) {
      const PackedConvWeight wg =
          PackedConvWeight::from_dense(dense_w.narrow(0, g * og, og).contiguous(), Device::cpu());
      PackedConvOptions og_o = o;
      og_o.pre_scale = o.pre_scale.narrow(0, g * cg, cg).contiguous();
      og_o.pre_shift = o.pre_shift.narrow(0, g * cg, cg).contiguous();
      og_o.post_scale = o.post_scale.narrow(0, g * og, og).contiguous();
      og_o.post_shift = o.post_shift.narrow(0, g * og, og).contiguous();
      og_o.residual = residual.narrow(1, g * og, og);
      Tensor yg = expect.narrow(1, g * og, og);
      kernels::packed_conv2d_out(x.narrow(1, g * cg, cg), wg, og_o, yg);
    }
    EXPECT_LT(test::max_rel_error(expect, kernels::packed_conv2d_ref(x.contiguous(), w, o)), 1e-5)
        << case_str(c);
    for (int t : {1, 3, 4}) {
      omp_set_num_threads(t);
      Tensor ybuf = Tensor::full({c.n, c.co + 5, ho, wo}, 0.5f);
      Tensor y = ybuf.narrow(1, 2, c.co);
      kernels::packed_conv2d_out(x, w, o, y);
      EXPECT_EQ(test::max_abs_diff(y.contiguous(), expect), 0.0) << case_str(c) << " threads " << t;
      for (auto [c0, len] : {std::pair<int64_t, int64_t>{0, 2}, {2 + c.co, 3}})
        for (float v : ybuf.narrow(1, c0, len).contiguous().to_vector<float>()) ASSERT_EQ(v, 0.5f) << t;
    }
    omp_set_num_threads(threads);
  }
}

// ---- CUDA twins against the CPU --------------------------------------------------------------

#ifdef TTQ_HAS_CUDA
class PackedConvCuda : public testing::TestWithParam<kernels::CudaPath> {};

TEST_P(PackedConvCuda, MatchesTheCpuTwin) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
  const kernels::CudaPath path = GetParam();
  if (path == kernels::CudaPath::TensorCore && !kernels::packed_conv_tensor_cores_supported())
    GTEST_SKIP() << "no tensor-core support in this build or device";
  const double tol = path == kernels::CudaPath::TensorCore ? 3e-3 : 1e-5;
  const Device gpu = Device::cuda(0);
  for (size_t i = 0; i < kCases.size(); ++i) {
    const ConvCase& c = kCases[i];
    for (bool fused : {false, true}) {
      const Shape ws = {c.co, c.ci, c.k, c.k};
      const PackedConvWeight wc = random_weight(ws, 0.4, 0.93f, 1.07f, 1000 + i);
      const PackedConvWeight wg = random_weight(ws, 0.4, 0.93f, 1.07f, 1000 + i, gpu);
      const Tensor x = test::rand({c.n, c.ci, c.h, c.w}, 1100 + i);
      PackedConvOptions o;
      o.stride = c.stride;
      o.pad = c.pad;
      o.cuda_path = path;
      if (fused) {
        o.pre_scale = test::rand({c.ci}, 1200 + i);
        o.pre_shift = test::rand({c.ci}, 1300 + i);
        o.pre_relu = true;
        o.post_scale = test::rand({c.co}, 1400 + i);
        o.post_shift = test::rand({c.co}, 1500 + i);
        o.post_relu = true;
        o.pool2 = c.k == 1 && c.stride == 1 && c.h >= 2 && c.w >= 2;
      }
      const Tensor expect = kernels::packed_conv2d(x, wc, o);
      PackedConvOptions og = o;
      for (Tensor* t : {&og.pre_scale, &og.pre_shift, &og.post_scale, &og.post_shift})
        if (t->defined()) *t = t->to(gpu);
      Tensor y = Tensor::empty(expect.shape(), DType::F32, gpu);
      test::poison(y);
      kernels::packed_conv2d_out(x.to(gpu), wg, og, y);
      const Tensor got = y.to(Device::cpu());
      EXPECT_TRUE(test::all_finite(got))
          << case_str(c) << " " << kernels::cuda_path_name(path) << ": unwritten";
      EXPECT_LT(test::max_rel_error(got, expect), tol)
          << case_str(c) << " fused=" << fused << " " << kernels::cuda_path_name(path);
    }
  }
}

TEST_P(PackedConvCuda, ExactCaseIsBitIdenticalToTheReference) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
  const kernels::CudaPath path = GetParam();
  if (path == kernels::CudaPath::TensorCore && !kernels::packed_conv_tensor_cores_supported())
    GTEST_SKIP() << "no tensor-core support in this build or device";
  const Device gpu = Device::cuda(0);
  for (size_t i = 0; i < kCases.size(); ++i) {
    const ConvCase& c = kCases[i];
    const Shape ws = {c.co, c.ci, c.k, c.k};
    const PackedConvWeight wc = random_weight(ws, 0.3, 0.5f, 2.0f, 1600 + i);
    const PackedConvWeight wg = random_weight(ws, 0.3, 0.5f, 2.0f, 1600 + i, gpu);
    const Tensor x = small_integers({c.n, c.ci, c.h, c.w}, 1700 + i);
    Fusion f = power_of_two_affines(c.ci, c.co, 1800 + i);
    PackedConvOptions o;
    o.stride = c.stride;
    o.pad = c.pad;
    o.pre_scale = f.pre_scale;
    o.pre_shift = f.pre_shift;
    o.pre_relu = true;
    o.post_scale = f.post_scale;
    o.post_shift = f.post_shift;
    o.cuda_path = path;
    const Tensor ref = kernels::packed_conv2d_ref(x, wc, o);
    PackedConvOptions og = o;
    for (Tensor* t : {&og.pre_scale, &og.pre_shift, &og.post_scale, &og.post_shift}) *t = t->to(gpu);
    Tensor y = Tensor::empty(ref.shape(), DType::F32, gpu);
    test::poison(y);
    kernels::packed_conv2d_out(x.to(gpu), wg, og, y);
    EXPECT_EQ(test::max_abs_diff(y.to(Device::cpu()), ref), 0.0)
        << case_str(c) << " " << kernels::cuda_path_name(path);
  }
}

TEST_P(PackedConvCuda, ResidualAndChannelSlice) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
  const kernels::CudaPath path = GetParam();
  if (path == kernels::CudaPath::TensorCore && !kernels::packed_conv_tensor_cores_supported())
    GTEST_SKIP() << "no tensor-core support in this build or device";
  const Device gpu = Device::cuda(0);
  const int64_t n = 2, total = 40, used = 20, co = 12;
  const Tensor buffer_cpu = small_integers({n, total, 9, 9}, 1900);
  Tensor buffer = buffer_cpu.to(gpu);
  const Tensor residual = small_integers({n, co, 9, 9}, 1901);
  const Shape ws = {co, used, 3, 3};
  const PackedConvWeight wc = random_weight(ws, 0.4, 1.0f, 1.0f, 1902);
  const PackedConvWeight wg = random_weight(ws, 0.4, 1.0f, 1.0f, 1902, gpu);
  PackedConvOptions o;
  o.pad = 1;
  o.residual = residual;
  o.cuda_path = path;
  const Tensor expect = kernels::packed_conv2d_ref(buffer_cpu.narrow(1, 0, used).contiguous(), wc, o);
  PackedConvOptions og = o;
  og.residual = residual.to(gpu);
  Tensor y = buffer.narrow(1, used, co);
  kernels::packed_conv2d_out(buffer.narrow(1, 0, used), wg, og, y);
  const Tensor after = buffer.to(Device::cpu());
  EXPECT_EQ(test::max_abs_diff(after.narrow(1, used, co).contiguous(), expect), 0.0);
  EXPECT_EQ(
      test::max_abs_diff(after.narrow(1, 0, used).contiguous(), buffer_cpu.narrow(1, 0, used).contiguous()),
      0.0);
  EXPECT_EQ(test::max_abs_diff(after.narrow(1, used + co, total - used - co).contiguous(),
                               buffer_cpu.narrow(1, used + co, total - used - co).contiguous()),
            0.0);
}

TEST_P(PackedConvCuda, GroupedAndDepthwiseMatchTheCpuTwin) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
  const kernels::CudaPath path = GetParam();
  if (path == kernels::CudaPath::TensorCore && !kernels::packed_conv_tensor_cores_supported())
    GTEST_SKIP() << "no tensor-core support in this build or device";
  const Device gpu = Device::cuda(0);
  for (size_t i = 0; i < kGroupCases.size(); ++i) {
    const GroupCase& c = kGroupCases[i];
    for (bool exact : {false, true}) {
      const Shape ws = {c.co, c.ci / c.groups, c.k, c.k};
      const float wp = exact ? 0.5f : 0.93f, wn = exact ? 2.0f : 1.07f;
      const PackedConvWeight wc = random_weight(ws, 0.4, wp, wn, 2700 + i, Device::cpu(), c.groups);
      const PackedConvWeight wg = random_weight(ws, 0.4, wp, wn, 2700 + i, gpu, c.groups);
      const Tensor x = exact ? small_integers({c.n, c.ci, c.h, c.w}, 2800 + i)
                             : test::rand({c.n, c.ci, c.h, c.w}, 2800 + i);
      Fusion f = power_of_two_affines(c.ci, c.co, 2900 + i);
      PackedConvOptions o;
      o.stride = c.stride;
      o.pad = c.pad;
      o.pre_scale = f.pre_scale;
      o.pre_shift = f.pre_shift;
      o.pre_relu = true;
      o.post_scale = f.post_scale;
      o.post_shift = f.post_shift;
      o.cuda_path = path;
      const Tensor expect = exact ? kernels::packed_conv2d_ref(x, wc, o) : kernels::packed_conv2d(x, wc, o);
      PackedConvOptions og = o;
      for (Tensor* t : {&og.pre_scale, &og.pre_shift, &og.post_scale, &og.post_shift}) *t = t->to(gpu);
      // Output into a channel slice of a wider buffer.
      Tensor buffer = Tensor::full({c.n, c.co + 3, expect.size(2), expect.size(3)}, 0.5f, DType::F32, gpu);
      Tensor y = buffer.narrow(1, 1, c.co);
      kernels::packed_conv2d_out(x.to(gpu), wg, og, y);
      const Tensor got = y.to(Device::cpu()).contiguous();
      if (exact) {
        EXPECT_EQ(test::max_abs_diff(got, expect), 0.0)
            << case_str(c) << " " << kernels::cuda_path_name(path);
      } else {
        EXPECT_LT(test::max_rel_error(got, expect), path == kernels::CudaPath::TensorCore ? 3e-3 : 1e-5)
            << case_str(c) << " " << kernels::cuda_path_name(path);
      }
      const Tensor after = buffer.to(Device::cpu());
      for (float v : after.narrow(1, 0, 1).contiguous().to_vector<float>()) ASSERT_EQ(v, 0.5f);
      for (float v : after.narrow(1, 1 + c.co, 2).contiguous().to_vector<float>()) ASSERT_EQ(v, 0.5f);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, PackedConvCuda,
                         testing::Values(kernels::CudaPath::TensorCore, kernels::CudaPath::Simt),
                         [](const testing::TestParamInfo<kernels::CudaPath>& info) {
                           return std::string(kernels::cuda_path_name(info.param));
                         });
#else
TEST(PackedConvCuda, MatchesTheCpuTwin) { GTEST_SKIP() << "no CUDA device (built without CUDA)"; }
#endif

}  // namespace
}  // namespace ttq
