// Status checks for the CUDA runtime, cuDNN and cuBLAS. Each throws ttq::Error
// with the expression, file, line and the library's own message; the _NOTHROW
// variants log to stderr instead (for destructors).
#pragma once

#ifdef TTQ_HAS_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstdio>

#include "engine/error.h"

namespace ttq::cuda::detail {
const char* cublas_status_string(cublasStatus_t s);
}

#define TTQ_CUDA_CHECK(expr)                                                                              \
  do {                                                                                                    \
    cudaError_t ttq_err_ = (expr);                                                                        \
    if (ttq_err_ != cudaSuccess)                                                                          \
      TTQ_THROW() << "CUDA error " << cudaGetErrorString(ttq_err_) << " in " << #expr << " (" << __FILE__ \
                  << ":" << __LINE__ << ")";                                                              \
  } while (0)

#define TTQ_CUDNN_CHECK(expr)                                                                              \
  do {                                                                                                     \
    cudnnStatus_t ttq_st_ = (expr);                                                                        \
    if (ttq_st_ != CUDNN_STATUS_SUCCESS)                                                                   \
      TTQ_THROW() << "cuDNN error " << cudnnGetErrorString(ttq_st_) << " in " << #expr << " (" << __FILE__ \
                  << ":" << __LINE__ << ")";                                                               \
  } while (0)

#define TTQ_CUBLAS_CHECK(expr)                                                                       \
  do {                                                                                               \
    cublasStatus_t ttq_st_ = (expr);                                                                 \
    if (ttq_st_ != CUBLAS_STATUS_SUCCESS)                                                            \
      TTQ_THROW() << "cuBLAS error " << ::ttq::cuda::detail::cublas_status_string(ttq_st_) << " in " \
                  << #expr << " (" << __FILE__ << ":" << __LINE__ << ")";                            \
  } while (0)

#define TTQ_CUDA_CHECK_NOTHROW(expr)                                                                  \
  do {                                                                                                \
    cudaError_t ttq_err_ = (expr);                                                                    \
    if (ttq_err_ != cudaSuccess)                                                                      \
      std::fprintf(stderr, "ttq: CUDA error %s in %s (%s:%d)\n", cudaGetErrorString(ttq_err_), #expr, \
                   __FILE__, __LINE__);                                                               \
  } while (0)

// After a kernel launch.
#define TTQ_CUDA_CHECK_LAUNCH() TTQ_CUDA_CHECK(cudaGetLastError())

#endif  // TTQ_HAS_CUDA
