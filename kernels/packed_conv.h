// Convolution on packed 2-bit ternary weights (docs/packed-layout.md):
//   y = epilogue(conv(prologue(x), Wq)),  Wq[co, k] in {+Wp, 0, -Wn} from 2-bit codes,
// so each output is Wp * (sum of x over P) - Wn * (sum of x over N). The 1x1 case is
// the linear layer. Layers: packed_conv_ref (kernels/packed_conv_ref.cpp: naive,
// float64 sums) -> packed_conv_cpu (kernels/packed_conv_cpu.cpp: AVX-512, AVX2+FMA or
// scalar micro-kernel picked at run time, OpenMP) and packed_conv_cuda
// (kernels/packed_conv.cu: fp16 tensor-core implicit GEMM or an fp32 CUDA-core
// fallback) -> the tensor entry packed_conv2d() (kernels/packed_conv.cpp). The weights
// stay 2-bit in memory (PackedConvWeight, kernels/packed_weight.h); each kernel re-lays
// the canonical codes out once, at load time, through relayout_cpu / relayout_mma
// (kernels/packed_layout.h; round trips tested). A grouped conv (groups > 1, weight
// [co, ci/groups, kh, kw]; depthwise when ci/groups == 1) keeps the canonical codes of
// its [co, ci/groups*kh*kw] matrix and one layout per group: the CPU twin runs each
// group as a conv of its own on channel slices, the CUDA twin takes the group from the
// grid. Tests: tests/test_packed_conv.cpp; benchmarks: bench/bench_packed_conv.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/backend.h"
#include "engine/tensor.h"
#include "kernels/packed_layout.h"
#include "kernels/packed_weight.h"

#ifdef TTQ_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace ttq::kernels {

// ---- the operation ------------------------------------------------------------------

// Per-channel affine map with optional ReLU: v -> relu?(v * scale[c] + shift[c]).
// A null scale means 1, a null shift 0. BatchNorm in eval mode is scale =
// weight / sqrt(running_var + eps), shift = bias - running_mean * scale.
struct ChannelAffine {
  const float* scale = nullptr;
  const float* shift = nullptr;
  bool relu = false;
  bool identity() const { return scale == nullptr && shift == nullptr && !relu; }
};

// Shape and options of one packed convolution, shared by every twin.
//   x  [n, ci, h, w]: each (sample, channel) plane dense (row stride w), sample and
//      channel strides free (a channel slice of a wider buffer works);
//   pre (prologue, per input channel) is applied to x, then, when pool2, a 2x2 stride-2
//      average pool (floor); the conv (stride, zero padding of the *activated* input)
//      runs on that; post (epilogue, per output channel) is applied to the conv result
//      and finally `residual` (same layout rules as y) is added when non-null:
//   y = post(conv(pool2?(pre(x)))) + residual.
// DenseNet's BN-ReLU-conv is pre; conv followed by BN-ReLU is post; a transition's
// conv1x1-avgpool equals pool2 before the 1x1 conv.
// With groups > 1 (dividing ci and co), output channel o sees input channels
// [gi*ci/groups, (gi+1)*ci/groups) for gi = o / (co/groups), the weight matrix is
// [co, ci/groups*kh*kw] and each group is a conv of its own on channel slices.
struct PackedConvShape {
  int64_t n = 1, ci = 1, h = 1, w = 1;
  int64_t co = 1, kh = 1, kw = 1;
  int stride = 1, pad = 0;
  bool pool2 = false;
  int64_t groups = 1;
  int64_t hs() const { return pool2 ? h / 2 : h; }  // spatial size the conv sees
  int64_t ws() const { return pool2 ? w / 2 : w; }
  int64_t ho() const { return (hs() + 2 * pad - kh) / stride + 1; }
  int64_t wo() const { return (ws() + 2 * pad - kw) / stride + 1; }
  int64_t cg() const { return ci / groups; }    // input channels per group
  int64_t og() const { return co / groups; }    // output channels per group
  int64_t k() const { return cg() * kh * kw; }  // taps per output: the GEMM's K
  int64_t macs() const { return n * co * k() * ho() * wo(); }
};

// Raw operands (host pointers for the CPU twins, device pointers for the CUDA twin).
struct PackedConvArgs {
  PackedConvShape shape;
  const float* x = nullptr;
  int64_t x_sn = 0, x_sc = 0;  // sample / channel strides of x (elements)
  float* y = nullptr;
  int64_t y_sn = 0, y_sc = 0;
  const float* residual = nullptr;
  int64_t r_sn = 0, r_sc = 0;
  ChannelAffine pre, post;
  float wp = 1, wn = 1;
};

// CPU micro-kernels: Scalar (any x86-64 / other CPU), Avx2 (AVX2 + FMA, 4 x 24
// register blocks), Avx512 (AVX-512F, 4 x 48 register blocks). Avx2 and Avx512 do
// the same FMAs in the same order per output, so they give the same bits.
enum class CpuIsa : uint8_t { Auto, Scalar, Avx2, Avx512 };
// The micro-kernel Auto picks on this machine (the widest one the CPU and OS support).
CpuIsa cpu_isa_auto();
// Whether this machine can run `isa` (Auto and Scalar: always).
bool cpu_isa_supported(CpuIsa isa);
const char* cpu_isa_name(CpuIsa isa);

// The reference: straight loops, float64 sums, decoding the canonical codes as it
// goes. requires args.y not overlapping x or residual. ensures every y element written.
void packed_conv_ref(const PackedConvArgs& args, const uint8_t* canonical);

// The CPU twin. requires args.shape.groups == 1, layout = relayout_cpu(codes of
// [co, ci*kh*kw]), lut = the 256 x 4 table cpu_code_lut(wp, wn). Any stride and
// padding; stride 1 reads the prepared input in place, other strides go through an
// explicit im2col. ensures y as packed_conv_ref up to float summation order
// (bit-identical when every partial sum is exact). Multithreaded (OpenMP) above ~2 M
// multiply-adds.
void packed_conv_cpu(const PackedConvArgs& args, const CpuCodeLayout& layout, const float* lut,
                     CpuIsa isa = CpuIsa::Auto);
// Any group count. requires group_layouts = relayout_cpu_groups(codes, co, k(), groups).
// ensures each group's outputs are those of the one-group twin on the group's channel
// slices of x, y, the residual and the affines (the same bits); groups go to threads
// when there are many small ones, else each group's conv is itself multithreaded.
void packed_conv_cpu(const PackedConvArgs& args, const std::vector<CpuCodeLayout>& group_layouts,
                     const float* lut, CpuIsa isa = CpuIsa::Auto);

// Which CUDA kernel runs: Auto picks the tensor cores when supported.
enum class CudaPath : uint8_t { Auto, TensorCore, Simt };
const char* cuda_path_name(CudaPath p);

#ifdef TTQ_HAS_CUDA
// True when the current device runs the tensor-core kernel (compute capability >= 8.0).
bool packed_conv_tensor_cores_supported();
// The CUDA twin, one launch, no allocation (safe inside CUDA graph capture).
// TensorCore: activations rounded to fp16 after the prologue, signs exact, fp32
// accumulation, y = Wp * acc_P - Wn * acc_N (about 1e-3 relative to the fp32 result;
// exact on small integers). Simt: fp32 FMA on CUDA cores, any shape. Auto picks the
// tensor cores when supported. requires canonical: ceil(co*k/4) device bytes; mma:
// relayout_mma's words (with args.shape.groups) on the device (TensorCore only, may be
// null for Simt); ChannelAffine pointers on the device. Groups: one launch, the group
// in the grid's z (at most 65535 groups). Throws ttq::Error for an unsupported request.
void packed_conv_cuda(const PackedConvArgs& args, const uint8_t* canonical, const uint16_t* mma,
                      CudaPath path, cudaStream_t stream);
#endif

// ---- tensor entries -----------------------------------------------------------------

// Tensor-level options. pre_* / post_* are F32 [ci] / [co] on the weight's device
// (undefined = absent); residual has y's shape. The group count is the weight's.
struct PackedConvOptions {
  int stride = 1, pad = 0;
  bool pool2 = false;
  Tensor pre_scale, pre_shift;
  bool pre_relu = false;
  Tensor post_scale, post_shift;
  bool post_relu = false;
  Tensor residual;
  CpuIsa cpu_isa = CpuIsa::Auto;
  CudaPath cuda_path = CudaPath::Auto;
};

// Output shape [n, co, ho, wo] of packed_conv2d on x.
Shape packed_conv_output_shape(const Tensor& x, const PackedConvWeight& w, const PackedConvOptions& o);
// requires x F32 [n, ci, h, w] on w.device() with dense planes (else it is copied),
// y F32 of packed_conv_output_shape with dense planes (a channel slice of a wider buffer
// is fine) not overlapping x or the residual. No autograd (inference only).
void packed_conv2d_out(const Tensor& x, const PackedConvWeight& w, const PackedConvOptions& o, Tensor& y);
Tensor packed_conv2d(const Tensor& x, const PackedConvWeight& w, const PackedConvOptions& o = {});
// The same through packed_conv_ref on the CPU (any device in, CPU tensor out).
Tensor packed_conv2d_ref(const Tensor& x, const PackedConvWeight& w, const PackedConvOptions& o = {});

}  // namespace ttq::kernels
