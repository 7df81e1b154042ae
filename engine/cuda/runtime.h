// CUDA runtime services used by the engine core: availability, the caching
// device allocator, the per-device compute stream, copies, pinned host buffers
// and the TF32 policy. Declared for every build; without TTQ_HAS_CUDA,
// available() is false, PinnedBuffer holds ordinary host memory and the rest
// throws. Implementation: runtime.cu (runtime_none.cpp without CUDA).
// Tests: tests/test_cuda_runtime.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace ttq::cuda {

// Compiled in, a device present, and TTQ_DISABLE_CUDA unset (or "0").
bool available();
int device_count();

// Caching allocator: blocks are kept per device and size class and reused;
// cudaMalloc only when no cached block fits. Thread-safe. Blocks are used in
// the order of the device's one compute stream, so a block freed by the host
// may be handed out again at once: later work on the stream runs after the
// work that used it.
void* allocate(size_t nbytes, int device);
void deallocate(void* ptr, int device);
struct AllocatorStats {
  size_t allocated_bytes = 0;  // live blocks handed out
  size_t reserved_bytes = 0;   // held from the driver (live + cached)
  size_t peak_allocated_bytes = 0;
  uint64_t driver_mallocs = 0;  // cudaMalloc calls so far
  uint64_t driver_frees = 0;    // cudaFree calls so far
};
AllocatorStats allocator_stats(int device = 0);
void reset_peak_stats(int device = 0);
void empty_cache();  // returns cached blocks to the driver

// The engine's compute stream on the current device (a cudaStream_t): one per
// device for the whole process, shared by every thread, created on first use.
void* current_stream();
// Waits for all work queued on the current device's compute stream.
void synchronize();

// TF32 tensor-core math for fp32 convolutions (cuDNN) and GEMMs (cuBLAS):
// 10-bit mantissas in the products, about 1e-3 relative error, several times
// faster on Ampere and Hopper. Off by default (tests compare with the CPU at
// 1e-5); TTQ_ALLOW_TF32=1 in the environment turns it on at start-up, and
// set_allow_tf32() at any time (convolution algorithms are cached per setting).
bool allow_tf32();
void set_allow_tf32(bool on);

// Pinned host memory (for input batches): allocate/free.
void* host_alloc_pinned(size_t nbytes);
void host_free_pinned(void* p);
// Page-locks an existing host range [p, p + n) (cudaHostRegister); false, with no
// error left pending, when it cannot (no CUDA, or a range sharing a page with one
// already registered). host_unregister undoes it (no-op for an unregistered range).
bool host_register(void* p, size_t n);
void host_unregister(void* p);

// The current device's index (0 without CUDA).
int current_device();
// The architecture (major * 10 + minor, e.g. 90) of the binary code that `kernel`
// (a __global__ function's address) runs as on the current device: a build for an
// older target runs PTX compiled for that target. 0 without CUDA.
int kernel_binary_version(const void* kernel);

// Work queued on the compute stream, recorded once and replayed as one CUDA graph
// (stream capture). Without CUDA, capture() returns false and nothing is recorded.
// Move-only.
class CapturedWork {
 public:
  CapturedWork() = default;
  ~CapturedWork();
  CapturedWork(CapturedWork&& o) noexcept;
  CapturedWork& operator=(CapturedWork&& o) noexcept;
  CapturedWork(const CapturedWork&) = delete;
  CapturedWork& operator=(const CapturedWork&) = delete;
  // Runs `queue` (which must only queue work on the current device's compute
  // stream) under stream capture and instantiates the result. Returns false, with
  // no error left pending and nothing kept, when capture or instantiation fails
  // (or `queue` throws); the caller then runs its work eagerly.
  bool capture(const std::function<void()>& queue);
  bool captured() const { return m_exec != nullptr; }
  // requires captured(). Queues the recorded work on the compute stream.
  void launch();

 private:
  void release() noexcept;
  void* m_graph = nullptr;  // cudaGraph_t
  void* m_exec = nullptr;   // cudaGraphExec_t
};

enum class CopyKind { HostToDevice, DeviceToHost, DeviceToDevice };
// Copies on the compute stream; HostToDevice and DeviceToHost wait for
// completion (so pageable host memory may be reused at once).
void memcpy(void* dst, const void* src, size_t nbytes, CopyKind kind);
// Host-to-device copy that returns at once: `src` must be pinned and must not
// be modified until the stream has reached the copy (PinnedBuffer tracks this).
void memcpy_h2d_async(void* dst, const void* src, size_t nbytes);

// A marker in the compute stream: record() notes the work queued so far on
// the current device; synchronize() blocks until it is done. With
// memcpy_h2d_async it lets a loader reuse a pinned (or cudaHostRegister'ed)
// host buffer once its upload has been read. Without CUDA every call is a
// no-op (nothing is ever queued). Move-only.
class StreamEvent {
 public:
  StreamEvent() = default;
  ~StreamEvent();
  StreamEvent(StreamEvent&& o) noexcept;
  StreamEvent& operator=(StreamEvent&& o) noexcept;
  StreamEvent(const StreamEvent&) = delete;
  StreamEvent& operator=(const StreamEvent&) = delete;

  void record();
  // ensures all work queued before the last record() has finished (no-op if never recorded).
  void synchronize();
  bool ready() const;  // does not block

 private:
  void* m_event = nullptr;  // cudaEvent_t
};

// A page-locked host buffer for staging input batches: the data loader fills
// it on a worker thread, upload_async() queues the host-to-device copy on the
// compute stream and returns at once, and wait() blocks until that copy has
// read the buffer (call it before refilling). Without a usable CUDA device the
// buffer is ordinary host memory (pinned() is false) and upload_async throws,
// so CPU-only code can use the same type. Move-only.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t nbytes);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* data() { return m_data; }
  const void* data() const { return m_data; }
  size_t size() const { return m_size; }
  bool pinned() const { return m_pinned; }

  // requires nbytes <= size(), dst a device allocation of >= nbytes on `device`.
  // ensures the copy of data()[0, nbytes) is queued on that device's compute
  // stream; work queued after it sees the data.
  void upload_async(void* dst, size_t nbytes, int device = 0);
  // ensures every upload queued so far has finished reading the buffer.
  void wait();
  // True when no queued upload is still reading the buffer (does not block).
  bool ready() const;

 private:
  void release() noexcept;
  void* m_data = nullptr;
  size_t m_size = 0;
  bool m_pinned = false;
  void* m_event = nullptr;  // cudaEvent_t recorded after the last upload
};

}  // namespace ttq::cuda
