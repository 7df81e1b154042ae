// The CUDA runtime services (engine/cuda/runtime.h): availability and
// TTQ_DISABLE_CUDA, the caching allocator (reuse, no driver allocations in
// steady state, statistics), the shared compute stream, copies between and
// within devices (strided, dtype-converting), pinned buffers, the TF32 switch
// and the deterministic full reduction. Device tests skip without a GPU; the
// availability and pinned-buffer fallbacks run everywhere.
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "engine/backend.h"
#include "engine/cuda/runtime.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

#define TTQ_SKIP_IF_NO_CUDA() \
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device"

const Device kCuda = Device::cuda(0);

// Runs this test program again with `env` set and one test selected; returns its output.
std::string run_child(const std::string& env, const std::string& filter) {
  char self[4096] = {};
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "";
  const std::string cmd =
      env + " '" + std::string(self, static_cast<size_t>(n)) + "' --gtest_filter=" + filter + " 2>&1";
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    std::array<char, 512> buf{};
    while (fgets(buf.data(), static_cast<int>(buf.size()), p) != nullptr) out += buf.data();
    pclose(p);
  }
  return out;
}

// Helper for the availability test: prints what this process sees.
TEST(CudaRuntime, ReportAvailability) {
  std::printf("ttq-cuda-available=%d devices=%d\n", cuda::available() ? 1 : 0, cuda::device_count());
  EXPECT_EQ(cuda::available(), cuda::device_count() > 0);
}

TEST(CudaRuntime, DisableEnvironmentVariable) {
  const std::string off = run_child("TTQ_DISABLE_CUDA=1", "CudaRuntime.ReportAvailability");
  EXPECT_NE(off.find("ttq-cuda-available=0 devices=0"), std::string::npos) << off;
  // "0" means not disabled: the child sees what this process sees.
  const std::string on = run_child("TTQ_DISABLE_CUDA=0", "CudaRuntime.ReportAvailability");
  const std::string expect = std::string("ttq-cuda-available=") + (cuda::available() ? "1" : "0");
  EXPECT_NE(on.find(expect), std::string::npos) << on;
  if (!cuda::available()) {
    EXPECT_THROW(Tensor::empty({4}, DType::F32, kCuda), Error);
  }
}

TEST(CudaRuntime, Tf32SwitchDefaultsOff) {
  const char* env = std::getenv("TTQ_ALLOW_TF32");
  if (env == nullptr || std::strcmp(env, "0") == 0) {
    EXPECT_FALSE(cuda::allow_tf32());
  }
  const bool before = cuda::allow_tf32();
  cuda::set_allow_tf32(true);
  EXPECT_TRUE(cuda::allow_tf32());
  cuda::set_allow_tf32(false);
  EXPECT_FALSE(cuda::allow_tf32());
  cuda::set_allow_tf32(before);
}

// Without a device a PinnedBuffer is ordinary memory that cannot upload.
TEST(CudaRuntime, PinnedBufferWithoutDevice) {
  if (cuda::available()) GTEST_SKIP() << "a CUDA device is present";
  cuda::PinnedBuffer b(100);
  EXPECT_FALSE(b.pinned());
  ASSERT_NE(b.data(), nullptr);
  std::memset(b.data(), 7, 100);  // writable
  EXPECT_TRUE(b.ready());
  EXPECT_THROW(b.upload_async(nullptr, 10, 0), Error);
  cuda::PinnedBuffer moved = std::move(b);
  EXPECT_EQ(moved.size(), 100u);
  EXPECT_EQ(b.data(), nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
}

// ---- device tests ----------------------------------------------------------------

TEST(CudaRuntime, AllocatorReusesBlocksInSteadyState) {
  TTQ_SKIP_IF_NO_CUDA();
  const Shape sizes[] = {{1}, {1000}, {3, 333}, {1 << 20}, {5, 1 << 18}, {7}};
  auto churn = [&] {
    std::vector<Tensor> live;
    for (int rep = 0; rep < 3; ++rep)
      for (const Shape& s : sizes) live.push_back(Tensor::empty(s, DType::F32, kCuda));
    live.clear();
  };
  churn();  // warm-up fills the cache
  const cuda::AllocatorStats warm = cuda::allocator_stats(0);
  for (int i = 0; i < 5; ++i) churn();
  const cuda::AllocatorStats after = cuda::allocator_stats(0);
  EXPECT_EQ(after.driver_mallocs, warm.driver_mallocs) << "cudaMalloc in steady state";
  EXPECT_EQ(after.reserved_bytes, warm.reserved_bytes);
  EXPECT_EQ(after.allocated_bytes, warm.allocated_bytes) << "every block handed back";

  // A freed block is handed out again for the same size.
  void* p = cuda::allocate(12345, 0);
  cuda::deallocate(p, 0);
  void* q = cuda::allocate(12345, 0);
  EXPECT_EQ(p, q);
  cuda::deallocate(q, 0);
}

TEST(CudaRuntime, PeakAndLiveStatistics) {
  TTQ_SKIP_IF_NO_CUDA();
  cuda::synchronize();
  const size_t base = cuda::allocator_stats(0).allocated_bytes;
  cuda::reset_peak_stats(0);
  EXPECT_EQ(cuda::allocator_stats(0).peak_allocated_bytes, base);
  {
    Tensor a = Tensor::empty({1 << 20}, DType::F32, kCuda);  // 4 MiB, rounded to 2 MiB multiples
    Tensor b = Tensor::empty({1 << 18}, DType::F32, kCuda);  // 1 MiB
    const cuda::AllocatorStats s = cuda::allocator_stats(0);
    EXPECT_GE(s.allocated_bytes, base + (5u << 20));
    EXPECT_LE(s.allocated_bytes, base + (8u << 20));  // rounding overhead bounded
    EXPECT_GE(s.reserved_bytes, s.allocated_bytes);
  }
  const cuda::AllocatorStats s = cuda::allocator_stats(0);
  EXPECT_EQ(s.allocated_bytes, base);
  EXPECT_GE(s.peak_allocated_bytes, base + (5u << 20));
  // empty_cache returns the cached blocks to the driver.
  const uint64_t frees = s.driver_frees;
  cuda::empty_cache();
  EXPECT_EQ(cuda::allocator_stats(0).reserved_bytes, cuda::allocator_stats(0).allocated_bytes);
  EXPECT_GE(cuda::allocator_stats(0).driver_frees, frees);
}

TEST(CudaRuntime, OpsMakeNoDriverAllocationsInSteadyState) {
  TTQ_SKIP_IF_NO_CUDA();
  const Tensor x = test::rand({64, 33}, 1, DType::F32, kCuda);
  auto step = [&] {
    Tensor y = Tensor::empty(x.shape(), DType::F32, kCuda), s = Tensor::empty({}, DType::F32, kCuda);
    TTQ_BACKEND(kCuda, relu_forward)(x, y);
    TTQ_BACKEND(kCuda, axpby)(2.0, y, -1.0, x, y);
    TTQ_BACKEND(kCuda, sum_all)(y, s);
    Tensor c = Tensor::empty({64, 64}, DType::F32, kCuda);
    TTQ_BACKEND(kCuda, gemm)(false, true, 1.0, x, x, 0.0, c);
    return s.item();
  };
  const double first = step();
  step();
  const uint64_t mallocs = cuda::allocator_stats(0).driver_mallocs;
  for (int i = 0; i < 10; ++i) EXPECT_EQ(step(), first) << "deterministic";
  EXPECT_EQ(cuda::allocator_stats(0).driver_mallocs, mallocs);
}

TEST(CudaRuntime, OneStreamForAllThreads) {
  TTQ_SKIP_IF_NO_CUDA();
  void* mine = cuda::current_stream();
  void* theirs = nullptr;
  std::thread t([&] { theirs = cuda::current_stream(); });
  t.join();
  EXPECT_NE(mine, nullptr);
  EXPECT_EQ(mine, theirs);
}

TEST(CudaRuntime, CopiesRoundTripAndCount) {
  TTQ_SKIP_IF_NO_CUDA();
  const Tensor h = test::rand({3, 5, 7}, 2, DType::F32);
  const CopyStats before = copy_stats();
  const Tensor d = h.to(kCuda);
  EXPECT_EQ(d.device(), kCuda);
  EXPECT_EQ(d.to(Device::cpu()).to_vector<float>(), h.to_vector<float>());
  const CopyStats after = copy_stats();
  EXPECT_EQ(after.host_to_device - before.host_to_device, 1u);
  EXPECT_EQ(after.device_to_host - before.device_to_host, 1u);
  // Device to device.
  EXPECT_EQ(d.clone().to_vector<float>(), h.to_vector<float>());
}

// Strided and dtype-converting copies on the device equal the CPU's, exactly.
TEST(CudaRuntime, StridedConvertingCopyMatchesCpu) {
  TTQ_SKIP_IF_NO_CUDA();
  Generator gen(3);
  // Values in [0, 200): every conversion, U8 included, is defined.
  const Tensor h = Tensor::uniform({4, 6, 5}, gen, 0.0, 200.0, DType::F64);
  const Tensor d = h.to(kCuda);
  for (DType src : {DType::F32, DType::F64, DType::I32, DType::I64, DType::U8}) {
    const Tensor hs = h.to(src).permute({2, 0, 1}), ds = d.to(src).permute({2, 0, 1});
    for (DType dst : {DType::F32, DType::F64, DType::I32, DType::I64, DType::U8}) {
      Tensor ho = Tensor::empty(hs.shape(), dst), dout = Tensor::empty(ds.shape(), dst, kCuda);
      test::poison(dout);
      cpu::copy(hs, ho);
      TTQ_BACKEND(kCuda, copy)(ds, dout);
      EXPECT_EQ(dout.to_vector<double>(), ho.to_vector<double>())
          << dtype_name(src) << " -> " << dtype_name(dst);
    }
  }
  // Strided destination: write into every other column of a wider tensor.
  Tensor wide_h = Tensor::zeros({4, 12}, DType::F32), wide_d = Tensor::zeros({4, 12}, DType::F32, kCuda);
  const Tensor src = test::rand({4, 6}, 4, DType::F32);
  Tensor vh = wide_h.as_strided({4, 6}, {12, 2}, 1), vd = wide_d.as_strided({4, 6}, {12, 2}, 1);
  cpu::copy(src, vh);
  TTQ_BACKEND(kCuda, copy)(src.to(kCuda), vd);
  EXPECT_EQ(wide_d.to_vector<float>(), wide_h.to_vector<float>());
  // Broadcast (stride 0) source and a strided fill.
  Tensor s = Tensor::from_vector<float>({2.5f}, {1}).to(kCuda);
  Tensor b = Tensor::empty({3, 4}, DType::F32, kCuda);
  TTQ_BACKEND(kCuda, copy)(s.as_strided({3, 4}, {0, 0}, 0), b);
  EXPECT_EQ(b.to_vector<float>(), std::vector<float>(12, 2.5f));
  TTQ_BACKEND(kCuda, fill)(vd, -1.0);
  cpu::fill(vh, -1.0);
  EXPECT_EQ(wide_d.to_vector<float>(), wide_h.to_vector<float>());
  // Integer fills.
  Tensor li = Tensor::empty({5}, DType::I64, kCuda);
  TTQ_BACKEND(kCuda, fill)(li, 7);
  EXPECT_EQ(li.to_vector<int64_t>(), std::vector<int64_t>(5, 7));
}

TEST(CudaRuntime, PinnedUploadIsAsynchronousAndCorrect) {
  TTQ_SKIP_IF_NO_CUDA();
  const size_t n = 1 << 20;
  cuda::PinnedBuffer buf(n * sizeof(float));
  ASSERT_TRUE(buf.pinned());
  Tensor dst = Tensor::empty({static_cast<int64_t>(n)}, DType::F32, kCuda);
  for (int round = 0; round < 3; ++round) {
    buf.wait();  // the previous upload has read the buffer: refill it
    auto* p = static_cast<float*>(buf.data());
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<float>(i % 1000) + round;
    buf.upload_async(dst.raw_data(), dst.nbytes(), 0);
    const auto v = dst.to_vector<float>();  // queued behind the upload on the same stream
    ASSERT_EQ(v.size(), n);
    EXPECT_EQ(v[0], static_cast<float>(round));
    EXPECT_EQ(v[n - 1], static_cast<float>((n - 1) % 1000) + round);
    EXPECT_EQ(v[12345], static_cast<float>(12345 % 1000) + round);
  }
  buf.wait();
  EXPECT_TRUE(buf.ready());
  EXPECT_THROW(buf.upload_async(dst.raw_data(), buf.size() + 1, 0), Error);
  cuda::PinnedBuffer moved = std::move(buf);
  EXPECT_TRUE(moved.pinned());
  EXPECT_EQ(moved.size(), n * sizeof(float));
}

// memcpy_h2d_async from page-locked memory, fenced by a StreamEvent.
TEST(CudaRuntime, AsyncUploadWithStreamEvent) {
  TTQ_SKIP_IF_NO_CUDA();
  const size_t n = 4096;
  auto* host = static_cast<float*>(cuda::host_alloc_pinned(n * sizeof(float)));
  Tensor dst = Tensor::empty({static_cast<int64_t>(n)}, DType::F32, kCuda);
  cuda::StreamEvent done;
  EXPECT_TRUE(done.ready());  // never recorded
  for (int round = 0; round < 2; ++round) {
    done.synchronize();
    for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>(i) * (round + 1);
    cuda::memcpy_h2d_async(dst.raw_data(), host, n * sizeof(float));
    done.record();
    const auto v = dst.to_vector<float>();
    EXPECT_EQ(v[n - 1], static_cast<float>(n - 1) * (round + 1));
  }
  done.synchronize();
  EXPECT_TRUE(done.ready());
  cuda::StreamEvent moved = std::move(done);
  moved.synchronize();
  cuda::host_free_pinned(host);
}

// sum_all: fixed-order, so the same bits every time, and close to a double sum.
TEST(CudaRuntime, SumAllIsDeterministic) {
  TTQ_SKIP_IF_NO_CUDA();
  for (int64_t n : {int64_t(1), int64_t(7 * 31), int64_t(1000003)}) {
    const Tensor h = test::rand({n}, 5, DType::F32);
    const Tensor d = h.to(kCuda);
    Tensor s1 = Tensor::empty({}, DType::F32, kCuda), s2 = Tensor::empty({}, DType::F32, kCuda);
    test::poison(s1);
    TTQ_BACKEND(kCuda, sum_all)(d, s1);
    TTQ_BACKEND(kCuda, sum_all)(d, s2);
    EXPECT_EQ(s1.item(), s2.item()) << n;
    double ref = 0;
    for (float v : h.to_vector<float>()) ref += v;
    EXPECT_NEAR(s1.item(), ref, 1e-6 * std::max(1.0, std::fabs(ref)) + 1e-3) << n;
    // A strided view sums the same elements.
    if (n > 1) {
      const Tensor pair = Tensor::empty({n, 2}, DType::F32, kCuda);
      Tensor col = pair.select(1, 0);
      TTQ_BACKEND(kCuda, copy)(d, col);
      Tensor s3 = Tensor::empty({}, DType::F32, kCuda);
      TTQ_BACKEND(kCuda, sum_all)(col, s3);
      EXPECT_NEAR(s3.item(), ref, 1e-6 * std::max(1.0, std::fabs(ref)) + 1e-3) << n;
    }
  }
}

// An empty tensor is fine everywhere: no launch, nothing written.
TEST(CudaRuntime, EmptyTensors) {
  TTQ_SKIP_IF_NO_CUDA();
  Tensor e = Tensor::empty({0, 3}, DType::F32, kCuda);
  TTQ_BACKEND(kCuda, fill)(e, 1.0);
  Tensor f = Tensor::empty({0, 3}, DType::F32, kCuda);
  TTQ_BACKEND(kCuda, copy)(e, f);
  TTQ_BACKEND(kCuda, relu_forward)(e, f);
  Tensor s = Tensor::empty({}, DType::F32, kCuda);
  TTQ_BACKEND(kCuda, sum_all)(e, s);
  EXPECT_EQ(s.item(), 0.0);
  cuda::synchronize();
}

}  // namespace
}  // namespace ttq
