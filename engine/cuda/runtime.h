// CUDA runtime services used by the engine core: availability, the caching
// device allocator, the per-device compute stream, and copies. Declared for
// every build; without TTQ_HAS_CUDA, available() is false and the rest throws.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ttq::cuda {

// Compiled in, a device present, and TTQ_DISABLE_CUDA unset.
bool available();
int device_count();

// Caching allocator: blocks are kept per device and size class and reused;
// cudaMalloc only when no cached block fits. Thread-safe.
void* allocate(size_t nbytes, int device);
void deallocate(void* ptr, int device);
struct AllocatorStats {
  size_t allocated_bytes = 0;  // live blocks handed out
  size_t reserved_bytes = 0;   // held from the driver (live + cached)
  size_t peak_allocated_bytes = 0;
  uint64_t driver_mallocs = 0;  // cudaMalloc calls so far
};
AllocatorStats allocator_stats(int device = 0);
void reset_peak_stats(int device = 0);
void empty_cache();  // returns cached blocks to the driver

// The engine's compute stream on the current device (a cudaStream_t).
void* current_stream();
void synchronize();

// Pinned host memory (for input batches): allocate/free.
void* host_alloc_pinned(size_t nbytes);
void host_free_pinned(void* p);

enum class CopyKind { HostToDevice, DeviceToHost, DeviceToDevice };
// Copies on the compute stream; DeviceToHost waits for completion.
void memcpy(void* dst, const void* src, size_t nbytes, CopyKind kind);
void memset_zero(void* dst, size_t nbytes);

}  // namespace ttq::cuda
