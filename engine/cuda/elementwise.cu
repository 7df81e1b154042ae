// CUDA elementwise ops and full reductions: relu, binary, axpby, fill, copy,
// dropout, sum_all. CPU twins: engine/cpu/elementwise.cpp, copy.cpp (and the
// relu / dropout files beside them); tested against them by
// tests/test_backend_ops.cpp.
//
// Every kernel is a functor over the flat row-major index run by
// launch_elementwise(); views are read through StridedIndex when any operand
// is not contiguous, through the identity otherwise. These kernels are memory
// bound: one read and one write per element per operand, so an fp32 relu over
// n elements moves 8n bytes (about 3 TB/s on an H100 makes 1M elements ~3 us).
#include "engine/backend.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/reduce.cuh"
#include "engine/rng.h"

namespace ttq::cuda {

namespace {

// ---- element functions --------------------------------------------------------

// `x < 0 ? 0 : x` lets NaN through, as PyTorch's relu does (and as the CPU twin).
template <class T>
__device__ __forceinline__ T relu_elem(T x) {
  return x < T(0) ? T(0) : x;
}

template <class T>
__device__ __forceinline__ T binary_elem(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add:
      return a + b;
    case BinaryOp::Sub:
      return a - b;
    case BinaryOp::Mul:
      return a * b;
  }
  return a;
}

// ---- functors (kernel bodies) ---------------------------------------------------

template <class T, class IX>
struct ReluForward {
  const T* x;
  T* y;
  IX xi, yi;
  __device__ void operator()(int64_t i) const { y[yi(i)] = relu_elem(x[xi(i)]); }
};

template <class T, class IX>
struct ReluBackward {
  const T* gy;
  const T* y;
  T* gx;
  IX gyi, yi, gxi;
  __device__ void operator()(int64_t i) const { gx[gxi(i)] = y[yi(i)] > T(0) ? gy[gyi(i)] : T(0); }
};

template <class T, class IX>
struct Binary {
  BinaryOp op;
  const T* a;
  const T* b;
  T* out;
  IX ai, bi, oi;
  __device__ void operator()(int64_t i) const { out[oi(i)] = binary_elem(op, a[ai(i)], b[bi(i)]); }
};

template <class T, class IX>
struct Axpby {
  T alpha, beta;
  const T* a;
  const T* b;  // null: out = alpha * a
  T* out;
  IX ai, bi, oi;
  __device__ void operator()(int64_t i) const {
    out[oi(i)] = b != nullptr ? alpha * a[ai(i)] + beta * b[bi(i)] : alpha * a[ai(i)];
  }
};

template <class T, class IX>
struct Fill {
  T* p;
  T v;
  IX pi;
  __device__ void operator()(int64_t i) const { p[pi(i)] = v; }
};

template <class S, class D, class IX>
struct Convert {
  const S* s;
  D* d;
  IX si, di;
  __device__ void operator()(int64_t i) const { d[di(i)] = static_cast<D>(s[si(i)]); }
};

// mask[i] = uniform(seed, offset + i) >= p, the same draw as the CPU's (engine/rng.h).
template <class T, class M, class IX>
struct DropoutForward {
  const T* x;
  T* y;
  M* mask;
  float p;
  T scale;
  uint64_t seed, offset;
  IX xi, yi, mi;
  __device__ void operator()(int64_t i) const {
    const bool keep = rng::uniform_f32(seed, offset + static_cast<uint64_t>(i)) >= p;
    mask[mi(i)] = keep ? M(1) : M(0);
    y[yi(i)] = keep ? x[xi(i)] * scale : T(0);
  }
};

template <class T, class M, class IX>
struct DropoutBackward {
  const T* gy;
  const M* mask;
  T* gx;
  T scale;
  IX gyi, mi, gxi;
  __device__ void operator()(int64_t i) const {
    gx[gxi(i)] = mask[mi(i)] != M(0) ? gy[gyi(i)] * scale : T(0);
  }
};

// ---- helpers -------------------------------------------------------------------

bool all_contiguous(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && !t->is_contiguous()) return false;
  return true;
}

StridedIndex index_of(const Tensor& t) { return t.defined() ? make_strided_index(t) : StridedIndex{}; }

template <class F>
void dispatch_any(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::F32:
      f(float{});
      break;
    case DType::F64:
      f(double{});
      break;
    case DType::U8:
      f(uint8_t{});
      break;
    case DType::I32:
      f(int32_t{});
      break;
    case DType::I64:
      f(int64_t{});
      break;
    default:
      TTQ_THROW() << what << ": unsupported dtype " << dtype_name(t);
  }
}

template <class T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// Raw 2-byte elements (F16 / BF16 copies between equal dtypes).
const uint16_t* ptr16(const Tensor& t) {
  return static_cast<const uint16_t*>(t.storage()->data()) + t.offset();
}

}  // namespace

// ---- raw-pointer launchers -------------------------------------------------------

template <class T>
void relu_forward_cuda(const T* x, T* y, int64_t n, cudaStream_t s) {
  launch_elementwise(n, s, ReluForward<T, ContiguousIndex>{x, y, {}, {}});
}
template void relu_forward_cuda<float>(const float*, float*, int64_t, cudaStream_t);

template <class T>
void axpby_cuda(T alpha, const T* a, T beta, const T* b, T* out, int64_t n, cudaStream_t s) {
  launch_elementwise(n, s, Axpby<T, ContiguousIndex>{alpha, beta, a, b, out, {}, {}, {}});
}
template void axpby_cuda<float>(float, const float*, float, const float*, float*, int64_t, cudaStream_t);

// ---- backend entries -------------------------------------------------------------

void relu_forward(const Tensor& x, Tensor& y) {
  DeviceGuard g(x);
  dispatch_float(x.dtype(), "cuda::relu_forward", [&](auto tag) {
    using T = decltype(tag);
    if (all_contiguous({&x, &y})) {
      relu_forward_cuda(x.data<T>(), y.data<T>(), y.numel(), stream());
    } else {
      launch_elementwise(y.numel(), stream(),
                         ReluForward<T, StridedIndex>{x.data<T>(), y.data<T>(), index_of(x), index_of(y)});
    }
  });
}

void relu_backward(const Tensor& gy, const Tensor& y, Tensor& gx) {
  DeviceGuard g(gy);
  dispatch_float(gy.dtype(), "cuda::relu_backward", [&](auto tag) {
    using T = decltype(tag);
    if (all_contiguous({&gy, &y, &gx})) {
      launch_elementwise(
          gx.numel(), stream(),
          ReluBackward<T, ContiguousIndex>{gy.data<T>(), y.data<T>(), gx.data<T>(), {}, {}, {}});
    } else {
      launch_elementwise(gx.numel(), stream(),
                         ReluBackward<T, StridedIndex>{gy.data<T>(), y.data<T>(), gx.data<T>(), index_of(gy),
                                                       index_of(y), index_of(gx)});
    }
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  DeviceGuard g(out);
  dispatch_float(out.dtype(), "cuda::binary", [&](auto tag) {
    using T = decltype(tag);
    if (all_contiguous({&a, &b, &out})) {
      launch_elementwise(out.numel(), stream(),
                         Binary<T, ContiguousIndex>{op, a.data<T>(), b.data<T>(), out.data<T>(), {}, {}, {}});
    } else {
      launch_elementwise(out.numel(), stream(),
                         Binary<T, StridedIndex>{op, a.data<T>(), b.data<T>(), out.data<T>(), index_of(a),
                                                 index_of(b), index_of(out)});
    }
  });
}

void axpby(double alpha, const Tensor& a, double beta, const Tensor& b, Tensor& out) {
  DeviceGuard g(out);
  dispatch_float(out.dtype(), "cuda::axpby", [&](auto tag) {
    using T = decltype(tag);
    const T al = static_cast<T>(alpha), be = static_cast<T>(beta);
    if (all_contiguous({&a, &b, &out})) {
      axpby_cuda<T>(al, a.data<T>(), be, ptr<T>(b), out.data<T>(), out.numel(), stream());
    } else {
      launch_elementwise(out.numel(), stream(),
                         Axpby<T, StridedIndex>{al, be, a.data<T>(), ptr<T>(b), out.data<T>(), index_of(a),
                                                index_of(b), index_of(out)});
    }
  });
}

void fill(Tensor& t, double value) {
  if (t.numel() == 0) return;
  DeviceGuard g(t);
  dispatch_any(t.dtype(), "cuda::fill", [&](auto tag) {
    using T = decltype(tag);
    const T v = static_cast<T>(value);
    if (t.is_contiguous()) {
      launch_elementwise(t.numel(), stream(), Fill<T, ContiguousIndex>{t.data<T>(), v, {}});
    } else {
      launch_elementwise(t.numel(), stream(), Fill<T, StridedIndex>{t.data<T>(), v, index_of(t)});
    }
  });
}

void copy(const Tensor& src, Tensor& dst) {
  TTQ_CHECK(src.shape() == dst.shape())
      << "cuda::copy: shapes " << shape_str(src.shape()) << " and " << shape_str(dst.shape()) << " differ";
  if (dst.numel() == 0) return;
  DeviceGuard g(dst);
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    if (src.raw_data() != dst.raw_data())
      TTQ_CUDA_CHECK(
          cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(), cudaMemcpyDeviceToDevice, stream()));
    return;
  }
  if ((src.dtype() == DType::F16 || src.dtype() == DType::BF16) && src.dtype() == dst.dtype()) {
    auto* d = static_cast<uint16_t*>(dst.storage()->data()) + dst.offset();
    launch_elementwise(
        dst.numel(), stream(),
        Convert<uint16_t, uint16_t, StridedIndex>{ptr16(src), d, index_of(src), index_of(dst)});
    return;
  }
  dispatch_any(src.dtype(), "cuda::copy", [&](auto s0) {
    using S = decltype(s0);
    dispatch_any(dst.dtype(), "cuda::copy", [&](auto d0) {
      using D = decltype(d0);
      if (src.is_contiguous() && dst.is_contiguous()) {
        launch_elementwise(dst.numel(), stream(),
                           Convert<S, D, ContiguousIndex>{src.data<S>(), dst.data<D>(), {}, {}});
      } else {
        launch_elementwise(
            dst.numel(), stream(),
            Convert<S, D, StridedIndex>{src.data<S>(), dst.data<D>(), index_of(src), index_of(dst)});
      }
    });
  });
}

void dropout_forward(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y, Tensor& mask) {
  DeviceGuard g(x);
  TTQ_CHECK(mask.dtype() == x.dtype() || mask.dtype() == DType::U8)
      << "cuda::dropout_forward: mask dtype " << dtype_name(mask.dtype());
  dispatch_float(x.dtype(), "cuda::dropout_forward", [&](auto tag) {
    using T = decltype(tag);
    // p >= 1 drops everything; the select above avoids 0 * inf.
    const T scale = p < 1 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    const float pf = static_cast<float>(p);
    auto run = [&](auto mtag) {
      using M = decltype(mtag);
      if (all_contiguous({&x, &y, &mask})) {
        launch_elementwise(
            y.numel(), stream(),
            DropoutForward<T, M, ContiguousIndex>{
                x.data<T>(), y.data<T>(), mask.data<M>(), pf, scale, seed, offset, {}, {}, {}});
      } else {
        launch_elementwise(
            y.numel(), stream(),
            DropoutForward<T, M, StridedIndex>{x.data<T>(), y.data<T>(), mask.data<M>(), pf, scale, seed,
                                               offset, index_of(x), index_of(y), index_of(mask)});
      }
    };
    if (mask.dtype() == DType::U8) {
      run(uint8_t{});
    } else {
      run(T{});
    }
  });
}

void dropout_backward(const Tensor& gy, const Tensor& mask, double p, Tensor& gx) {
  DeviceGuard g(gy);
  TTQ_CHECK(mask.dtype() == gy.dtype() || mask.dtype() == DType::U8)
      << "cuda::dropout_backward: mask dtype " << dtype_name(mask.dtype());
  dispatch_float(gy.dtype(), "cuda::dropout_backward", [&](auto tag) {
    using T = decltype(tag);
    const T scale = p < 1 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    auto run = [&](auto mtag) {
      using M = decltype(mtag);
      if (all_contiguous({&gy, &mask, &gx})) {
        launch_elementwise(gx.numel(), stream(),
                           DropoutBackward<T, M, ContiguousIndex>{
                               gy.data<T>(), mask.data<M>(), gx.data<T>(), scale, {}, {}, {}});
      } else {
        launch_elementwise(
            gx.numel(), stream(),
            DropoutBackward<T, M, StridedIndex>{gy.data<T>(), mask.data<M>(), gx.data<T>(), scale,
                                                index_of(gy), index_of(mask), index_of(gx)});
      }
    };
    if (mask.dtype() == DType::U8) {
      run(uint8_t{});
    } else {
      run(T{});
    }
  });
}

// ---- sum_all: two fixed-shape passes, accumulated in double ----------------------

namespace {

constexpr int kSumThreads = 256;
constexpr int kSumMaxBlocks = 512;

// The number of partial sums depends on n alone, so the summation order (and
// the bits of the result) do not depend on the GPU.
int sum_blocks(int64_t n) {
  const int64_t per_block = static_cast<int64_t>(kSumThreads) * 8;
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(kSumMaxBlocks, (n + per_block - 1) / per_block)));
}

template <class T, class IX>
__global__ void sum_partials_kernel(const T* x, IX xi, int64_t n, double* partials) {
  __shared__ double scratch[kSumThreads / 32];
  double acc = 0;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kSumThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kSumThreads + threadIdx.x; i < n; i += step)
    acc += static_cast<double>(x[xi(i)]);
  acc = block_reduce<kSumThreads>(acc, SumOp{}, 0.0, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

template <class T>
__global__ void sum_final_kernel(const double* partials, int count, T* out) {
  __shared__ double scratch[kSumThreads / 32];
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += kSumThreads) acc += partials[i];
  acc = block_reduce<kSumThreads>(acc, SumOp{}, 0.0, scratch);
  if (threadIdx.x == 0) out[0] = static_cast<T>(acc);
}

}  // namespace

template <class T, class IX>
void sum_all_cuda(const T* x, IX xi, int64_t n, double* partials, T* out, cudaStream_t s) {
  const int blocks = sum_blocks(n);
  sum_partials_kernel<T><<<blocks, kSumThreads, 0, s>>>(x, xi, n, partials);
  TTQ_CUDA_CHECK_LAUNCH();
  sum_final_kernel<T><<<1, kSumThreads, 0, s>>>(partials, blocks, out);
  TTQ_CUDA_CHECK_LAUNCH();
}

void sum_all(const Tensor& x, Tensor& out) {
  DeviceGuard g(x);
  TTQ_CHECK(out.numel() == 1) << "cuda::sum_all: output has " << out.numel() << " elements";
  dispatch_float(x.dtype(), "cuda::sum_all", [&](auto tag) {
    using T = decltype(tag);
    auto* partials = static_cast<double*>(workspace(sizeof(double) * kSumMaxBlocks));
    T* o = out.data<T>();
    if (x.is_contiguous()) {
      sum_all_cuda(x.data<T>(), ContiguousIndex{}, x.numel(), partials, o, stream());
    } else {
      sum_all_cuda(x.data<T>(), make_strided_index(x), x.numel(), partials, o, stream());
    }
  });
}

}  // namespace ttq::cuda
