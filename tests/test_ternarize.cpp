// Threshold ternarization (kernels/ternarize.h): hand-computed cases (ties at
// +-delta, all zeros, one element, empty), the fast CPU twin and the tensor entry
// against the naive reference on random tensors of awkward sizes and strided
// views, and the CUDA twin against the CPU twin bit for bit.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/packed_format.h"
#include "kernels/ternarize.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using kernels::TernarizeOutputs;
using kernels::TernaryCounts;

TernarizeOutputs all_outputs() {
  TernarizeOutputs o;
  o.wq = o.codes = o.packed = o.counts = true;
  return o;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

class TernarizeDevice : public testing::TestWithParam<Device> {};

TEST_P(TernarizeDevice, HandComputedWithTiesAtDelta) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  // max|W| = 2, t = 0.25 -> delta = 0.5 exactly; 0.5 and -0.5 sit on the
  // threshold and belong to Z (the comparisons are strict).
  Tensor w = Tensor::from_vector<float>({1.0f, -2.0f, 0.5f, -0.5f, 0.4f, -0.6f, 0.0f}, {7}, dev);
  Tensor wp = Tensor::full({1}, 1.5, DType::F32, dev), wn = Tensor::full({1}, 0.75, DType::F32, dev);
  auto r = kernels::ternarize(w, 0.25, wp, wn, all_outputs());
  EXPECT_EQ(r.delta.item(), 0.5);
  EXPECT_EQ(r.wq.to_vector<float>(), (std::vector<float>{1.5f, -0.75f, 0, 0, 0, -0.75f, 0}));
  EXPECT_EQ(r.codes.to_vector<uint8_t>(), (std::vector<uint8_t>{1, 2, 0, 0, 0, 2, 0}));
  // byte 0: codes 1,2,0,0 -> 1 | 2<<2 = 9; byte 1: codes 0,2,0 (+ padding 0) -> 2<<2 = 8.
  EXPECT_EQ(r.packed.to_vector<uint8_t>(), (std::vector<uint8_t>{9, 8}));
  TernaryCounts c = kernels::counts_of(r);
  EXPECT_EQ(c.pos, 1);
  EXPECT_EQ(c.neg, 2);
  EXPECT_EQ(c.zero, 4);
}

TEST_P(TernarizeDevice, AllZerosSingleElementAndEmpty) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  Tensor wp = Tensor::full({1}, 2.0, DType::F32, dev), wn = Tensor::full({}, 3.0, DType::F32, dev);
  {  // all zeros: delta 0, nothing exceeds it
    auto r = kernels::ternarize(Tensor::zeros({37}, DType::F32, dev), 0.05, wp, wn, all_outputs());
    EXPECT_EQ(r.delta.item(), 0.0);
    EXPECT_EQ(r.wq.to_vector<float>(), std::vector<float>(37, 0.0f));
    EXPECT_EQ(r.packed.to_vector<uint8_t>(), std::vector<uint8_t>(10, 0));
    EXPECT_EQ(kernels::counts_of(r).zero, 37);
  }
  {  // one negative element: |w| = max, so it is in N for any t < 1
    auto r =
        kernels::ternarize(Tensor::full({1, 1, 1, 1}, -3.0, DType::F32, dev), 0.05, wp, wn, all_outputs());
    EXPECT_EQ(r.delta.item(), static_cast<double>(0.05f * 3.0f));
    EXPECT_EQ(r.wq.to_vector<float>(), std::vector<float>{-3.0f});
    EXPECT_EQ(r.wq.shape(), (Shape{1, 1, 1, 1}));
    EXPECT_EQ(r.packed.to_vector<uint8_t>(), std::vector<uint8_t>{2});
    EXPECT_EQ(kernels::counts_of(r).neg, 1);
  }
  {  // t = 1: delta = max|W|, a tie, so Z
    auto r = kernels::ternarize(Tensor::full({1}, 0.7, DType::F32, dev), 1.0, wp, wn, all_outputs());
    EXPECT_EQ(r.wq.to_vector<float>(), std::vector<float>{0.0f});
    EXPECT_EQ(kernels::counts_of(r).zero, 1);
  }
  {  // empty
    auto r = kernels::ternarize(Tensor::zeros({0, 3}, DType::F32, dev), 0.05, wp, wn, all_outputs());
    EXPECT_EQ(r.delta.item(), 0.0);
    EXPECT_EQ(r.wq.shape(), (Shape{0, 3}));
    EXPECT_EQ(r.packed.numel(), 0);
    TernaryCounts c = kernels::counts_of(r);
    EXPECT_EQ(c.total(), 0);
  }
}

TEST_P(TernarizeDevice, RejectsBadInputs) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  Tensor w = Tensor::zeros({4}, DType::F32, dev), s = Tensor::ones({1}, DType::F32, dev);
  EXPECT_THROW(kernels::ternarize(w, 0.05, Tensor::ones({2}, DType::F32, dev), s), Error);
  EXPECT_THROW(kernels::ternarize(w.to(DType::F64), 0.05, s, s), Error);
  EXPECT_THROW(kernels::ternarize(w, -0.1, s, s), Error);
  EXPECT_THROW(kernels::ternarize(w, 0.05, s, Tensor::ones({1}, DType::F64, dev)), Error);
}

INSTANTIATE_TEST_SUITE_P(All, TernarizeDevice, testing::ValuesIn(test::all_devices()), test::device_name);

// Sizes around vector widths and tile boundaries, and one large enough for the
// OpenMP path.
const std::vector<int64_t> kSizes = {1,  2,  3,  4,   5,    7,    8,    9,    15,   16,         17,    31,
                                     33, 63, 65, 217, 1000, 2047, 2048, 2049, 4097, 7 * 31 * 9, 100003};

struct RefOut {
  std::vector<float> wq;
  std::vector<uint8_t> codes, packed;
  TernaryCounts counts;
  float delta;
};

RefOut run_ref(const std::vector<float>& w, float t, float wp, float wn) {
  RefOut r;
  const int64_t n = static_cast<int64_t>(w.size());
  r.wq.assign(w.size(), NAN);
  r.codes.assign(w.size(), 0xAB);
  r.packed.assign(static_cast<size_t>((n + 3) / 4), 0xAB);
  r.delta =
      kernels::ternarize_ref(w.data(), n, t, wp, wn, r.wq.data(), r.codes.data(), r.packed.data(), &r.counts);
  return r;
}

std::vector<float> near_threshold_weights(int64_t n, uint64_t seed, float t);

TEST(Ternarize, FastCpuMatchesReferenceBitForBit) {
  for (int64_t n : kSizes) {
    for (float t : {0.05f, 0.15f, 0.7f}) {
      for (bool near : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << "TERNARIZE(n=" << n << ", t=" << t << ", near_delta=" << near << ")");
        std::vector<float> w =
            near ? near_threshold_weights(n, 400 + n, t) : test::rand({n}, 100 + n).to_vector<float>();
        RefOut ref = run_ref(w, t, 1.25f, 0.5f);
        std::vector<float> wq(w.size(), NAN);
        std::vector<uint8_t> codes(w.size(), 0xAB), packed(ref.packed.size(), 0xAB);
        TernaryCounts c;
        float delta =
            kernels::ternarize_cpu(w.data(), n, t, 1.25f, 0.5f, wq.data(), codes.data(), packed.data(), &c);
        EXPECT_EQ(bits(delta), bits(ref.delta));
        EXPECT_EQ(std::memcmp(wq.data(), ref.wq.data(), wq.size() * 4), 0);
        EXPECT_EQ(codes, ref.codes);
        EXPECT_EQ(packed, ref.packed);
        EXPECT_EQ(c.pos, ref.counts.pos);
        EXPECT_EQ(c.neg, ref.counts.neg);
        EXPECT_EQ(c.zero, ref.counts.zero);
        EXPECT_EQ(c.total(), n);
        // Null outputs are allowed and change nothing else.
        std::vector<float> wq2(w.size(), NAN);
        kernels::ternarize_cpu(w.data(), n, t, 1.25f, 0.5f, wq2.data(), nullptr, nullptr, nullptr);
        EXPECT_EQ(std::memcmp(wq2.data(), ref.wq.data(), wq.size() * 4), 0);
        std::vector<uint8_t> packed2(ref.packed.size(), 0xAB);
        kernels::ternarize_cpu(w.data(), n, t, 1.25f, 0.5f, nullptr, nullptr, packed2.data(), nullptr);
        EXPECT_EQ(packed2, ref.packed);
      }
    }
  }
}

TEST(Ternarize, DefinitionHoldsNextToDelta) {
  // max|W| = 1 so delta = float(0.05) exactly; put elements on delta and one
  // ulp either side, positive and negative.
  const float delta = 0.05f;
  const float up = std::nextafter(delta, 1.0f), down = std::nextafter(delta, 0.0f);
  std::vector<float> w = {1.0f, delta, up, down, -delta, -up, -down, 0.0f, -1.0f};
  RefOut ref = run_ref(w, 0.05f, 1.0f, 1.0f);
  EXPECT_EQ(ref.delta, delta);
  EXPECT_EQ(ref.codes, (std::vector<uint8_t>{1, 0, 1, 0, 0, 2, 0, 0, 2}));
}

TEST(Ternarize, TensorEntryOnStridedViews) {
  // A transposed [9, 31] view of a [31, 9] weight: the entry must ternarize the
  // view's element order.
  Tensor base = test::rand({31, 9}, 7);
  Tensor view = base.transpose(0, 1);
  ASSERT_FALSE(view.is_contiguous());
  Tensor wp = Tensor::full({1}, 0.8), wn = Tensor::full({1}, 1.3);
  auto r = kernels::ternarize(view, 0.05, wp, wn, all_outputs());
  RefOut ref = run_ref(view.contiguous().to_vector<float>(), 0.05f, 0.8f, 1.3f);
  EXPECT_EQ(r.wq.shape(), (Shape{9, 31}));
  EXPECT_EQ(r.wq.to_vector<float>(), ref.wq);
  EXPECT_EQ(r.codes.to_vector<uint8_t>(), ref.codes);
  EXPECT_EQ(r.packed.to_vector<uint8_t>(), ref.packed);
  EXPECT_EQ(bits(static_cast<float>(r.delta.item())), bits(ref.delta));
  // wp / wn as strided one-element views of a larger tensor.
  Tensor scales = Tensor::from_vector<float>({9.0f, 0.8f, 9.0f, 1.3f}, {4});
  auto r2 = kernels::ternarize(view, 0.05, scales.narrow(0, 1, 1), scales.narrow(0, 3, 1));
  EXPECT_EQ(r2.wq.to_vector<float>(), ref.wq);
}

// Latent weights with many elements within a few ulps of +-delta.
std::vector<float> near_threshold_weights(int64_t n, uint64_t seed, float t) {
  std::vector<float> w = test::rand({n}, seed).to_vector<float>();
  w[0] = 1.0f;  // max|W| = 1 (rand is in [-1, 1)), so delta = t
  for (int64_t i = 1; i < n; i += 3) {
    float v = t;
    for (int64_t k = 0; k < (i / 3) % 5; ++k) v = std::nextafter(v, (i / 3) % 2 ? 1.0f : 0.0f);
    w[i] = (i % 2) ? -v : v;
  }
  return w;
}

int64_t count_near(const std::vector<float>& w, float delta, int ulps) {
  float lo = delta, hi = delta;
  for (int k = 0; k < ulps; ++k) lo = std::nextafter(lo, 0.0f), hi = std::nextafter(hi, 1.0f);
  int64_t c = 0;
  for (float v : w) c += std::fabs(v) >= lo && std::fabs(v) <= hi;
  return c;
}

TEST(TernarizeCuda, MatchesCpuBitForBit) {
  const Device cuda = Device::cuda(0);
  TTQ_SKIP_IF_NO_DEVICE(cuda);
  for (int64_t n : kSizes) {
    for (bool near : {false, true}) {
      SCOPED_TRACE(testing::Message() << "TERNARIZE(n=" << n << ", near_delta=" << near << ")");
      const float t = 0.05f;
      std::vector<float> wv =
          near ? near_threshold_weights(n, 300 + n, t) : test::rand({n}, 200 + n).to_vector<float>();
      Tensor w = Tensor::from_vector(wv, {n});
      Tensor wp = Tensor::full({1}, 1.1), wn = Tensor::full({1}, 0.9);
      auto cpu = kernels::ternarize(w, t, wp, wn, all_outputs());
      auto gpu = kernels::ternarize(w.to(cuda), t, wp.to(cuda), wn.to(cuda), all_outputs());
      // delta is one rounding of the same product on both sides, so the verdicts
      // cannot differ even next to the threshold; the count shows how many
      // elements this case put there.
      const float delta = static_cast<float>(cpu.delta.item());
      const int64_t near_count = count_near(wv, delta, 4);
      if (near) {
        EXPECT_GE(near_count, (n - 1) / 3);
      }
      EXPECT_EQ(bits(static_cast<float>(gpu.delta.item())), bits(delta));
      EXPECT_EQ(gpu.codes.to_vector<uint8_t>(), cpu.codes.to_vector<uint8_t>())
          << near_count << " elements within 4 ulps";
      EXPECT_EQ(gpu.packed.to_vector<uint8_t>(), cpu.packed.to_vector<uint8_t>());
      EXPECT_EQ(gpu.wq.to_vector<float>(), cpu.wq.to_vector<float>());
      EXPECT_EQ(gpu.counts.to_vector<int64_t>(), cpu.counts.to_vector<int64_t>());
    }
  }
}

TEST(TernarizeCuda, UnalignedAndStridedInputs) {
  const Device cuda = Device::cuda(0);
  TTQ_SKIP_IF_NO_DEVICE(cuda);
  // A view starting one float into its storage defeats the float4 path.
  Tensor base = test::rand({1 + 4099}, 11);
  Tensor w = base.narrow(0, 1, 4099);
  Tensor wp = Tensor::full({1}, 0.6), wn = Tensor::full({1}, 0.4);
  auto cpu = kernels::ternarize(w, 0.1, wp, wn, all_outputs());
  Tensor wg = base.to(cuda).narrow(0, 1, 4099);
  auto gpu = kernels::ternarize(wg, 0.1, wp.to(cuda), wn.to(cuda), all_outputs());
  EXPECT_EQ(gpu.wq.to_vector<float>(), cpu.wq.to_vector<float>());
  EXPECT_EQ(gpu.packed.to_vector<uint8_t>(), cpu.packed.to_vector<uint8_t>());
#ifdef TTQ_HAS_CUDA
  // Raw launcher with an odd wq pointer as well.
  Tensor out = Tensor::empty({4100}, DType::F32, cuda);
  Tensor delta = Tensor::empty({1}, DType::F32, cuda);
  Tensor ws = Tensor::empty({static_cast<int64_t>(kernels::ternarize_cuda_workspace(4099))}, DType::U8, cuda);
  Tensor wpg = wp.to(cuda), wng = wn.to(cuda);
  kernels::ternarize_cuda(wg.data<float>(), 4099, 0.1f, wpg.data<float>(), wng.data<float>(),
                          out.data<float>() + 1, nullptr, nullptr, delta.data<float>(), nullptr,
                          ws.raw_data(), static_cast<cudaStream_t>(cuda::current_stream()));
  EXPECT_EQ(out.narrow(0, 1, 4099).to_vector<float>(), cpu.wq.to_vector<float>());
#endif
  // Transposed view on the device.
  Tensor b2 = test::rand({33, 17}, 12);
  auto c2 = kernels::ternarize(b2.transpose(0, 1), 0.05, wp, wn);
  auto g2 = kernels::ternarize(b2.to(cuda).transpose(0, 1), 0.05, wp.to(cuda), wn.to(cuda));
  EXPECT_EQ(g2.wq.to_vector<float>(), c2.wq.to_vector<float>());
}

TEST(TernarizeCuda, NoHostRoundTrip) {
  const Device cuda = Device::cuda(0);
  TTQ_SKIP_IF_NO_DEVICE(cuda);
  Tensor w = test::rand({5000}, 13, DType::F32, cuda);
  Tensor wp = Tensor::full({1}, 1.0, DType::F32, cuda), wn = Tensor::full({1}, 1.0, DType::F32, cuda);
  kernels::ternarize(w, 0.05, wp, wn);  // warm-up
  const CopyStats before = copy_stats();
  auto r = kernels::ternarize(w, 0.05, wp, wn, all_outputs());
  const CopyStats after = copy_stats();
  EXPECT_EQ(after.device_to_host, before.device_to_host);
  EXPECT_EQ(after.host_to_device, before.host_to_device);
  EXPECT_TRUE(test::all_finite(r.wq));
}

}  // namespace
}  // namespace ttq
