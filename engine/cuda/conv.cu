// CUDA conv2d forward / backward-data / backward-filter through cuDNN 9 (its
// legacy convolution API, present in every 9.x). CPU twin: engine/cpu/conv.cpp;
// tested by tests/test_backend_ops.cpp and tests/test_cuda_train_step.cpp.
//
// Per shape (device, dtype, N, C, H, W, K, kh, kw, stride, pad, dilation, groups,
// TF32 policy) a plan holds the descriptors and, per direction, the algorithm chosen on first
// use: measured with cudnnFind*Ex on the call's own buffers (or, with
// TTQ_CUDNN_FIND=0, the cudnnGet*_v7 heuristic), fastest first among those
// whose workspace fits the limit, deterministic ones only unless
// TTQ_CUDNN_DETERMINISTIC=0. The workspace is the device's shared scratch
// (context.h), bounded by TTQ_CUDNN_WORKSPACE_MB (default 1024) and a quarter
// of the free memory. With TF32 off, fp32 convolutions run in FMA math only.
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "engine/backend.h"
#include "engine/cuda/context.h"

namespace ttq::cuda {

namespace {

cudnnDataType_t cudnn_dtype(DType t) {
  switch (t) {
    case DType::F32: return CUDNN_DATA_FLOAT;
    case DType::F64: return CUDNN_DATA_DOUBLE;
    default: break;
  }
  TTQ_THROW() << "cuDNN convolution: unsupported dtype " << dtype_name(t) << " (expected F32 or F64)";
}

// alpha / beta in the type cuDNN expects for the data type.
struct Scale {
  float f;
  double d;
  explicit Scale(double v) : f(static_cast<float>(v)), d(v) {}
  const void* for_type(DType t) const { return t == DType::F64 ? static_cast<const void*>(&d) : &f; }
};

// Everything a plan's descriptors and algorithm choices depend on: the algorithm
// measured for one dilation or group count is not valid for another.
struct ConvKey {
  int device;
  DType dtype;
  int64_t n, c, h, w, k, kh, kw;  // c: all input channels (the filter holds c / groups)
  int sh, sw, ph, pw, dh, dw, groups;
  bool tf32;
  auto tie() const {
    return std::tie(device, dtype, n, c, h, w, k, kh, kw, sh, sw, ph, pw, dh, dw, groups, tf32);
  }
  bool operator<(const ConvKey& o) const { return tie() < o.tie(); }
};

struct AlgoChoice {
  bool ready = false;
  int algo = 0;
  size_t workspace = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  AlgoChoice fwd, bwd_data, bwd_filter;

  ConvPlan() = default;
  ConvPlan(const ConvPlan&) = delete;
  ConvPlan& operator=(const ConvPlan&) = delete;
  ~ConvPlan() {
    // Plans live until exit in a leaked cache; this runs only when building one fails.
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (bias) cudnnDestroyTensorDescriptor(bias);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
  }
};

int to_int(int64_t v, const char* what) {
  TTQ_CHECK(v >= 0 && v <= INT32_MAX) << "cuDNN convolution: " << what << " = " << v << " exceeds int";
  return static_cast<int>(v);
}

// The math type a direction runs in: fp32 without TF32 is restricted to FMA
// kernels; otherwise whatever the chosen algorithm was measured with.
cudnnMathType_t base_math(const ConvKey& key) {
  if (key.dtype == DType::F32 && !key.tf32) return CUDNN_FMA_MATH;
  return CUDNN_DEFAULT_MATH;
}

std::unique_ptr<ConvPlan> make_plan(const ConvKey& key, int64_t ho, int64_t wo) {
  auto p = std::make_unique<ConvPlan>();
  const cudnnDataType_t dt = cudnn_dtype(key.dtype);
  TTQ_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
  TTQ_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
  TTQ_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->bias));
  TTQ_CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
  TTQ_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv));
  TTQ_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, dt, to_int(key.n, "N"),
                                             to_int(key.c, "C"), to_int(key.h, "H"), to_int(key.w, "W")));
  TTQ_CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, dt, CUDNN_TENSOR_NCHW, to_int(key.k, "K"),
                                             to_int(key.c / key.groups, "C/groups"), to_int(key.kh, "kh"),
                                             to_int(key.kw, "kw")));
  TTQ_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv, key.ph, key.pw, key.sh, key.sw, key.dh, key.dw,
                                                  CUDNN_CROSS_CORRELATION, dt));
  TTQ_CUDNN_CHECK(cudnnSetConvolutionGroupCount(p->conv, key.groups));
  TTQ_CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, base_math(key)));
  int on = 0, oc = 0, oh = 0, ow = 0;
  TTQ_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->w, &on, &oc, &oh, &ow));
  TTQ_CHECK(on == key.n && oc == key.k && oh == ho && ow == wo)
      << "cuDNN convolution: output [" << on << ", " << oc << ", " << oh << ", " << ow
      << "] but the caller expects [" << key.n << ", " << key.k << ", " << ho << ", " << wo << "]";
  TTQ_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, dt, on, oc, oh, ow));
  TTQ_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->bias, CUDNN_TENSOR_NCHW, dt, 1, oc, 1, 1));
  return p;
}

std::mutex& plans_mutex() {
  static auto* m = new std::mutex();
  return *m;
}

ConvKey key_of(const Tensor& x, const Tensor& w, const Conv2dParams& prm) {
  TTQ_CHECK(x.dim() == 4 && w.dim() == 4 && prm.groups >= 1 && x.size(1) == w.size(1) * prm.groups &&
            w.size(0) % prm.groups == 0)
      << "cuDNN convolution: x " << shape_str(x.shape()) << ", w " << shape_str(w.shape()) << ", groups "
      << prm.groups;
  return ConvKey{x.device().index, x.dtype(),      x.size(0),      x.size(1),    x.size(2),    x.size(3),
                 w.size(0),        w.size(2),      w.size(3),      prm.stride_h, prm.stride_w, prm.pad_h,
                 prm.pad_w,        prm.dilation_h, prm.dilation_w, prm.groups,   allow_tf32()};
}

ConvPlan& plan_for(const ConvKey& key, int64_t ho, int64_t wo) {
  static auto* plans = new std::map<ConvKey, std::unique_ptr<ConvPlan>>();  // never destroyed
  std::lock_guard<std::mutex> lock(plans_mutex());
  auto it = plans->find(key);
  if (it == plans->end()) it = plans->emplace(key, make_plan(key, ho, wo)).first;
  return *it->second;
}

bool use_find() { return env_long("TTQ_CUDNN_FIND", 1) != 0; }
bool want_deterministic() { return env_long("TTQ_CUDNN_DETERMINISTIC", 1) != 0; }

size_t workspace_limit() {
  const size_t cap = static_cast<size_t>(std::max(0L, env_long("TTQ_CUDNN_WORKSPACE_MB", 1024))) << 20;
  size_t free_b = 0, total_b = 0;
  TTQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return std::min(cap, free_b / 4);
}

// Index of the first usable result (they come fastest first), -1 if none.
template <class Perf>
int pick(const Perf* perf, int count, size_t limit, bool deterministic) {
  for (int i = 0; i < count; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > limit) continue;
    if (deterministic && perf[i].determinism != CUDNN_DETERMINISTIC) continue;
    return i;
  }
  return -1;
}

template <class Perf>
AlgoChoice finish_choice(const ConvKey& key, const Perf* perf, int count, size_t limit, const char* what) {
  int i = pick(perf, count, limit, want_deterministic());
  if (i < 0) i = pick(perf, count, limit, false);  // no deterministic algorithm for this shape
  TTQ_CHECK(i >= 0) << "cuDNN found no " << what << " algorithm within a workspace of " << (limit >> 20)
                    << " MiB";
  AlgoChoice c;
  c.ready = true;
  c.algo = static_cast<int>(perf[i].algo);
  c.workspace = perf[i].memory;
  c.math = base_math(key) == CUDNN_FMA_MATH ? CUDNN_FMA_MATH : perf[i].mathType;
  return c;
}

void check_conv_operands(const char* what, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    TTQ_CHECK(t->is_contiguous()) << what << ": contiguous operands expected, got strides of " << t->str();
  }
}

}  // namespace

void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Tensor& y) {
  DeviceGuard g(x);
  check_conv_operands("cuda::conv2d_forward", {&x, &w, &bias, &y});
  if (y.numel() == 0) return;
  // An empty sum (no input channels, or an empty plane seen only through the
  // padding): y = bias, as on the CPU.
  if (x.numel() == 0 || w.size(2) * w.size(3) == 0) {
    if (bias.defined()) {
      Tensor b = bias.view({1, bias.numel(), 1, 1}).as_strided(y.shape(), {0, 1, 0, 0}, bias.offset());
      copy(b, y);
    } else {
      fill(y, 0);
    }
    return;
  }
  const ConvKey key = key_of(x, w, p);
  ConvPlan& plan = plan_for(key, y.size(2), y.size(3));
  cudnnHandle_t h = cudnn_handle();
  const Scale one(1), zero(0);
  if (!plan.fwd.ready) {
    const size_t limit = workspace_limit();
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int count = 0;
    TTQ_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, base_math(key)));
    if (use_find()) {
      void* ws = workspace(limit);
      TTQ_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
          h, plan.x, x.raw_data(), plan.w, w.raw_data(), plan.conv, plan.y, y.raw_data(),
          CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf, ws, limit));
    } else {
      TTQ_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, plan.x, plan.w, plan.conv, plan.y,
                                                             CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf));
    }
    plan.fwd = finish_choice(key, perf, count, limit, "forward convolution");
  }
  TTQ_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, plan.fwd.math));
  TTQ_CUDNN_CHECK(cudnnConvolutionForward(
      h, one.for_type(x.dtype()), plan.x, x.raw_data(), plan.w, w.raw_data(), plan.conv,
      static_cast<cudnnConvolutionFwdAlgo_t>(plan.fwd.algo), workspace(plan.fwd.workspace),
      plan.fwd.workspace, zero.for_type(x.dtype()), plan.y, y.raw_data()));
  if (bias.defined())
    TTQ_CUDNN_CHECK(cudnnAddTensor(h, one.for_type(x.dtype()), plan.bias, bias.raw_data(),
                                   one.for_type(x.dtype()), plan.y, y.raw_data()));
}

void conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dParams& p, Tensor& gx) {
  DeviceGuard g(gy);
  check_conv_operands("cuda::conv2d_backward_data", {&gy, &w, &gx});
  if (gx.numel() == 0) return;
  if (gy.numel() == 0 || w.size(2) * w.size(3) == 0) {
    fill(gx, 0);
    return;
  }
  const ConvKey key = key_of(gx, w, p);
  ConvPlan& plan = plan_for(key, gy.size(2), gy.size(3));
  cudnnHandle_t h = cudnn_handle();
  const Scale one(1), zero(0);
  if (!plan.bwd_data.ready) {
    const size_t limit = workspace_limit();
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int count = 0;
    TTQ_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, base_math(key)));
    if (use_find()) {
      void* ws = workspace(limit);
      TTQ_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
          h, plan.w, w.raw_data(), plan.y, gy.raw_data(), plan.conv, plan.x, gx.raw_data(),
          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf, ws, limit));
    } else {
      TTQ_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
          h, plan.w, plan.y, plan.conv, plan.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf));
    }
    plan.bwd_data = finish_choice(key, perf, count, limit, "backward-data convolution");
  }
  TTQ_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, plan.bwd_data.math));
  TTQ_CUDNN_CHECK(cudnnConvolutionBackwardData(
      h, one.for_type(gy.dtype()), plan.w, w.raw_data(), plan.y, gy.raw_data(), plan.conv,
      static_cast<cudnnConvolutionBwdDataAlgo_t>(plan.bwd_data.algo), workspace(plan.bwd_data.workspace),
      plan.bwd_data.workspace, zero.for_type(gy.dtype()), plan.x, gx.raw_data()));
}

void conv2d_backward_filter(const Tensor& gy, const Tensor& x, const Conv2dParams& p, Tensor& gw,
                            Tensor& gbias) {
  DeviceGuard g(gy);
  check_conv_operands("cuda::conv2d_backward_filter", {&gy, &x, &gw, &gbias});
  if (gy.numel() == 0) {  // an empty batch: no gradient
    if (gw.numel() > 0) fill(gw, 0);
    if (gbias.defined() && gbias.numel() > 0) fill(gbias, 0);
    return;
  }
  cudnnHandle_t h = cudnn_handle();
  const Scale one(1), zero(0);
  if (x.numel() == 0) {  // an empty sum: gw = 0, while gbias still sums gy (as on the CPU)
    if (gw.numel() > 0) fill(gw, 0);
  } else if (gw.numel() > 0) {
    const ConvKey key = key_of(x, gw, p);
    ConvPlan& plan = plan_for(key, gy.size(2), gy.size(3));
    if (!plan.bwd_filter.ready) {
      const size_t limit = workspace_limit();
      cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
      int count = 0;
      TTQ_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, base_math(key)));
      if (use_find()) {
        void* ws = workspace(limit);
        TTQ_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
            h, plan.x, x.raw_data(), plan.y, gy.raw_data(), plan.conv, plan.w, gw.raw_data(),
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, perf, ws, limit));
      } else {
        TTQ_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
            h, plan.x, plan.y, plan.conv, plan.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, perf));
      }
      plan.bwd_filter = finish_choice(key, perf, count, limit, "backward-filter convolution");
    }
    TTQ_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, plan.bwd_filter.math));
    TTQ_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
        h, one.for_type(x.dtype()), plan.x, x.raw_data(), plan.y, gy.raw_data(), plan.conv,
        static_cast<cudnnConvolutionBwdFilterAlgo_t>(plan.bwd_filter.algo),
        workspace(plan.bwd_filter.workspace), plan.bwd_filter.workspace, zero.for_type(x.dtype()), plan.w,
        gw.raw_data()));
  }
  if (gbias.defined() && gbias.numel() > 0) {
    // The bias gradient needs only gy's descriptor and a [1,K,1,1] one.
    cudnnTensorDescriptor_t yd = nullptr, bd = nullptr;
    const cudnnDataType_t dt = cudnn_dtype(gy.dtype());
    TTQ_CUDNN_CHECK(cudnnCreateTensorDescriptor(&yd));
    TTQ_CUDNN_CHECK(cudnnCreateTensorDescriptor(&bd));
    cudnnStatus_t st = cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, dt, to_int(gy.size(0), "N"),
                                                  to_int(gy.size(1), "K"), to_int(gy.size(2), "Ho"),
                                                  to_int(gy.size(3), "Wo"));
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnSetTensor4dDescriptor(bd, CUDNN_TENSOR_NCHW, dt, 1, static_cast<int>(gy.size(1)), 1, 1);
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnConvolutionBackwardBias(h, one.for_type(gy.dtype()), yd, gy.raw_data(),
                                        zero.for_type(gy.dtype()), bd, gbias.raw_data());
    cudnnDestroyTensorDescriptor(yd);
    cudnnDestroyTensorDescriptor(bd);
    TTQ_CUDNN_CHECK(st);
  }
}

}  // namespace ttq::cuda
