#include "engine/storage.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/cuda/runtime.h"
#include "engine/error.h"

namespace ttq {

namespace {
std::atomic<uint64_t> g_h2d{0};
std::atomic<uint64_t> g_d2h{0};
}  // namespace

Storage::Storage(size_t nbytes, Device device) : m_nbytes(nbytes), m_device(device) {
  if (device.is_cuda()) {
    m_data = cuda::allocate(nbytes, device.index);
  } else {
    size_t n = (nbytes + 63) & ~size_t(63);
    m_data = std::aligned_alloc(64, n == 0 ? 64 : n);
    if (m_data == nullptr) throw std::bad_alloc();
  }
}

Storage::~Storage() {
  if (m_device.is_cuda()) {
    cuda::deallocate(m_data, m_device.index);
  } else {
    std::free(m_data);
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
