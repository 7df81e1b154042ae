// CPU GEMM: oneDNN's sgemm where the build found it (else OpenBLAS) for float,
// OpenBLAS for double; single-threaded per call, with OpenMP splitting C into
// row or column blocks (see the threading policy in engine/cpu/blas.h). CUDA
// twin: engine/cuda/gemm.cu.
// Reference and tests: the GEMM / LINEAR / MATMUL cases of tests/test_backend_ops.cpp.
#include <algorithm>
#include <mutex>

#ifdef TTQ_HAS_ONEDNN
#include <dnnl.h>
#endif

#include "engine/backend.h"
#include "engine/cpu/blas.h"
#include "engine/cpu/parallel.h"

namespace ttq::cpu {

#ifdef TTQ_HAS_ONEDNN
void gemm_rm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
             const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  // oneDNN threads a GEMM over omp_get_max_threads() unless it runs inside a parallel
  // region; the engine's callers split the work themselves, so it gets one thread.
  const int saved = omp_get_max_threads();
  if (saved != 1) omp_set_num_threads(1);
  const dnnl_status_t st =
      dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  if (saved != 1) omp_set_num_threads(saved);
  TTQ_CHECK(st == dnnl_success) << "dnnl_sgemm failed (status " << static_cast<int>(st) << ") for m " << m
                                << ", n " << n << ", k " << k;
}
#endif

void blas_init_threading() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

template <class T>
void gemm_parallel(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                   const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS implementations disagree on whether they scale C when k == 0
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (threads <= 1 || m * n * k < kParallelMacs) {
    gemm_rm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Split the longer side of C so that every block keeps a reasonable GEMM shape.
  const bool split_rows = m >= n;
  const int64_t len = split_rows ? m : n;
  const int64_t blocks = std::min<int64_t>(threads, (len + 15) / 16);
#pragma omp parallel for num_threads(static_cast <int>(blocks)) schedule(static)
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t lo = len * bi / blocks, hi = len * (bi + 1) / blocks;
    if (hi == lo) continue;
    if (split_rows) {
      const T* ab = ta ? a + lo : a + lo * lda;
      gemm_rm(ta, tb, hi - lo, n, k, alpha, ab, lda, b, ldb, beta, c + lo * ldc, ldc);
    } else {
      const T* bb = tb ? b + lo * ldb : b + lo;
      gemm_rm(ta, tb, m, hi - lo, k, alpha, a, lda, bb, ldb, beta, c + lo, ldc);
    }
  }
}
template void gemm_parallel<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                                   const float*, int64_t, float, float*, int64_t);
template void gemm_parallel<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                    const double*, int64_t, double, double*, int64_t);

void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& a, const Tensor& b, double beta,
          Tensor& c) {
  TTQ_CHECK(a.dim() == 2 && b.dim() == 2 && c.dim() == 2) << "gemm: 2-D operands expected";
  TTQ_CHECK(a.is_contiguous() && b.is_contiguous() && c.is_contiguous())
      << "gemm: contiguous operands expected";
  blas_init_threading();
  const int64_t m = c.size(0), n = c.size(1), k = trans_a ? a.size(0) : a.size(1);
  dispatch_float(c.dtype(), "gemm", [&](auto tag) {
    using T = decltype(tag);
    gemm_parallel<T>(trans_a, trans_b, m, n, k, static_cast<T>(alpha), a.data<T>(), trans_a ? m : k,
                     b.data<T>(), trans_b ? k : n, static_cast<T>(beta), c.data<T>(), n);
  });
}

}  // namespace ttq::cpu
