// CUDA batch norm (per channel over N, H, W) through cuDNN's spatial batch
// normalisation. CPU twin: engine/cpu/batch_norm.cpp; tested by
// tests/test_backend_ops.cpp and tests/test_cuda_train_step.cpp.
//
// PyTorch semantics hold as they are: cuDNN normalises with the biased batch
// variance, updates running = (1 - factor) * running + factor * batch with
// factor = momentum, and uses the unbiased (Bessel-corrected) batch variance
// for running_var, as PyTorch does; resultSaveInvVariance is 1/sqrt(var + eps),
// the save_invstd of the contract. The backward pass reads the saved mean and
// inverse std, so the epsilon it is given is not used for the result.
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "engine/backend.h"
#include "engine/cuda/context.h"

namespace ttq::cuda {

namespace {

struct BnKey {
  int device;
  DType dtype;
  int64_t n, c, h, w;
  auto tie() const { return std::tie(device, dtype, n, c, h, w); }
  bool operator<(const BnKey& o) const { return tie() < o.tie(); }
};

struct BnDescs {
  cudnnTensorDescriptor_t x = nullptr, stats = nullptr;
};

int to_int(int64_t v) {
  TTQ_CHECK(v >= 0 && v <= INT32_MAX) << "cuDNN batch norm: dimension " << v << " exceeds int";
  return static_cast<int>(v);
}

// x as [N, C, H, W]: 2-D [N, C] and 3-D [N, C, L] inputs get unit trailing dimensions.
BnKey key_of(const Tensor& x) {
  TTQ_CHECK(x.dim() >= 2 && x.dim() <= 4)
      << "cuDNN batch norm: expected [N, C, H, W], got " << shape_str(x.shape());
  TTQ_CHECK(x.is_contiguous()) << "cuDNN batch norm: contiguous input expected";
  TTQ_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64)
      << "cuDNN batch norm: unsupported dtype " << dtype_name(x.dtype());
  return BnKey{x.device().index,           x.dtype(), x.size(0), x.size(1), x.dim() > 2 ? x.size(2) : 1,
               x.dim() > 3 ? x.size(3) : 1};
}

const BnDescs& descs_for(const Tensor& x) {
  const BnKey key = key_of(x);
  static auto* cache = new std::map<BnKey, BnDescs>();  // never destroyed
  static auto* mu = new std::mutex();
  std::lock_guard<std::mutex> lock(*mu);
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  BnDescs d;
  const cudnnDataType_t dt = key.dtype == DType::F64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  TTQ_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d.x));
  TTQ_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d.stats));
  TTQ_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d.x, CUDNN_TENSOR_NCHW, dt, to_int(key.n), to_int(key.c),
                                             to_int(key.h), to_int(key.w)));
  TTQ_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(d.stats, d.x, CUDNN_BATCHNORM_SPATIAL));
  return cache->emplace(key, d).first->second;
}

struct Scale {
  float f;
  double d;
  explicit Scale(double v) : f(static_cast<float>(v)), d(v) {}
  const void* for_type(DType t) const { return t == DType::F64 ? static_cast<const void*>(&d) : &f; }
};

// weight / bias may be undefined at this level: use ones / zeros.
Tensor or_constant(const Tensor& t, const Tensor& x, double v) {
  if (t.defined()) {
    TTQ_CHECK(t.is_contiguous() && t.numel() == x.size(1) && t.dtype() == x.dtype())
        << "cuDNN batch norm: per-channel tensor " << t.str() << " for input " << x.str();
    return t;
  }
  return Tensor::full({x.size(1)}, v, x.dtype(), x.device());
}

void check_stat(const Tensor& t, const Tensor& x, const char* what) {
  TTQ_CHECK(t.defined() && t.is_contiguous() && t.numel() == x.size(1) && t.dtype() == x.dtype())
      << "cuDNN batch norm: " << what << " must be a contiguous [" << x.size(1) << "] "
      << dtype_name(x.dtype()) << " tensor, got " << (t.defined() ? t.str() : std::string("undefined"));
}

}  // namespace

void batch_norm_forward_train(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                              Tensor& running_var, double momentum, double eps, Tensor& y, Tensor& save_mean,
                              Tensor& save_invstd) {
  DeviceGuard g(x);
  TTQ_CHECK(eps >= CUDNN_BN_MIN_EPSILON)
      << "cuDNN batch norm: eps " << eps << " below " << CUDNN_BN_MIN_EPSILON;
  check_stat(save_mean, x, "save_mean");
  check_stat(save_invstd, x, "save_invstd");
  if (x.numel() == 0) return;
  const BnDescs& d = descs_for(x);
  Tensor w = or_constant(weight, x, 1), b = or_constant(bias, x, 0);
  const bool track = running_mean.defined() && running_var.defined();
  if (track) {
    check_stat(running_mean, x, "running_mean");
    check_stat(running_var, x, "running_var");
  }
  const Scale one(1), zero(0);
  TTQ_CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(
      cudnn_handle(), CUDNN_BATCHNORM_SPATIAL, one.for_type(x.dtype()), zero.for_type(x.dtype()), d.x,
      x.raw_data(), d.x, y.raw_data(), d.stats, w.raw_data(), b.raw_data(), momentum,
      track ? running_mean.raw_data() : nullptr, track ? running_var.raw_data() : nullptr, eps,
      save_mean.raw_data(), save_invstd.raw_data()));
}

void batch_norm_forward_eval(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             const Tensor& running_mean, const Tensor& running_var, double eps, Tensor& y) {
  DeviceGuard g(x);
  TTQ_CHECK(eps >= CUDNN_BN_MIN_EPSILON)
      << "cuDNN batch norm: eps " << eps << " below " << CUDNN_BN_MIN_EPSILON;
  check_stat(running_mean, x, "running_mean");
  check_stat(running_var, x, "running_var");
  if (x.numel() == 0) return;
  const BnDescs& d = descs_for(x);
  Tensor w = or_constant(weight, x, 1), b = or_constant(bias, x, 0);
  const Scale one(1), zero(0);
  TTQ_CUDNN_CHECK(cudnnBatchNormalizationForwardInference(
      cudnn_handle(), CUDNN_BATCHNORM_SPATIAL, one.for_type(x.dtype()), zero.for_type(x.dtype()), d.x,
      x.raw_data(), d.x, y.raw_data(), d.stats, w.raw_data(), b.raw_data(), running_mean.raw_data(),
      running_var.raw_data(), eps));
}

void batch_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                         const Tensor& save_invstd, Tensor& gx, Tensor& gweight, Tensor& gbias) {
  DeviceGuard g(x);
  TTQ_CHECK(gy.is_contiguous() && gx.is_contiguous())
      << "cuDNN batch norm backward: contiguous gradients expected";
  check_stat(save_mean, x, "save_mean");
  check_stat(save_invstd, x, "save_invstd");
  const BnDescs& d = descs_for(x);
  Tensor w = or_constant(weight, x, 1);
  Tensor gw = gweight.defined() ? gweight : Tensor::empty({x.size(1)}, x.dtype(), x.device());
  Tensor gb = gbias.defined() ? gbias : Tensor::empty({x.size(1)}, x.dtype(), x.device());
  check_stat(gw, x, "gweight");
  check_stat(gb, x, "gbias");
  if (x.numel() == 0) {
    fill(gw, 0);
    fill(gb, 0);
    return;
  }
  const Scale one(1), zero(0);
  // The saved statistics are given, so cuDNN does not recompute the variance:
  // the epsilon argument (PyTorch's default here) does not enter the result.
  TTQ_CUDNN_CHECK(cudnnBatchNormalizationBackward(
      cudnn_handle(), CUDNN_BATCHNORM_SPATIAL, one.for_type(x.dtype()), zero.for_type(x.dtype()),
      one.for_type(x.dtype()), zero.for_type(x.dtype()), d.x, x.raw_data(), d.x, gy.raw_data(), d.x,
      gx.raw_data(), d.stats, w.raw_data(), gw.raw_data(), gb.raw_data(), 1e-5, save_mean.raw_data(),
      save_invstd.raw_data()));
}

}  // namespace ttq::cuda
