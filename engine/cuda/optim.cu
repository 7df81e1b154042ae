// CUDA optimiser updates: SGD (momentum, Nesterov, L2 decay) and Adam (L2
// decay, bias correction), in place, one fused kernel per parameter tensor
// (backend.h) or per group of tensors (optim.h). CPU twin:
// engine/cpu/optim.cpp; tested by tests/test_backend_ops.cpp and
// tests/test_cuda_train_step.cpp.
//
// Each update reads param, grad and its state once and writes param and state
// once: Adam moves 28 bytes per fp32 parameter, so the 7.2M parameters of
// DenseNet-121 take ~70 us at 3 TB/s; the per-tensor launches (~5 us each,
// ~360 tensors) would cost more than that, hence the grouped variant.
#include <cmath>

#include "engine/backend.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/optim.h"

namespace ttq::cuda {

namespace {

// The arithmetic of engine/cpu/optim.cpp (PyTorch's order of operations), in T.
template <class T>
struct SgdHyper {
  T neg_lr, momentum, weight_decay;
  bool nesterov, first_step;
};

template <class T>
SgdHyper<T> sgd_hyper(double lr, double momentum, double weight_decay, bool nesterov, bool first_step) {
  return SgdHyper<T>{static_cast<T>(-lr), static_cast<T>(momentum), static_cast<T>(weight_decay), nesterov,
                     first_step};
}

template <class T>
__device__ __forceinline__ void sgd_elem(T& p, T grad, T* buf, const SgdHyper<T>& h) {
  T d = grad;
  if (h.weight_decay != T(0)) d = d + h.weight_decay * p;  // grad.add(param, alpha=wd)
  if (buf != nullptr) {
    const T b = h.first_step ? d : *buf * h.momentum + d;  // buf.mul_(momentum).add_(d)
    *buf = b;
    d = h.nesterov ? d + h.momentum * b : b;
  }
  p = p + h.neg_lr * d;  // param.add_(d, alpha=-lr)
}

template <class T>
struct AdamHyper {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay;
  T neg_step_size;    // -lr / (1 - beta1^step)
  T bias_corr2_sqrt;  // sqrt(1 - beta2^step)
};

template <class T>
__device__ __forceinline__ void adam_elem(T& p, T grad, T& m, T& v, const AdamHyper<T>& h) {
  T d = grad;
  if (h.weight_decay != T(0)) d = d + h.weight_decay * p;
  const T mi = m * h.beta1 + h.one_minus_beta1 * d;      // exp_avg.mul_(beta1).add_(d, alpha=1-beta1)
  const T vi = v * h.beta2 + h.one_minus_beta2 * d * d;  // exp_avg_sq.mul_(beta2).addcmul_(d, d, 1-beta2)
  m = mi;
  v = vi;
  const T denom = sqrt(vi) / h.bias_corr2_sqrt + h.eps;
  p = p + h.neg_step_size * mi / denom;  // param.addcdiv_(m, denom, value=-step_size)
}

template <class T>
struct SgdStep {
  T* p;
  const T* g;
  T* buf;
  SgdHyper<T> h;
  __device__ void operator()(int64_t i) const { sgd_elem(p[i], g[i], buf != nullptr ? buf + i : nullptr, h); }
};

template <class T>
struct AdamStep {
  T* p;
  const T* g;
  T* m;
  T* v;
  AdamHyper<T> h;
  __device__ void operator()(int64_t i) const { adam_elem(p[i], g[i], m[i], v[i], h); }
};

// Scalars derived in double, as torch.optim does in Python, then cast once.
template <class T>
AdamHyper<T> adam_hyper(double lr, double beta1, double beta2, double eps, double wd, int64_t step) {
  TTQ_CHECK(step >= 1) << "adam_step: step " << step << " (1-based)";
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return AdamHyper<T>{static_cast<T>(beta1),       static_cast<T>(1 - beta1),     static_cast<T>(beta2),
                      static_cast<T>(1 - beta2),   static_cast<T>(eps),           static_cast<T>(wd),
                      static_cast<T>(-(lr / bc1)), static_cast<T>(std::sqrt(bc2))};
}

void check_state(const Tensor& t, const Tensor& param, const char* what) {
  TTQ_CHECK(t.defined() && t.is_contiguous() && t.numel() == param.numel() && t.dtype() == param.dtype() &&
            t.device() == param.device())
      << what << ": " << (t.defined() ? t.str() : std::string("undefined")) << " does not match parameter "
      << param.str();
}

// ---- multi-tensor kernels: a table of tensors, each cut into fixed chunks ------

constexpr int kMultiMax = 40;                    // tensors per launch (the table stays < 4 KiB)
constexpr int64_t kChunk = int64_t(kBlock) * 8;  // elements per block

struct MultiTable {
  float* p[kMultiMax];
  const float* g[kMultiMax];
  float* s1[kMultiMax];  // momentum buffer / exp_avg
  float* s2[kMultiMax];  // exp_avg_sq
  int64_t n[kMultiMax];
  int block_start[kMultiMax + 1];
  int count;
};

__device__ __forceinline__ int table_slot(const MultiTable& t, int block) {
  int k = 0;
  while (k + 1 < t.count && t.block_start[k + 1] <= block) ++k;
  return k;
}

__global__ void sgd_multi_kernel(MultiTable t, SgdHyper<float> h) {
  const int k = table_slot(t, blockIdx.x);
  const int64_t begin = static_cast<int64_t>(blockIdx.x - t.block_start[k]) * kChunk;
  const int64_t end = min(begin + kChunk, t.n[k]);
  float* p = t.p[k];
  const float* g = t.g[k];
  float* buf = t.s1[k];
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x)
    sgd_elem(p[i], g[i], buf != nullptr ? buf + i : nullptr, h);
}

__global__ void adam_multi_kernel(MultiTable t, AdamHyper<float> h) {
  const int k = table_slot(t, blockIdx.x);
  const int64_t begin = static_cast<int64_t>(blockIdx.x - t.block_start[k]) * kChunk;
  const int64_t end = min(begin + kChunk, t.n[k]);
  float* p = t.p[k];
  const float* g = t.g[k];
  float* m = t.s1[k];
  float* v = t.s2[k];
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) adam_elem(p[i], g[i], m[i], v[i], h);
}

// Fills tables of up to kMultiMax non-empty tensors and calls launch(table, blocks) for each.
template <class Launch>
void for_each_table(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                    const std::vector<Tensor>* s1, const std::vector<Tensor>* s2, Launch&& launch) {
  MultiTable t{};
  int blocks = 0;
  auto flush = [&] {
    if (t.count == 0) return;
    t.block_start[t.count] = blocks;
    launch(t, blocks);
    t = MultiTable{};
    blocks = 0;
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].numel();
    if (n == 0) continue;
    const int64_t nb = (n + kChunk - 1) / kChunk;
    TTQ_CHECK(blocks + nb < INT32_MAX) << "multi-tensor update: too many elements";
    t.p[t.count] = params[i].data<float>();
    t.g[t.count] = grads[i].data<float>();
    t.s1[t.count] = s1 != nullptr ? (*s1)[i].data<float>() : nullptr;
    t.s2[t.count] = s2 != nullptr ? (*s2)[i].data<float>() : nullptr;
    t.n[t.count] = n;
    t.block_start[t.count] = blocks;
    blocks += static_cast<int>(nb);
    if (++t.count == kMultiMax) flush();
  }
  flush();
}

void check_group(const std::vector<Tensor>& params, const std::vector<Tensor>& other, const char* what) {
  TTQ_CHECK(other.size() == params.size())
      << what << ": " << other.size() << " tensors for " << params.size() << " parameters";
  for (size_t i = 0; i < params.size(); ++i) {
    TTQ_CHECK(params[i].dtype() == DType::F32 && params[i].is_contiguous() && params[i].device().is_cuda())
        << what << ": contiguous F32 CUDA parameters expected, got " << params[i].str();
    check_state(other[i], params[i], what);
  }
}

}  // namespace

// ---- per-tensor backend entries -------------------------------------------------

void sgd_step(Tensor& param, const Tensor& grad, Tensor& momentum_buf, double lr, double momentum,
              double weight_decay, bool nesterov, bool first_step) {
  DeviceGuard dg(param);
  check_state(grad, param, "cuda::sgd_step grad");
  const bool use_buf = momentum != 0;
  if (use_buf) check_state(momentum_buf, param, "cuda::sgd_step momentum_buf");
  TTQ_CHECK(param.is_contiguous()) << "cuda::sgd_step: contiguous parameter expected";
  dispatch_float(param.dtype(), "cuda::sgd_step", [&](auto tag) {
    using T = decltype(tag);
    const SgdHyper<T> h = sgd_hyper<T>(lr, momentum, weight_decay, nesterov, first_step);
    launch_elementwise(
        param.numel(), stream(),
        SgdStep<T>{param.data<T>(), grad.data<T>(), use_buf ? momentum_buf.data<T>() : nullptr, h});
  });
}

void adam_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, double lr,
               double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  DeviceGuard dg(param);
  check_state(grad, param, "cuda::adam_step grad");
  check_state(exp_avg, param, "cuda::adam_step exp_avg");
  check_state(exp_avg_sq, param, "cuda::adam_step exp_avg_sq");
  TTQ_CHECK(param.is_contiguous()) << "cuda::adam_step: contiguous parameter expected";
  dispatch_float(param.dtype(), "cuda::adam_step", [&](auto tag) {
    using T = decltype(tag);
    launch_elementwise(param.numel(), stream(),
                       AdamStep<T>{param.data<T>(), grad.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(),
                                   adam_hyper<T>(lr, beta1, beta2, eps, weight_decay, step)});
  });
}

// ---- grouped entries (optim.h) ----------------------------------------------------

void sgd_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                    const std::vector<Tensor>& momentum_bufs, double lr, double momentum, double weight_decay,
                    bool nesterov, bool first_step) {
  if (params.empty()) return;
  DeviceGuard dg(params[0]);
  check_group(params, grads, "cuda::sgd_step_multi grads");
  const bool use_buf = momentum != 0;
  if (use_buf) check_group(params, momentum_bufs, "cuda::sgd_step_multi momentum_bufs");
  const SgdHyper<float> h = sgd_hyper<float>(lr, momentum, weight_decay, nesterov, first_step);
  for_each_table(params, grads, use_buf ? &momentum_bufs : nullptr, nullptr,
                 [&](const MultiTable& t, int blocks) {
                   sgd_multi_kernel<<<blocks, kBlock, 0, stream()>>>(t, h);
                   TTQ_CUDA_CHECK_LAUNCH();
                 });
}

void adam_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                     const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs, double lr,
                     double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  if (params.empty()) return;
  DeviceGuard dg(params[0]);
  check_group(params, grads, "cuda::adam_step_multi grads");
  check_group(params, exp_avgs, "cuda::adam_step_multi exp_avgs");
  check_group(params, exp_avg_sqs, "cuda::adam_step_multi exp_avg_sqs");
  const AdamHyper<float> h = adam_hyper<float>(lr, beta1, beta2, eps, weight_decay, step);
  for_each_table(params, grads, &exp_avgs, &exp_avg_sqs, [&](const MultiTable& t, int blocks) {
    adam_multi_kernel<<<blocks, kBlock, 0, stream()>>>(t, h);
    TTQ_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace ttq::cuda
