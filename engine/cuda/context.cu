// Per-device cuDNN / cuBLAS handles, workspace and properties (context.h).
#include <cstdlib>
#include <mutex>
#include <vector>

#include "engine/cuda/context.h"

namespace ttq::cuda {

namespace {

struct DeviceContext {
  cudnnHandle_t cudnn = nullptr;
  cublasHandle_t cublas = nullptr;
  void* ws = nullptr;
  size_t ws_size = 0;
  int sms = 0;
};

// Leaked on purpose: handles must outlive static tensors and other statics'
// destructors, and destroying them after the driver has shut down fails.
std::vector<DeviceContext>& contexts() {
  static auto* v = new std::vector<DeviceContext>();
  return *v;
}
std::mutex& contexts_mutex() {
  static auto* m = new std::mutex();
  return *m;
}

DeviceContext& context(int d) {
  auto& v = contexts();
  if (v.size() <= static_cast<size_t>(d)) v.resize(d + 1);
  return v[d];
}

}  // namespace

cudnnHandle_t cudnn_handle() {
  const int d = current_device();
  cudaStream_t s = stream();
  std::lock_guard<std::mutex> lock(contexts_mutex());
  DeviceContext& c = context(d);
  if (c.cudnn == nullptr) {
    TTQ_CUDNN_CHECK(cudnnCreate(&c.cudnn));
    TTQ_CUDNN_CHECK(cudnnSetStream(c.cudnn, s));
  }
  return c.cudnn;
}

cublasHandle_t cublas_handle() {
  const int d = current_device();
  cudaStream_t s = stream();
  std::lock_guard<std::mutex> lock(contexts_mutex());
  DeviceContext& c = context(d);
  if (c.cublas == nullptr) {
    TTQ_CUBLAS_CHECK(cublasCreate(&c.cublas));
    TTQ_CUBLAS_CHECK(cublasSetStream(c.cublas, s));
  }
  return c.cublas;
}

void* workspace(size_t nbytes) {
  const int d = current_device();
  std::lock_guard<std::mutex> lock(contexts_mutex());
  DeviceContext& c = context(d);
  if (nbytes == 0) nbytes = 1;
  if (c.ws_size < nbytes) {
    // The old block returns to the cache; stream order keeps its last user safe.
    if (c.ws != nullptr) deallocate(c.ws, d);
    c.ws = nullptr;
    c.ws_size = 0;
    c.ws = allocate(nbytes, d);
    c.ws_size = nbytes;
  }
  return c.ws;
}

int sm_count() {
  const int d = current_device();
  std::lock_guard<std::mutex> lock(contexts_mutex());
  DeviceContext& c = context(d);
  if (c.sms == 0) TTQ_CUDA_CHECK(cudaDeviceGetAttribute(&c.sms, cudaDevAttrMultiProcessorCount, d));
  return c.sms;
}

DeviceGuard::DeviceGuard(Device dev) {
  TTQ_CHECK(dev.is_cuda()) << "CUDA backend called with a tensor on " << dev.str();
  TTQ_CHECK(available()) << "CUDA backend called but no CUDA device is available";
  TTQ_CUDA_CHECK(cudaGetDevice(&m_prev));
  m_cur = dev.index;
  if (m_cur != m_prev) TTQ_CUDA_CHECK(cudaSetDevice(m_cur));
}

DeviceGuard::~DeviceGuard() {
  if (m_cur != m_prev) TTQ_CUDA_CHECK_NOTHROW(cudaSetDevice(m_prev));
}

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] == '\0') return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  return (end != nullptr && *end == '\0') ? x : fallback;
}

}  // namespace ttq::cuda
