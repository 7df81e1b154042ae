// W2A8 convolution: ternary weights (the canonical 2-bit codes of kernels/packed_format.h,
// values {+Wp, 0, -Wn}) times int8 activations, exact int32 sums (docs/int8.md).
//
// Activations are int8 with a per-tensor scale and zero point, real = sx * (q - zx).
// For output channel o the kernel forms the two exact integer sums
//   P[o] = sum over the taps whose code is +1 of (q - zx),
//   N[o] = sum over the taps whose code is -1 of (q - zx),
// where a tap in the zero padding reads q = zx (a real zero), and then either returns P
// and N (Int32), or y = (Wp*sx) * P - (Wn*sx) * N followed by a per-channel affine and an
// optional ReLU (F32), or that y requantized to int8 with an output scale and zero point
// (Int8). The float steps are one fixed sequence of IEEE operations (int8_dequant,
// int8_requant below), so every twin gives the same bits.
//
// Layers: ternary_int8_conv_ref (naive loops over the canonical codes) ->
// ternary_int8_conv_cpu (kernels/int8_conv.cpp: AVX-512 VNNI, AVX-VNNI, AVX2 or scalar
// micro-kernel over the Int8WeightLayout, picked at run time, OpenMP) and
// ternary_int8_conv_cuda (kernels/int8_conv.cu: dp4a) -> the tensor entry
// ternary_int8_conv2d. Tests: tests/test_int8_conv.cpp; timing: bench/bench_int8_conv.cpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/tensor.h"
#include "kernels/packed_conv.h"

#ifdef TTQ_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace ttq::kernels {

// ---- quantization ------------------------------------------------------------------------

// Per-tensor affine int8 quantization: real = scale * (q - zero_point), q in [-128, 127].
// Symmetric int8 is zero_point 0; a non-negative tensor (after a ReLU) uses the whole
// range with zero_point -128. requires scale finite and > 0, zero_point in [-128, 127].
struct Int8Quant {
  float scale = 1.0f;
  int32_t zero_point = 0;
};

// The float part of every twin, in this order (no other rounding):
//   v = fma(a, float(P), -(b * float(N)))    a = Wp * sx, b = Wn * sx (float products)
//   v = fma(v, scale[o], shift[o])           1 and 0 when absent
//   v = v > 0 ? v : 0                        when relu
inline float int8_dequant(int32_t p, int32_t n, float a, float b, float scale, float shift, bool relu) {
  float v = std::fma(a, static_cast<float>(p), -(b * static_cast<float>(n)));
  v = std::fma(v, scale, shift);
  if (relu) v = v > 0.0f ? v : 0.0f;
  return v;
}
// q = clamp(round_half_even(v * inv_scale) + zero_point, -128, 127), inv_scale = 1 / scale
// computed once in float; v * inv_scale is clamped to [-256, 256] first (NaN -> -256),
// exactly as SIMD max / min do it.
inline int8_t int8_requant(float v, float inv_scale, int32_t zero_point) {
  float f = v * inv_scale;
  f = f > -256.0f ? f : -256.0f;
  f = f < 256.0f ? f : 256.0f;
  int32_t q = static_cast<int32_t>(std::nearbyint(f)) + zero_point;
  q = q < -128 ? -128 : (q > 127 ? 127 : q);
  return static_cast<int8_t>(q);
}

// ---- weight layout -------------------------------------------------------------------------

// The prepared weights of one layer [co, cg, kh, kw] (cg = ci / groups input channels
// per group), shared by the CPU micro-kernels and the CUDA kernel. The reduction axis is
// cut into "k-quads": 4 consecutive input channels at one tap, quad index
// kq = (cq * kh + i) * kw + j for channel quad cq = c / 4 (channels padded to 4 * cqs,
// padding weights 0). Rows (output channels of a group) are cut into blocks of 4 (rows
// past og weigh 0). For group g, block b, quad kq and row r of the block, two 32-bit
// words sit at masks[(((g * blocks + b) * kqs + kq) * 4 + r) * 2 + s]: s = 0 holds in byte
// e the 0/1 mask [code == +1] of channel 4*cq + e, s = 1 the mask [code == -1]. A kernel
// reads one block's 32 bytes per quad; 2 bytes per weight in all (docs/int8.md).
struct Int8WeightLayout {
  int64_t co = 0, cg = 0, kh = 1, kw = 1, groups = 1;
  int64_t cqs = 0;     // channel quads: ceil(cg / 4)
  int64_t kqs = 0;     // k-quads per row: cqs * kh * kw
  int64_t blocks = 0;  // row blocks per group: ceil(og / 4)
  std::vector<uint32_t> masks;
  std::vector<int32_t> counts;  // [2 * co]: +1 codes of row o at o, -1 codes at co + o
  int64_t og() const { return co / groups; }
};
// requires canonical: ceil(co * cg * kh * kw / 4) bytes of a [co, cg, kh, kw] weight, no
// code 3 among them (checked by PackedConvWeight::from_codes); groups >= 1 dividing co.
Int8WeightLayout relayout_int8(const uint8_t* canonical, int64_t co, int64_t cg, int64_t kh, int64_t kw,
                               int64_t groups = 1);
// The inverse: writes the ceil(numel / 4) canonical bytes (padding codes 0).
void relayout_int8_to_canonical(const Int8WeightLayout& layout, uint8_t* canonical);

// ---- the operation -------------------------------------------------------------------------

struct Int8ConvShape {
  int64_t n = 1, ci = 1, h = 1, w = 1;
  int64_t co = 1, kh = 1, kw = 1;
  int stride = 1, pad = 0;
  int64_t groups = 1;
  int64_t ho() const { return (h + 2 * pad - kh) / stride + 1; }
  int64_t wo() const { return (w + 2 * pad - kw) / stride + 1; }
  int64_t cg() const { return ci / groups; }
  int64_t og() const { return co / groups; }
  int64_t k() const { return cg() * kh * kw; }
  int64_t macs() const { return n * co * k() * ho() * wo(); }
};

enum class Int8Out : uint8_t { Int32, F32, Int8 };
const char* int8_out_name(Int8Out o);

// Raw operands (host pointers for the CPU twins, device pointers for the CUDA twin).
//   x [n, ci, h, w] int8, each plane dense, sample and channel strides free;
//   outputs [n, co, ho, wo] with dense planes and strides y_sn / y_sc (elements):
//   Int32 -> p_sum and n_sum (P and N), F32 -> y, Int8 -> yq (y_quant).
// post: the per-channel affine and ReLU of the F32 and Int8 outputs (ignored for Int32).
struct Int8ConvArgs {
  Int8ConvShape shape;
  const int8_t* x = nullptr;
  int64_t x_sn = 0, x_sc = 0;
  Int8Quant x_quant;
  float wp = 1, wn = 1;
  Int8Out out = Int8Out::F32;
  int32_t* p_sum = nullptr;
  int32_t* n_sum = nullptr;
  float* y = nullptr;
  int8_t* yq = nullptr;
  int64_t y_sn = 0, y_sc = 0;
  ChannelAffine post;
  Int8Quant y_quant;
};

// CPU micro-kernels. Avx512Vnni: vpdpbusd on zmm (AVX-512F/BW + VNNI), 4 rows x 48
// columns; AvxVnni: vpdpbusd on ymm (VEX encoded), 2 x 24; Avx2: vpmaddubsw into int16
// (exact: see docs/int8.md) widened by vpmaddwd every 64 quads, 2 x 24; Scalar: plain
// loops. All give the same P and N (integers) and the same float bits.
enum class Int8Isa : uint8_t { Auto, Scalar, Avx2, AvxVnni, Avx512Vnni };
const char* int8_isa_name(Int8Isa isa);
// Whether this machine (CPU and OS) can run `isa` (Auto and Scalar: always).
bool int8_isa_supported(Int8Isa isa);
// The widest supported: Avx512Vnni, then AvxVnni, then Avx2, then Scalar.
Int8Isa int8_isa_auto();

// The argument checks every twin runs first: ttq::Error for a bad shape, group count or
// null pointer, or more than 2^23 taps per output (the bound that keeps every int32 sum
// exact); ttq::InputError for a quantization scale that is not finite and positive, a zero
// point outside [-128, 127] or scales Wp / Wn that are not finite.
void ternary_int8_conv_check(const Int8ConvArgs& args);
// The reference: straight loops over the canonical codes, int32 sums, the float steps
// above. requires outputs not overlapping x. ensures every output element written.
void ternary_int8_conv_ref(const Int8ConvArgs& args, const uint8_t* canonical);
// The CPU twin. requires layout = relayout_int8(codes, co, ci / groups, kh, kw, groups).
// Any stride, padding and group count (ci / groups is padded to a multiple of 4: a
// depthwise conv does 4x the work it needs). ensures the reference's bits. Throws
// ttq::Error when this CPU cannot run `isa`. Multithreaded (OpenMP) above ~4 M MACs.
void ternary_int8_conv_cpu(const Int8ConvArgs& args, const Int8WeightLayout& layout,
                           Int8Isa isa = Int8Isa::Auto);

#ifdef TTQ_HAS_CUDA
// The CUDA twin (dp4a), one launch, no allocation. requires masks: the layout's words
// and counts: its [2 * co] counts, both on the device; ChannelAffine pointers on the
// device; at most 65535 groups. ensures the reference's bits.
void ternary_int8_conv_cuda(const Int8ConvArgs& args, const uint32_t* masks, const int32_t* counts,
                            cudaStream_t stream);
#endif

// ---- tensor entries -------------------------------------------------------------------------
//
// The engine has no int8 dtype: int8 tensors are U8 tensors holding the two's-complement
// bytes (static_cast<int8_t> of each byte is the value).

// q = int8_requant(x, 1 / quant.scale, quant.zero_point) per element. requires x F32 on the
// CPU. ensures U8 of x's shape.
Tensor quantize_int8(const Tensor& x, Int8Quant quant);
// x = scale * (q - zero_point) per element (float). requires q U8 on the CPU.
Tensor dequantize_int8(const Tensor& q, Int8Quant quant);

// The step in front of an int8 conv in a packed model (models/packed_compiler.cpp): for
// x [n, c, h, w] F32 on the CPU (each plane dense, sample and channel strides free: a
// channel slice of a concatenation), per element
//   v = fma(x, scale[c], shift[c])   when scale is defined (a folded BatchNorm)
//   v = v > 0 ? v : 0                when relu
//   v = ((v00 + v01) + (v10 + v11)) * 0.25f   when pool2 (2x2, stride 2, floor)
// then y[n, c, ho, wo] (dense) is q = int8_requant(v, 1 / quant->scale, quant->zero_point)
// (U8 int8 bytes) or, when quant is null, v itself (F32: what calibration observes).
// requires y of that shape and dtype on the CPU, not overlapping x.
void affine_pool_quantize_int8_out(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu,
                                   bool pool2, const Int8Quant* quant, Tensor& y);

// One ternary conv layer prepared for int8 activations on one device: the host layout
// (always) and, on CUDA, its masks and counts on the device.
class Int8ConvWeight {
 public:
  Int8ConvWeight() = default;
  // ensures the layout of w's canonical codes (with w's groups, Wp, Wn) built for `device`.
  static Int8ConvWeight from_packed(const PackedConvWeight& w, Device device);

  bool defined() const { return m_layout.co > 0; }
  int64_t co() const { return m_layout.co; }
  int64_t ci() const { return m_layout.cg * m_layout.groups; }
  int64_t groups() const { return m_layout.groups; }
  int64_t kh() const { return m_layout.kh; }
  int64_t kw() const { return m_layout.kw; }
  float wp() const { return m_wp; }
  float wn() const { return m_wn; }
  Device device() const { return m_device; }
  const Int8WeightLayout& layout() const { return m_layout; }
  const Tensor& device_masks() const { return m_masks; }    // CUDA: U8 view of the words
  const Tensor& device_counts() const { return m_counts; }  // CUDA: I32 [2 * co]
  int64_t bytes() const;                                    // what the device holds for the layer

 private:
  Int8WeightLayout m_layout;
  float m_wp = 1, m_wn = 1;
  Device m_device;
  Tensor m_masks, m_counts;
};

struct Int8ConvOptions {
  int stride = 1, pad = 0;
  Int8Out out = Int8Out::F32;
  Tensor post_scale, post_shift;  // F32 [co] on the weight's device (undefined = absent)
  bool post_relu = false;
  Int8Quant y_quant;  // Int8 output
  Int8Isa cpu_isa = Int8Isa::Auto;
};

// [n, co, ho, wo], or [2, n, co, ho, wo] (P then N) for Int32 output.
Shape ternary_int8_conv_output_shape(const Tensor& xq, const Int8ConvWeight& w, const Int8ConvOptions& o);
// requires xq U8 (int8 bytes) [n, ci, h, w] on w.device() (copied when its planes are not
// dense). Throws ttq::InputError for bad quantization parameters, ttq::Error for bad shapes
// or dtypes. ensures F32, U8 (int8 bytes) or I32 output by o.out.
Tensor ternary_int8_conv2d(const Tensor& xq, Int8Quant x_quant, const Int8ConvWeight& w,
                           const Int8ConvOptions& o = {});
// The same into a preallocated y of that shape and dtype (F32 or U8 by o.out; Int32 is not
// accepted) whose planes are dense and whose sample and channel strides are free (a channel
// slice of a concatenation buffer). requires xq's planes dense.
void ternary_int8_conv2d_out(const Tensor& xq, Int8Quant x_quant, const Int8ConvWeight& w,
                             const Int8ConvOptions& o, Tensor& y);

}  // namespace ttq::kernels
