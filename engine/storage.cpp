#include "engine/storage.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/cuda/runtime.h"
#include "engine/error.h"

namespace ttq {

namespace {
std::atomic<uint64_t> g_h2d{0};
std::atomic<uint64_t> g_d2h{0};

// Cache of freed large CPU blocks, by size class. A training step frees and
// reallocates the same few hundred activation-sized tensors every iteration;
// handing each back to the C library returns it to the kernel (mmap'd chunks),
// so the next step pays a page fault and a kernel zero-fill per 4 KiB page.
// Reused blocks are already resident. Blocks below kMinCached stay with malloc,
// whose own free lists serve them well. Classes are 8 per power of two (at most
// 12.5% slack); idle cached bytes are bounded (TTQ_CPU_CACHE_MB, default 1024,
// 0 disables the cache) and the whole cache is flushed when a release would
// pass the bound, so a change of workload never strands memory for long.
class HostBlockCache {
 public:
  static constexpr size_t kMinCached = size_t(1) << 16;

  static HostBlockCache& instance() {
    // Never destroyed: tensors in static objects may be freed after main().
    static HostBlockCache* cache = new HostBlockCache;
    return *cache;
  }

  // Bytes actually reserved for a request of n bytes.
  static size_t block_size(size_t n) {
    n = (n + 63) & ~size_t(63);
    if (n < kMinCached) return n == 0 ? 64 : n;
    const int top = 63 - __builtin_clzll(n);  // 2^top <= n < 2^(top+1)
    const size_t step = size_t(1) << (top - 3);
    return (n + step - 1) & ~(step - 1);
  }

  void* allocate(size_t size) {
    if (size >= kMinCached && m_limit > 0) {
      std::lock_guard<std::mutex> lock(m_mutex);
      auto it = m_free.find(size);
      if (it != m_free.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        m_cached -= size;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, size);
    if (p == nullptr) {
      flush();  // the cache may be what stands between us and success
      p = std::aligned_alloc(64, size);
      if (p == nullptr) throw std::bad_alloc();
    }
    return p;
  }

  void release(void* p, size_t size) {
    if (size < kMinCached || size > m_limit) {
      std::free(p);
      return;
    }
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(m_mutex);
      if (m_cached + size > m_limit) drop = take_all_locked();
      m_free[size].push_back(p);
      m_cached += size;
    }
    for (void* q : drop) std::free(q);
  }

  void flush() {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(m_mutex);
      drop = take_all_locked();
    }
    for (void* q : drop) std::free(q);
  }

 private:
  HostBlockCache() {
    const char* e = std::getenv("TTQ_CPU_CACHE_MB");
    size_t mb = 1024;
    if (e != nullptr && *e != '\0') mb = static_cast<size_t>(std::strtoull(e, nullptr, 10));
    m_limit = mb << 20;
  }

  std::vector<void*> take_all_locked() {
    std::vector<void*> all;
    for (auto& [size, blocks] : m_free) all.insert(all.end(), blocks.begin(), blocks.end());
    m_free.clear();
    m_cached = 0;
    return all;
  }

  std::mutex m_mutex;
  std::unordered_map<size_t, std::vector<void*>> m_free;
  size_t m_cached = 0;
  size_t m_limit = 0;
};

}  // namespace

Storage::Storage(size_t nbytes, Device device) : m_nbytes(nbytes), m_device(device) {
  if (device.is_cuda()) {
    m_data = cuda::allocate(nbytes, device.index);
  } else {
    m_data = HostBlockCache::instance().allocate(HostBlockCache::block_size(nbytes));
  }
}

Storage::~Storage() {
  if (m_device.is_cuda()) {
    cuda::deallocate(m_data, m_device.index);
  } else {
    HostBlockCache::instance().release(m_data, HostBlockCache::block_size(m_nbytes));
  }
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, nbytes);
  } else if (dst_device.is_cuda() && src_device.is_cpu()) {
    g_h2d++;
    cuda::memcpy(dst, src, nbytes, cuda::CopyKind::HostToDevice);
  } else if (dst_device.is_cpu() && src_device.is_cuda()) {
    g_d2h++;
    cuda::memcpy(dst, src, nbytes, cuda::CopyKind::DeviceToHost);
  } else {
    TTQ_CHECK(dst_device == src_device) << "copies between two CUDA devices are not supported";
    cuda::memcpy(dst, src, nbytes, cuda::CopyKind::DeviceToDevice);
  }
}

CopyStats copy_stats() { return {g_h2d.load(), g_d2h.load()}; }

}  // namespace ttq
