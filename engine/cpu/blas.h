// CPU helpers shared by the BLAS-backed ops (engine/cpu/gemm.cpp, conv.cpp):
// typed row-major GEMM over OpenBLAS, the threading policy, and per-thread
// scratch buffers. Tested through tests/test_backend_ops.cpp.
//
// Threading policy: the engine owns the cores. OpenBLAS is pinned to one thread
// and every caller splits its work with OpenMP (conv over the batch, GEMM over
// row or column blocks), so OpenBLAS's pthreads never compete with OpenMP's.
#pragma once

#include <cblas.h>
#include <omp.h>

#include <cstdint>
#include <vector>

namespace ttq::cpu {

// Called once before the first BLAS call of the engine (idempotent, thread-safe).
void blas_init_threading();

// C[m,n] = alpha * op(A) @ op(B) + beta * C, row-major with leading dimensions.
// beta == 0 overwrites C (BLAS never reads C then, so poisoned outputs are fine).
#ifdef TTQ_HAS_ONEDNN
// float GEMMs go to oneDNN's sgemm (JIT kernels for the CPU's widest vectors,
// AVX-512 included), always on the calling thread: bench/RESULTS.md, "oneDNN sgemm".
void gemm_rm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
             const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
#else
inline void gemm_rm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda),
              b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}
#endif
inline void gemm_rm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                    int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda),
              b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

// C = alpha * op(A) @ op(B) + beta * C as gemm_rm, split over OpenMP threads
// into row or column blocks of C when large enough (serial inside a parallel
// region). Defined in gemm.cpp for float and double.
template <class T>
void gemm_parallel(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                   const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// A growing scratch buffer owned by the calling thread (OpenMP's pool threads
// persist, so buffers are reused across calls instead of faulting in fresh
// pages every time). One per thread and element type: callers must not hold two.
template <class T>
T* thread_scratch(size_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

}  // namespace ttq::cpu
