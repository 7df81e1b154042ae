// Per-device library state for the CUDA backend: one cuDNN and one cuBLAS
// handle per device, bound to that device's compute stream; a reusable scratch
// workspace; device properties; and a guard that makes a tensor's device
// current. CUDA builds only. Implementation: context.cu.
#pragma once

#ifdef TTQ_HAS_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#include "engine/tensor.h"

namespace ttq::cuda {

inline cudaStream_t stream() { return static_cast<cudaStream_t>(current_stream()); }

// Handles of the current device, created on first use and bound to its
// compute stream. Not for concurrent use from several threads.
cudnnHandle_t cudnn_handle();
cublasHandle_t cublas_handle();

// Scratch memory on the current device of at least nbytes, reused from call to
// call (grown when a larger one is asked for). Valid until the next call;
// users on the compute stream are ordered, so no synchronisation is needed.
void* workspace(size_t nbytes);

// Multiprocessor count of the current device (cached).
int sm_count();

// Makes a device current for the guard's lifetime (no-op when it already is).
class DeviceGuard {
 public:
  explicit DeviceGuard(Device d);
  explicit DeviceGuard(const Tensor& t) : DeviceGuard(t.device()) {}
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int m_prev = 0, m_cur = 0;
};

// Reads an environment variable as an integer (fallback when unset or malformed).
long env_long(const char* name, long fallback);

}  // namespace ttq::cuda
#endif  // TTQ_HAS_CUDA
