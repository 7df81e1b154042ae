// PackedConvWeight: one packed 2-bit conv layer held on one device, its canonical
// codes plus the layout that device's kernel reads (kernels/packed_layout.h). Defined
// in kernels/packed_weight.cpp; run by packed_conv2d (kernels/packed_conv.h) through
// the CPU twin or the CUDA twin (kernels/packed_conv.cu). Tests:
// tests/test_packed_conv.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "kernels/packed_layout.h"

namespace ttq::kernels {

// One quantized conv layer held packed on one device: the canonical codes plus the
// layout the device's kernel reads (CPU: one CpuCodeLayout per group + LUT; CUDA:
// canonical bytes and the fragment-order words of every group, both on the device).
class PackedConvWeight {
 public:
  PackedConvWeight() = default;
  // requires weight_shape [co, ci/groups, kh, kw]; codes: U8 [ceil(numel / 4)] canonical
  // bytes of that shape (any device; the layout does not depend on groups), no code 3
  // among the first numel, groups >= 1 dividing co (throws ttq::InputError naming `what`
  // otherwise), wp and wn finite. ensures the layouts for `device` are built.
  static PackedConvWeight from_codes(const Tensor& codes, const Shape& weight_shape, float wp, float wn,
                                     Device device, const std::string& what = "packed weight",
                                     int64_t groups = 1);
  // Packs dense ternary values ({+a, 0, -b} per tensor; F32 [co, ci/groups, kh, kw]); used
  // by tests and benchmarks. Throws ttq::InputError naming `what` on a fourth value.
  static PackedConvWeight from_dense(const Tensor& weight, Device device, const std::string& what = "weight",
                                     int64_t groups = 1);

  bool defined() const { return m_codes.defined(); }
  const Shape& weight_shape() const { return m_shape; }  // [co, ci/groups, kh, kw]
  int64_t co() const { return m_shape[0]; }
  int64_t ci() const { return m_shape[1] * m_groups; }  // input channels of the conv
  int64_t ci_per_group() const { return m_shape[1]; }
  int64_t groups() const { return m_groups; }
  int64_t kh() const { return m_shape[2]; }
  int64_t kw() const { return m_shape[3]; }
  float wp() const { return m_wp; }
  float wn() const { return m_wn; }
  Device device() const { return m_device; }
  const Tensor& codes() const { return m_codes; }                          // canonical, on device()
  const std::vector<CpuCodeLayout>& cpu_layouts() const { return m_cpu; }  // one per group (CPU)
  const std::vector<float>& cpu_lut() const { return m_lut; }
  const Tensor& mma_words() const { return m_mma; }  // U8 view of the uint16 words of every group (CUDA)
  // The dense F32 weight these codes stand for (on device()).
  Tensor decode() const;
  // Bytes the device holds for this layer (codes and kernel layout).
  int64_t bytes() const;

 private:
  Shape m_shape;
  int64_t m_groups = 1;
  float m_wp = 1, m_wn = 1;
  Device m_device;
  Tensor m_codes;
  std::vector<CpuCodeLayout> m_cpu;
  std::vector<float> m_lut;
  Tensor m_mma;
};

}  // namespace ttq::kernels
