// Storage: one RAII allocation on one device, shared by tensor views through
// std::shared_ptr. CPU memory is 64-byte aligned; CUDA memory comes from the
// caching allocator of engine/cuda/runtime.h (never cudaMalloc per op).
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/device.h"

namespace ttq {

class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() { return m_data; }
  const void* data() const { return m_data; }
  size_t nbytes() const { return m_nbytes; }
  Device device() const { return m_device; }

 private:
  void* m_data = nullptr;
  size_t m_nbytes = 0;
  Device m_device;
};

// Copies nbytes between two (possibly different) devices; synchronous with
// respect to the host for device-to-host copies. Counted in copy_stats().
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

// Debug counters: host<->device copies made through copy_bytes since start.
struct CopyStats {
  uint64_t host_to_device = 0;
  uint64_t device_to_host = 0;
};
CopyStats copy_stats();

}  // namespace ttq
