// CUDA runtime services: availability, caching allocator, stream, copies.
// The allocator rounds requests up (512 B granularity below 1 MiB, 2 MiB
// above) and keeps freed blocks in a per-device multimap keyed by size; a
// request takes the smallest cached block that fits within 2x of its size.
// Steady-state training therefore makes no cudaMalloc / cudaFree calls.
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"

namespace ttq::cuda {

namespace detail {
const char* cublas_status_string(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "unknown cuBLAS status";
}
}  // namespace detail

bool available() {
  static const bool ok = [] {
    const char* off = std::getenv("TTQ_DISABLE_CUDA");
    if (off != nullptr && off[0] != '\0' && off[0] != '0') return false;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return false;
    }
    return n > 0;
  }();
  return ok;
}

int device_count() {
  if (!available()) return 0;
  int n = 0;
  TTQ_CUDA_CHECK(cudaGetDeviceCount(&n));
  return n;
}

namespace {

size_t round_size(size_t n) {
  if (n == 0) n = 1;
  if (n < (1u << 20)) return (n + 511) & ~size_t(511);
  return (n + (2u << 20) - 1) & ~((size_t(2) << 20) - 1);
}

struct DeviceCache {
  std::multimap<size_t, void*> free_blocks;
  std::unordered_map<void*, size_t> live;
  AllocatorStats stats;
};

struct Allocator {
  std::mutex mu;
  std::vector<DeviceCache> devices;
  DeviceCache& dev(int d) {
    if (devices.size() <= static_cast<size_t>(d)) devices.resize(d + 1);
    return devices[d];
  }
};

Allocator& allocator() {
  static Allocator* a = new Allocator();  // leaked on purpose: outlives static tensors
  return *a;
}

}  // namespace

void* allocate(size_t nbytes, int device) {
  TTQ_CHECK(available()) << "CUDA allocation requested but no CUDA device is available";
  size_t size = round_size(nbytes);
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  DeviceCache& c = a.dev(device);
  void* p = nullptr;
  auto it = c.free_blocks.lower_bound(size);
  if (it != c.free_blocks.end() && it->first <= 2 * size) {
    size = it->first;
    p = it->second;
    c.free_blocks.erase(it);
  } else {
    TTQ_CUDA_CHECK(cudaSetDevice(device));
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
      // Give the cache back to the driver and try once more.
      cudaGetLastError();
      for (auto& [sz, blk] : c.free_blocks) {
        TTQ_CUDA_CHECK(cudaFree(blk));
        c.stats.reserved_bytes -= sz;
      }
      c.free_blocks.clear();
      err = cudaMalloc(&p, size);
    }
    TTQ_CUDA_CHECK(err);
    c.stats.reserved_bytes += size;
    c.stats.driver_mallocs++;
  }
  c.live[p] = size;
  c.stats.allocated_bytes += size;
  if (c.stats.allocated_bytes > c.stats.peak_allocated_bytes)
    c.stats.peak_allocated_bytes = c.stats.allocated_bytes;
  return p;
}

void deallocate(void* ptr, int device) {
  if (ptr == nullptr) return;
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  DeviceCache& c = a.dev(device);
  auto it = c.live.find(ptr);
  if (it == c.live.end()) {
    std::fprintf(stderr, "ttq: deallocate of an unknown CUDA block %p\n", ptr);
    return;
  }
  c.stats.allocated_bytes -= it->second;
  c.free_blocks.emplace(it->second, ptr);
  c.live.erase(it);
}

AllocatorStats allocator_stats(int device) {
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  return a.dev(device).stats;
}

void reset_peak_stats(int device) {
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  a.dev(device).stats.peak_allocated_bytes = a.dev(device).stats.allocated_bytes;
}

void empty_cache() {
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  for (size_t d = 0; d < a.devices.size(); ++d) {
    DeviceCache& c = a.devices[d];
    if (c.free_blocks.empty()) continue;
    TTQ_CUDA_CHECK(cudaSetDevice(static_cast<int>(d)));
    TTQ_CUDA_CHECK(cudaDeviceSynchronize());
    for (auto& [sz, blk] : c.free_blocks) {
      TTQ_CUDA_CHECK(cudaFree(blk));
      c.stats.reserved_bytes -= sz;
    }
    c.free_blocks.clear();
  }
}

void* current_stream() {
  // One non-blocking compute stream per device, created on first use.
  static thread_local std::vector<cudaStream_t> streams;
  int d = 0;
  TTQ_CUDA_CHECK(cudaGetDevice(&d));
  if (streams.size() <= static_cast<size_t>(d)) streams.resize(d + 1, nullptr);
  if (streams[d] == nullptr) TTQ_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[d], cudaStreamNonBlocking));
  return streams[d];
}

void synchronize() { TTQ_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(current_stream()))); }

void* host_alloc_pinned(size_t nbytes) {
  void* p = nullptr;
  TTQ_CUDA_CHECK(cudaMallocHost(&p, nbytes == 0 ? 1 : nbytes));
  return p;
}

void host_free_pinned(void* p) {
  if (p != nullptr) TTQ_CUDA_CHECK_NOTHROW(cudaFreeHost(p));
}

void memcpy(void* dst, const void* src, size_t nbytes, CopyKind kind) {
  if (nbytes == 0) return;
  auto stream = static_cast<cudaStream_t>(current_stream());
  cudaMemcpyKind k = kind == CopyKind::HostToDevice   ? cudaMemcpyHostToDevice
                     : kind == CopyKind::DeviceToHost ? cudaMemcpyDeviceToHost
                                                      : cudaMemcpyDeviceToDevice;
  TTQ_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, k, stream));
  if (kind != CopyKind::DeviceToDevice) TTQ_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void memset_zero(void* dst, size_t nbytes) {
  if (nbytes == 0) return;
  TTQ_CUDA_CHECK(cudaMemsetAsync(dst, 0, nbytes, static_cast<cudaStream_t>(current_stream())));
}

}  // namespace ttq::cuda
