// CUDA log-softmax, NLL loss and the fused cross-entropy backward over [N, C]
// rows. CPU twin: engine/cpu/loss.cpp; tested by tests/test_backend_ops.cpp.
//
// log_softmax: one warp per row (C is 10 to 1000 here), max and sum of
// exp(x - max) by butterfly reductions in double, as the CPU's row sums, so
// the result is independent of the GPU. nll_loss: one block, fixed-order
// reduction in double; a label outside [0, C) is reported as an error (the one
// host synchronisation in this file). The cross-entropy gradient is computed
// in double per element, as on the CPU.
#include "engine/backend.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/reduce.cuh"

namespace ttq::cuda {

namespace {

constexpr int kRowThreads = 256;  // 8 rows per block
constexpr int kLossThreads = 256;

template <class T>
__global__ void log_softmax_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x & 31;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = row0; r < rows; r += nwarps) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T m = T(-INFINITY);
    for (int64_t c = lane; c < cols; c += 32) m = xr[c] > m ? xr[c] : m;
    m = warp_allreduce(m, MaxOp{});
    double s = 0;
    for (int64_t c = lane; c < cols; c += 32) s += exp(static_cast<double>(xr[c]) - static_cast<double>(m));
    s = warp_allreduce(s, SumOp{});
    const double shift = static_cast<double>(m) + log(s);
    for (int64_t c = lane; c < cols; c += 32) yr[c] = static_cast<T>(static_cast<double>(xr[c]) - shift);
  }
}

template <class T>
__global__ void nll_loss_kernel(const T* logp, const int64_t* labels, int64_t rows, int64_t cols, T* loss,
                                int* bad_label) {
  __shared__ double scratch[kLossThreads / 32];
  double acc = 0;
  int bad = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kLossThreads) {
    const int64_t l = labels[r];
    if (l < 0 || l >= cols) {
      bad = 1;
    } else {
      acc -= static_cast<double>(logp[r * cols + l]);
    }
  }
  if (bad) *bad_label = 1;
  acc = block_reduce<kLossThreads>(acc, SumOp{}, 0.0, scratch);
  if (threadIdx.x == 0) loss[0] = static_cast<T>(rows > 0 ? acc / static_cast<double>(rows) : 0.0);
}

template <class T>
struct CrossEntropyBackward {
  const T* g;
  const T* logp;
  const int64_t* labels;
  T* gx;
  int64_t rows, cols;
  __device__ void operator()(int64_t i) const {
    const int64_t r = i / cols, c = i - r * cols;
    const double gs = static_cast<double>(g[0]) / static_cast<double>(rows);
    const double onehot = labels[r] == c ? 1.0 : 0.0;
    gx[i] = static_cast<T>(gs * (exp(static_cast<double>(logp[i])) - onehot));
  }
};

void check_rows(const Tensor& t, const char* what) {
  TTQ_CHECK(t.dim() == 2 && t.is_contiguous()) << what << ": contiguous [N, C] expected, got " << t.str();
}

void check_labels(const Tensor& labels, int64_t rows, const char* what) {
  TTQ_CHECK(labels.dtype() == DType::I64 && labels.is_contiguous() && labels.numel() == rows)
      << what << ": labels must be a contiguous I64 [" << rows << "] tensor, got " << labels.str();
}

}  // namespace

void log_softmax_forward(const Tensor& x_in, Tensor& y) {
  DeviceGuard g(x_in);
  const Tensor x = x_in.contiguous();
  check_rows(x, "cuda::log_softmax_forward");
  check_rows(y, "cuda::log_softmax_forward");
  const int64_t rows = x.size(0), cols = x.size(1);
  if (rows == 0 || cols == 0) return;
  dispatch_float(x.dtype(), "cuda::log_softmax_forward", [&](auto tag) {
    using T = decltype(tag);
    log_softmax_kernel<T><<<grid_for(rows * 32, kRowThreads), kRowThreads, 0, stream()>>>(
        x.data<T>(), y.data<T>(), rows, cols);
    TTQ_CUDA_CHECK_LAUNCH();
  });
}

void nll_loss_forward(const Tensor& logp_in, const Tensor& labels_in, Tensor& loss) {
  DeviceGuard g(logp_in);
  const Tensor logp = logp_in.contiguous(), labels = labels_in.contiguous();
  check_rows(logp, "cuda::nll_loss_forward");
  const int64_t rows = logp.size(0), cols = logp.size(1);
  check_labels(labels, rows, "cuda::nll_loss_forward");
  TTQ_CHECK(loss.numel() == 1) << "cuda::nll_loss_forward: loss has " << loss.numel() << " elements";
  Tensor flag = Tensor::zeros({1}, DType::I32, logp.device());
  dispatch_float(logp.dtype(), "cuda::nll_loss_forward", [&](auto tag) {
    using T = decltype(tag);
    nll_loss_kernel<T><<<1, kLossThreads, 0, stream()>>>(logp.data<T>(), labels.data<int64_t>(), rows, cols,
                                                         loss.data<T>(), flag.data<int32_t>());
    TTQ_CUDA_CHECK_LAUNCH();
  });
  int bad = 0;
  TTQ_CUDA_CHECK(cudaMemcpyAsync(&bad, flag.raw_data(), sizeof(int), cudaMemcpyDeviceToHost, stream()));
  TTQ_CUDA_CHECK(cudaStreamSynchronize(stream()));
  TTQ_CHECK(bad == 0) << "cuda::nll_loss_forward: a label is outside [0, " << cols << ")";
}

void cross_entropy_backward(const Tensor& g, const Tensor& logp_in, const Tensor& labels_in, Tensor& gx) {
  DeviceGuard dg(logp_in);
  const Tensor logp = logp_in.contiguous(), labels = labels_in.contiguous();
  check_rows(logp, "cuda::cross_entropy_backward");
  check_rows(gx, "cuda::cross_entropy_backward");
  const int64_t rows = logp.size(0), cols = logp.size(1);
  check_labels(labels, rows, "cuda::cross_entropy_backward");
  TTQ_CHECK(g.numel() == 1) << "cuda::cross_entropy_backward: g has " << g.numel() << " elements";
  dispatch_float(logp.dtype(), "cuda::cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    launch_elementwise(rows * cols, stream(),
                       CrossEntropyBackward<T>{g.data<T>(), logp.data<T>(), labels.data<int64_t>(),
                                               gx.data<T>(), rows, cols});
  });
}

}  // namespace ttq::cuda
