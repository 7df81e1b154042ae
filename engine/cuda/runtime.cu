// CUDA runtime services: availability, caching allocator, streams, copies,
// pinned buffers, the TF32 policy. Declared in runtime.h; tested by
// tests/test_cuda_runtime.cpp.
//
// The allocator rounds requests up (512 B granularity below 1 MiB, 2 MiB
// above) and keeps freed blocks in a per-device multimap keyed by size; a
// request takes the smallest cached block that fits within 2x of its size.
// Steady-state training therefore makes no cudaMalloc / cudaFree calls.
// Reuse without events is safe because each device has exactly one compute
// stream, shared by all threads: the next user of a block is queued behind
// the last one.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>
#include <utility>
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
    if (off != nullptr && off[0] != '\0' && std::strcmp(off, "0") != 0) return false;
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

// ---- TF32 policy ---------------------------------------------------------------

namespace {
bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] == '\0') return fallback;
  return std::strcmp(v, "0") != 0 && std::strcmp(v, "false") != 0 && std::strcmp(v, "off") != 0;
}
std::atomic<bool>& tf32_flag() {
  static std::atomic<bool> flag{env_flag("TTQ_ALLOW_TF32", false)};
  return flag;
}
}  // namespace

bool allow_tf32() { return tf32_flag().load(std::memory_order_relaxed); }
void set_allow_tf32(bool on) { tf32_flag().store(on, std::memory_order_relaxed); }

// ---- caching allocator ---------------------------------------------------------

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

// Frees every cached block of one device (caller holds the lock).
void release_cached(DeviceCache& c, int device) {
  if (c.free_blocks.empty()) return;
  TTQ_CUDA_CHECK(cudaSetDevice(device));
  TTQ_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto& [sz, blk] : c.free_blocks) {
    TTQ_CUDA_CHECK(cudaFree(blk));
    c.stats.reserved_bytes -= sz;
    c.stats.driver_frees++;
  }
  c.free_blocks.clear();
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
    int prev = 0;
    TTQ_CUDA_CHECK(cudaGetDevice(&prev));
    TTQ_CUDA_CHECK(cudaSetDevice(device));
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
      // Give the cache back to the driver and try once more.
      cudaGetLastError();
      release_cached(c, device);
      err = cudaMalloc(&p, size);
    }
    if (prev != device) TTQ_CUDA_CHECK(cudaSetDevice(prev));
    if (err != cudaSuccess) {
      cudaGetLastError();
      TTQ_THROW() << "CUDA out of memory allocating " << nbytes << " bytes on cuda:" << device << " ("
                  << c.stats.allocated_bytes << " bytes in use, " << c.stats.reserved_bytes
                  << " reserved): " << cudaGetErrorString(err);
    }
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
  int prev = 0;
  TTQ_CUDA_CHECK(cudaGetDevice(&prev));
  for (size_t d = 0; d < a.devices.size(); ++d) release_cached(a.devices[d], static_cast<int>(d));
  TTQ_CUDA_CHECK(cudaSetDevice(prev));
}

// ---- streams and copies --------------------------------------------------------

void* current_stream() {
  // One non-blocking compute stream per device for the whole process: every
  // thread queues on it, which is what makes the allocator's reuse safe.
  static std::mutex mu;
  static std::vector<cudaStream_t>* streams = new std::vector<cudaStream_t>();  // never destroyed
  int d = 0;
  TTQ_CUDA_CHECK(cudaGetDevice(&d));
  std::lock_guard<std::mutex> lock(mu);
  if (streams->size() <= static_cast<size_t>(d)) streams->resize(d + 1, nullptr);
  cudaStream_t& s = (*streams)[d];
  if (s == nullptr) TTQ_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
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

bool host_register(void* p, size_t n) {
  if (!available() || p == nullptr || n == 0) return false;
  if (cudaHostRegister(p, n, cudaHostRegisterDefault) == cudaSuccess) return true;
  (void)cudaGetLastError();  // ranges sharing a page with a registered one are refused: stay pageable
  return false;
}

void host_unregister(void* p) {
  if (p != nullptr && cudaHostUnregister(p) != cudaSuccess) (void)cudaGetLastError();
}

int current_device() {
  if (!available()) return 0;
  int d = 0;
  TTQ_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

int kernel_binary_version(const void* kernel) {
  if (!available()) return 0;
  cudaFuncAttributes attr{};
  TTQ_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  return attr.binaryVersion;
}

// ---- captured work (CUDA graphs) -------------------------------------------------

CapturedWork::~CapturedWork() { release(); }

CapturedWork::CapturedWork(CapturedWork&& o) noexcept
    : m_graph(std::exchange(o.m_graph, nullptr)), m_exec(std::exchange(o.m_exec, nullptr)) {}

CapturedWork& CapturedWork::operator=(CapturedWork&& o) noexcept {
  if (this != &o) {
    release();
    m_graph = std::exchange(o.m_graph, nullptr);
    m_exec = std::exchange(o.m_exec, nullptr);
  }
  return *this;
}

void CapturedWork::release() noexcept {
  if (m_exec) TTQ_CUDA_CHECK_NOTHROW(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(m_exec)));
  if (m_graph) TTQ_CUDA_CHECK_NOTHROW(cudaGraphDestroy(static_cast<cudaGraph_t>(m_graph)));
  m_exec = m_graph = nullptr;
}

bool CapturedWork::capture(const std::function<void()>& queue) {
  release();
  if (!available()) return false;
  auto stream = static_cast<cudaStream_t>(current_stream());
  synchronize();
  bool ok = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  if (ok) {
    try {
      queue();
    } catch (const std::exception&) {
      ok = false;
    }
    cudaGraph_t graph = nullptr;
    ok = cudaStreamEndCapture(stream, &graph) == cudaSuccess && ok && graph != nullptr;
    if (ok) {
      m_graph = graph;
      cudaGraphExec_t exec = nullptr;
      ok = cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
      m_exec = ok ? exec : nullptr;
    } else if (graph) {
      cudaGraphDestroy(graph);
    }
  }
  if (!ok) {
    (void)cudaGetLastError();  // clear the capture's error
    release();
  }
  return ok;
}

void CapturedWork::launch() {
  TTQ_CHECK(m_exec != nullptr) << "CapturedWork::launch: nothing captured";
  TTQ_CUDA_CHECK(
      cudaGraphLaunch(static_cast<cudaGraphExec_t>(m_exec), static_cast<cudaStream_t>(current_stream())));
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

void memcpy_h2d_async(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  TTQ_CUDA_CHECK(
      cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(current_stream())));
}

// ---- stream events -------------------------------------------------------------

StreamEvent::~StreamEvent() {
  if (m_event != nullptr) TTQ_CUDA_CHECK_NOTHROW(cudaEventDestroy(static_cast<cudaEvent_t>(m_event)));
}

StreamEvent::StreamEvent(StreamEvent&& o) noexcept : m_event(std::exchange(o.m_event, nullptr)) {}

StreamEvent& StreamEvent::operator=(StreamEvent&& o) noexcept {
  if (this != &o) {
    if (m_event != nullptr) TTQ_CUDA_CHECK_NOTHROW(cudaEventDestroy(static_cast<cudaEvent_t>(m_event)));
    m_event = std::exchange(o.m_event, nullptr);
  }
  return *this;
}

void StreamEvent::record() {
  if (m_event == nullptr) {
    cudaEvent_t e = nullptr;
    TTQ_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    m_event = e;
  }
  TTQ_CUDA_CHECK(
      cudaEventRecord(static_cast<cudaEvent_t>(m_event), static_cast<cudaStream_t>(current_stream())));
}

void StreamEvent::synchronize() {
  if (m_event != nullptr) TTQ_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(m_event)));
}

bool StreamEvent::ready() const {
  if (m_event == nullptr) return true;
  const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(m_event));
  if (e == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  TTQ_CUDA_CHECK(e);
  return true;
}

// ---- pinned buffers ------------------------------------------------------------

PinnedBuffer::PinnedBuffer(size_t nbytes) : m_size(nbytes) {
  if (available()) {
    m_data = host_alloc_pinned(nbytes);
    m_pinned = true;
  } else {
    m_data = std::malloc(nbytes == 0 ? 1 : nbytes);
    if (m_data == nullptr) throw std::bad_alloc();
  }
}

PinnedBuffer::~PinnedBuffer() { release(); }

PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : m_data(std::exchange(o.m_data, nullptr)),
      m_size(std::exchange(o.m_size, 0)),
      m_pinned(std::exchange(o.m_pinned, false)),
      m_event(std::exchange(o.m_event, nullptr)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    release();
    m_data = std::exchange(o.m_data, nullptr);
    m_size = std::exchange(o.m_size, 0);
    m_pinned = std::exchange(o.m_pinned, false);
    m_event = std::exchange(o.m_event, nullptr);
  }
  return *this;
}

void PinnedBuffer::release() noexcept {
  if (m_event != nullptr) {
    // The memory may still be read by a queued copy: wait before freeing it.
    TTQ_CUDA_CHECK_NOTHROW(cudaEventSynchronize(static_cast<cudaEvent_t>(m_event)));
    TTQ_CUDA_CHECK_NOTHROW(cudaEventDestroy(static_cast<cudaEvent_t>(m_event)));
    m_event = nullptr;
  }
  if (m_data != nullptr) {
    if (m_pinned) {
      host_free_pinned(m_data);
    } else {
      std::free(m_data);
    }
  }
  m_data = nullptr;
  m_size = 0;
  m_pinned = false;
}

void PinnedBuffer::upload_async(void* dst, size_t nbytes, int device) {
  TTQ_CHECK(m_pinned) << "PinnedBuffer::upload_async: no CUDA device (the buffer is not pinned)";
  TTQ_CHECK(nbytes <= m_size) << "PinnedBuffer::upload_async: " << nbytes << " bytes from a buffer of "
                              << m_size;
  int prev = 0;
  TTQ_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != device) TTQ_CUDA_CHECK(cudaSetDevice(device));
  auto stream = static_cast<cudaStream_t>(current_stream());
  if (m_event == nullptr) {
    cudaEvent_t e = nullptr;
    TTQ_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    m_event = e;
  }
  if (nbytes > 0) TTQ_CUDA_CHECK(cudaMemcpyAsync(dst, m_data, nbytes, cudaMemcpyHostToDevice, stream));
  TTQ_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(m_event), stream));
  if (prev != device) TTQ_CUDA_CHECK(cudaSetDevice(prev));
}

void PinnedBuffer::wait() {
  if (m_event != nullptr) TTQ_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(m_event)));
}

bool PinnedBuffer::ready() const {
  if (m_event == nullptr) return true;
  cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(m_event));
  if (e == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  TTQ_CUDA_CHECK(e);
  return true;
}

}  // namespace ttq::cuda
