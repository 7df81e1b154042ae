// The CUDA runtime interface in a build without CUDA: nothing is available.
#ifndef TTQ_HAS_CUDA
#include "engine/cuda/runtime.h"
#include "engine/error.h"

namespace ttq::cuda {

bool available() { return false; }
int device_count() { return 0; }
void* allocate(size_t, int) { TTQ_THROW() << "this build has no CUDA backend"; }
void deallocate(void*, int) {}
AllocatorStats allocator_stats(int) { return {}; }
void reset_peak_stats(int) {}
void empty_cache() {}
void* current_stream() { return nullptr; }
void synchronize() {}
void* host_alloc_pinned(size_t) { TTQ_THROW() << "this build has no CUDA backend"; }
void host_free_pinned(void*) {}
void memcpy(void*, const void*, size_t, CopyKind) { TTQ_THROW() << "this build has no CUDA backend"; }
void memset_zero(void*, size_t) { TTQ_THROW() << "this build has no CUDA backend"; }

}  // namespace ttq::cuda
#endif
