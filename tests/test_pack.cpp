// The canonical 2-bit layout (kernels/packed_format.h, kernels/pack.h): a
// hand-packed case, exact round trips on awkward sizes, all 256 byte values,
// code counts that ignore padding, decoding to {+Wp, 0, -Wn}, agreement with
// ternarize's packed output, and the CUDA twins against the CPU twins.
#include <vector>

#include "kernels/pack.h"
#include "kernels/packed_format.h"
#include "kernels/ternarize.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

std::vector<uint8_t> random_codes(int64_t n, uint64_t seed) {
  Generator g(seed);
  std::vector<uint8_t> c(static_cast<size_t>(n));
  for (auto& v : c) v = static_cast<uint8_t>(g.below(3));
  return c;
}

class PackDevice : public testing::TestWithParam<Device> {};

TEST_P(PackDevice, HandPacked) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  // codes +1, -1, 0, +1 | -1: byte 0 = 1 | 2<<2 | 0<<4 | 1<<6 = 0x49, byte 1 = 2.
  Tensor codes = Tensor::from_vector<uint8_t>({1, 2, 0, 1, 2}, {5}, dev);
  Tensor p = kernels::pack_codes(codes);
  EXPECT_EQ(p.to_vector<uint8_t>(), (std::vector<uint8_t>{0x49, 0x02}));
  EXPECT_EQ(kernels::unpack_codes(p, {5}).to_vector<uint8_t>(), (std::vector<uint8_t>{1, 2, 0, 1, 2}));
  kernels::CodeCounts c = kernels::count_codes(p, 5);
  EXPECT_EQ(c.zero, 1);
  EXPECT_EQ(c.pos, 2);
  EXPECT_EQ(c.neg, 2);
  EXPECT_EQ(c.invalid, 0);
  Tensor wp = Tensor::full({1}, 0.5, DType::F32, dev), wn = Tensor::full({1}, 0.25, DType::F32, dev);
  EXPECT_EQ(kernels::decode_packed(p, {5}, wp, wn).to_vector<float>(),
            (std::vector<float>{0.5f, -0.25f, 0.0f, 0.5f, -0.25f}));
}

TEST_P(PackDevice, RoundTripAwkwardSizes) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  for (int64_t n : {0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 1023, 1025, 7 * 31 * 9, 100003, 300001}) {
    SCOPED_TRACE(testing::Message() << "PACK(n=" << n << ")");
    std::vector<uint8_t> codes = random_codes(n, 60 + n);
    std::vector<uint8_t> ref(static_cast<size_t>(kernels::packed::packed_bytes(n)), 0xAB);
    kernels::pack_codes_ref(codes.data(), n, ref.data());
    Tensor p = kernels::pack_codes(Tensor::from_vector(codes, {n}, dev));
    EXPECT_EQ(p.to_vector<uint8_t>(), ref);
    if (n % 4 != 0) {
      EXPECT_EQ(ref.back() >> (2 * (n % 4)), 0) << "padding codes must be 0";
    }
    Tensor u = kernels::unpack_codes(p, {n});
    EXPECT_EQ(u.to_vector<uint8_t>(), codes);
    kernels::CodeCounts c = kernels::count_codes(p, n);
    int64_t expect[3] = {0, 0, 0};
    for (uint8_t v : codes) expect[v]++;
    EXPECT_EQ(c.zero, expect[0]);
    EXPECT_EQ(c.pos, expect[1]);
    EXPECT_EQ(c.neg, expect[2]);
    EXPECT_EQ(c.invalid, 0);
  }
}

TEST_P(PackDevice, EveryByteValueRoundTripsAndInvalidCodesAreCounted) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  std::vector<uint8_t> bytes(256);
  int64_t invalid = 0;
  for (int b = 0; b < 256; ++b) {
    bytes[b] = static_cast<uint8_t>(b);
    for (int k = 0; k < 4; ++k) invalid += ((b >> (2 * k)) & 3) == 3;
  }
  Tensor p = Tensor::from_vector(bytes, {256}, dev);
  Tensor u = kernels::unpack_codes(p, {1024});
  std::vector<uint8_t> uv = u.to_vector<uint8_t>();
  for (int i = 0; i < 1024; ++i) ASSERT_EQ(uv[i], (bytes[i / 4] >> (2 * (i % 4))) & 3) << "element " << i;
  EXPECT_EQ(kernels::pack_codes(u).to_vector<uint8_t>(), bytes);
  EXPECT_EQ(kernels::count_codes(p, 1024).invalid, invalid);
  // Padding is not counted: 1023 codes leave the top code of byte 255 (= 3) out.
  EXPECT_EQ(kernels::count_codes(p, 1023).invalid, invalid - 1);
}

TEST_P(PackDevice, DecodeMatchesTernarize) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  Tensor w = test::rand({24, 16, 3, 3}, 70, DType::F32, dev);
  Tensor wp = Tensor::full({1}, 0.9, DType::F32, dev), wn = Tensor::full({1}, 1.1, DType::F32, dev);
  kernels::TernarizeOutputs o;
  o.codes = o.packed = true;
  auto r = kernels::ternarize(w, 0.05, wp, wn, o);
  EXPECT_EQ(r.packed.to_vector<uint8_t>(), kernels::pack_codes(r.codes).to_vector<uint8_t>());
  EXPECT_EQ(kernels::decode_packed(r.packed, w.shape(), wp, wn).to_vector<float>(), r.wq.to_vector<float>());
}

TEST_P(PackDevice, RejectsWrongSizes) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  Tensor p = Tensor::zeros({3}, DType::U8, dev);
  EXPECT_THROW(kernels::unpack_codes(p, {13}), Error);  // needs 4 bytes
  EXPECT_THROW(kernels::unpack_codes(p, {5}), Error);   // 2 bytes, not 3
  EXPECT_THROW(kernels::pack_codes(Tensor::zeros({4}, DType::F32, dev)), Error);
}

INSTANTIATE_TEST_SUITE_P(All, PackDevice, testing::ValuesIn(test::all_devices()), test::device_name);

TEST(Pack, FastCpuMatchesReference) {
  for (int64_t n : {1, 3, 4, 5, 65, 4099, 70001}) {
    std::vector<uint8_t> codes = random_codes(n, n);
    std::vector<uint8_t> a(static_cast<size_t>((n + 3) / 4), 0xAB), b(a.size(), 0xCD);
    kernels::pack_codes_ref(codes.data(), n, a.data());
    kernels::pack_codes_cpu(codes.data(), n, b.data());
    EXPECT_EQ(a, b) << "n=" << n;
  }
}

TEST(PackCuda, MatchesCpu) {
  const Device cuda = Device::cuda(0);
  TTQ_SKIP_IF_NO_DEVICE(cuda);
  for (int64_t n : {1, 5, 4099, 1 << 20}) {
    std::vector<uint8_t> codes = random_codes(n, 80 + n);
    Tensor c = Tensor::from_vector(codes, {n});
    Tensor pc = kernels::pack_codes(c), pg = kernels::pack_codes(c.to(cuda));
    EXPECT_EQ(pg.to_vector<uint8_t>(), pc.to_vector<uint8_t>());
    EXPECT_EQ(kernels::unpack_codes(pg, {n}).to_vector<uint8_t>(), codes);
    Tensor wp = Tensor::full({1}, 0.3), wn = Tensor::full({1}, 0.7);
    EXPECT_EQ(kernels::decode_packed(pg, {n}, wp.to(cuda), wn.to(cuda)).to_vector<float>(),
              kernels::decode_packed(pc, {n}, wp, wn).to_vector<float>());
  }
}

}  // namespace
}  // namespace ttq
