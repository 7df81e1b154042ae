// CPU elementwise ops and full reductions: binary, axpby, sum_all (OpenMP over
// contiguous data; strided inputs are made contiguous first). CUDA twin:
// engine/cuda/elementwise.cu. Tested by tests/test_backend_ops.cpp.
#include "engine/backend.h"
#include "engine/cpu/strided.h"

namespace ttq::cpu {

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  Tensor ac = a.contiguous(), bc = b.contiguous();
  dispatch_float(out.dtype(), "binary", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* x = ac.data<scalar_t>();
    const scalar_t* y = bc.data<scalar_t>();
    scalar_t* z = out.data<scalar_t>();
    const int64_t n = out.numel();
    switch (op) {
      case BinaryOp::Add:
#pragma omp parallel for simd if (n > (1 << 15))
        for (int64_t i = 0; i < n; ++i) z[i] = x[i] + y[i];
        break;
      case BinaryOp::Sub:
#pragma omp parallel for simd if (n > (1 << 15))
        for (int64_t i = 0; i < n; ++i) z[i] = x[i] - y[i];
        break;
      case BinaryOp::Mul:
#pragma omp parallel for simd if (n > (1 << 15))
        for (int64_t i = 0; i < n; ++i) z[i] = x[i] * y[i];
        break;
    }
  });
}

void axpby(double alpha, const Tensor& a, double beta, const Tensor& b, Tensor& out) {
  Tensor ac = a.contiguous();
  Tensor bc = b.defined() ? b.contiguous() : Tensor();
  dispatch_float(out.dtype(), "axpby", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* x = ac.data<scalar_t>();
    scalar_t* z = out.data<scalar_t>();
    const int64_t n = out.numel();
    const scalar_t al = static_cast<scalar_t>(alpha), be = static_cast<scalar_t>(beta);
    if (bc.defined()) {
      const scalar_t* y = bc.data<scalar_t>();
#pragma omp parallel for simd if (n > (1 << 15))
      for (int64_t i = 0; i < n; ++i) z[i] = al * x[i] + be * y[i];
    } else {
#pragma omp parallel for simd if (n > (1 << 15))
      for (int64_t i = 0; i < n; ++i) z[i] = al * x[i];
    }
  });
}

void sum_all(const Tensor& x, Tensor& out) {
  Tensor xc = x.contiguous();
  dispatch_float(x.dtype(), "sum_all", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* p = xc.data<scalar_t>();
    const int64_t n = xc.numel();
    double acc = 0;
#pragma omp parallel for reduction(+ : acc) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(p[i]);
    out.data<scalar_t>()[0] = static_cast<scalar_t>(acc);
  });
}

}  // namespace ttq::cpu
