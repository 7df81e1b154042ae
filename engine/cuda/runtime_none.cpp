// The CUDA runtime interface in a build without CUDA: nothing is available,
// PinnedBuffer is ordinary host memory. The CUDA build uses runtime.cu.
#ifndef TTQ_HAS_CUDA
#include <atomic>
#include <cstdlib>
#include <new>
#include <utility>

#include "engine/cuda/runtime.h"
#include "engine/error.h"

namespace ttq::cuda {

namespace {
std::atomic<bool> g_tf32{false};
}

bool available() { return false; }
int device_count() { return 0; }
void* allocate(size_t, int) { TTQ_THROW() << "this build has no CUDA backend"; }
void deallocate(void*, int) {}
AllocatorStats allocator_stats(int) { return {}; }
void reset_peak_stats(int) {}
void empty_cache() {}
void* current_stream() { return nullptr; }
void synchronize() {}
bool allow_tf32() { return g_tf32.load(); }
void set_allow_tf32(bool on) { g_tf32.store(on); }
void* host_alloc_pinned(size_t) { TTQ_THROW() << "this build has no CUDA backend"; }
void host_free_pinned(void*) {}
bool host_register(void*, size_t) { return false; }
void host_unregister(void*) {}
int current_device() { return 0; }
int kernel_binary_version(const void*) { return 0; }

CapturedWork::~CapturedWork() = default;
CapturedWork::CapturedWork(CapturedWork&&) noexcept {}
CapturedWork& CapturedWork::operator=(CapturedWork&&) noexcept { return *this; }
bool CapturedWork::capture(const std::function<void()>&) { return false; }
void CapturedWork::launch() { TTQ_THROW() << "this build has no CUDA backend"; }
void CapturedWork::release() noexcept {}
void memcpy(void*, const void*, size_t, CopyKind) { TTQ_THROW() << "this build has no CUDA backend"; }
void memcpy_h2d_async(void*, const void*, size_t) { TTQ_THROW() << "this build has no CUDA backend"; }

StreamEvent::~StreamEvent() = default;
StreamEvent::StreamEvent(StreamEvent&& o) noexcept : m_event(std::exchange(o.m_event, nullptr)) {}
StreamEvent& StreamEvent::operator=(StreamEvent&& o) noexcept {
  m_event = std::exchange(o.m_event, nullptr);
  return *this;
}
void StreamEvent::record() {}
void StreamEvent::synchronize() {}
bool StreamEvent::ready() const { return true; }

PinnedBuffer::PinnedBuffer(size_t nbytes) : m_size(nbytes) {
  m_data = std::malloc(nbytes == 0 ? 1 : nbytes);
  if (m_data == nullptr) throw std::bad_alloc();
}
PinnedBuffer::~PinnedBuffer() { release(); }
PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : m_data(std::exchange(o.m_data, nullptr)), m_size(std::exchange(o.m_size, 0)) {}
PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    release();
    m_data = std::exchange(o.m_data, nullptr);
    m_size = std::exchange(o.m_size, 0);
  }
  return *this;
}
void PinnedBuffer::release() noexcept {
  std::free(m_data);
  m_data = nullptr;
  m_size = 0;
}
void PinnedBuffer::upload_async(void*, size_t, int) {
  TTQ_THROW() << "PinnedBuffer::upload_async: this build has no CUDA backend";
}
void PinnedBuffer::wait() {}
bool PinnedBuffer::ready() const { return true; }

}  // namespace ttq::cuda
#endif
