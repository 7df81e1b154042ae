// CUDA GEMM through cuBLAS: c = alpha * op(a) @ op(b) + beta * c on row-major
// 2-D contiguous tensors. CPU twin: the BLAS call in engine/cpu/; tested by
// tests/test_backend_ops.cpp.
//
// cuBLAS is column-major; a row-major [m,n] matrix is the column-major [n,m]
// transpose, so C^T = op(B)^T op(A)^T is computed by swapping the operands.
// TF32 tensor-core math is used only when allow_tf32() (runtime.h).
#include "engine/backend.h"
#include "engine/cuda/context.h"

namespace ttq::cuda {

namespace {

cublasStatus_t gemm_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const float* alpha, const float* a, int lda, const float* b, int ldb,
                         const float* beta, float* c, int ldc) {
  return cublasSgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
cublasStatus_t gemm_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const double* alpha, const double* a, int lda, const double* b, int ldb,
                         const double* beta, double* c, int ldc) {
  return cublasDgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace

// Row-major c[m,n] = alpha * op(a) op(b) + beta * c; op(a) is [m,k], op(b) is [k,n].
// a is stored [m,k] (or [k,m] when trans_a), b [k,n] (or [n,k] when trans_b).
// With beta == 0, c is not read (it may hold NaN).
template <class T>
void gemm_cuda(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, const T* b,
               T beta, T* c, cublasHandle_t h) {
  if (m == 0 || n == 0) return;
  TTQ_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX)
      << "gemm: dimensions exceed cuBLAS's int range";
  const int lda = static_cast<int>(std::max<int64_t>(1, trans_a ? m : k));
  const int ldb = static_cast<int>(std::max<int64_t>(1, trans_b ? k : n));
  const int ldc = static_cast<int>(n);
  TTQ_CUBLAS_CHECK(gemm_call(h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                             static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, ldb, a,
                             lda, &beta, c, ldc));
}
template void gemm_cuda<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, const float*,
                               float, float*, cublasHandle_t);

void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& a, const Tensor& b, double beta,
          Tensor& c) {
  DeviceGuard g(c);
  TTQ_CHECK(a.dim() == 2 && b.dim() == 2 && c.dim() == 2) << "cuda::gemm: 2-D operands expected";
  TTQ_CHECK(a.is_contiguous() && b.is_contiguous() && c.is_contiguous())
      << "cuda::gemm: contiguous operands expected";
  const int64_t m = c.size(0), n = c.size(1);
  const int64_t k = trans_a ? a.size(0) : a.size(1);
  TTQ_CHECK((trans_a ? a.size(1) : a.size(0)) == m && (trans_b ? b.size(0) : b.size(1)) == n &&
            (trans_b ? b.size(1) : b.size(0)) == k)
      << "cuda::gemm: shapes " << shape_str(a.shape()) << (trans_a ? "^T" : "") << " @ "
      << shape_str(b.shape()) << (trans_b ? "^T" : "") << " -> " << shape_str(c.shape());
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum: c = beta * c, and c is not read when beta == 0
    if (beta == 0) {
      fill(c, 0);
    } else {
      axpby(beta, c, 0, Tensor(), c);
    }
    return;
  }
  cublasHandle_t h = cublas_handle();
  TTQ_CUBLAS_CHECK(cublasSetMathMode(h, allow_tf32() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  dispatch_float(c.dtype(), "cuda::gemm", [&](auto tag) {
    using T = decltype(tag);
    gemm_cuda<T>(trans_a, trans_b, m, n, k, static_cast<T>(alpha), a.data<T>(), b.data<T>(),
                 static_cast<T>(beta), c.data<T>(), h);
  });
}

}  // namespace ttq::cuda
