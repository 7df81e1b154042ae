// PackedConvWeight (kernels/packed_weight.h): checks the canonical codes of a layer
// and builds the layout its device's kernel reads: relayout_cpu_groups and the code
// table for the CPU twin (kernels/packed_conv_cpu.cpp), relayout_mma's fragment-order
// words for the CUDA twin (kernels/packed_conv.cu). Tests: tests/test_packed_conv.cpp.
#include "kernels/packed_weight.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/error.h"
#include "kernels/pack.h"
#include "kernels/packed_format.h"

namespace ttq::kernels {

PackedConvWeight PackedConvWeight::from_codes(const Tensor& codes, const Shape& weight_shape, float wp,
                                              float wn, Device device, const std::string& what,
                                              int64_t groups) {
  TTQ_CHECK(weight_shape.size() == 4)
      << what << ": weight shape " << shape_str(weight_shape) << " is not 4-d";
  TTQ_INPUT_CHECK(groups >= 1 && weight_shape[0] % groups == 0)
      << what << ": " << groups << " groups do not divide the " << weight_shape[0] << " output channels";
  const int64_t n = shape_numel(weight_shape);
  TTQ_CHECK(codes.defined() && codes.dtype() == DType::U8) << what << ": codes must be U8";
  TTQ_INPUT_CHECK(codes.numel() == packed::packed_bytes(n))
      << what << ": " << codes.numel() << " code bytes for a weight of " << shape_str(weight_shape)
      << " (expected " << packed::packed_bytes(n) << ")";
  TTQ_INPUT_CHECK(std::isfinite(wp) && std::isfinite(wn)) << what << ": scales must be finite";
  const Tensor host = codes.to(Device::cpu()).contiguous();
  const uint8_t* bytes = host.data<uint8_t>();
  const CodeCounts counts = count_codes_cpu(bytes, n);
  TTQ_INPUT_CHECK(counts.invalid == 0) << what << ": " << counts.invalid << " invalid 2-bit codes (3)";
  if (n % 4 != 0) {
    TTQ_INPUT_CHECK((bytes[n / 4] >> (2 * (n % 4))) == 0)
        << what << ": non-zero padding bits in the last code byte";
  }
  PackedConvWeight w;
  w.m_shape = weight_shape;
  w.m_groups = groups;
  w.m_wp = wp;
  w.m_wn = wn;
  w.m_device = device;
  w.m_codes = host.to(device);
  const int64_t co = weight_shape[0], k = n / std::max<int64_t>(co, 1);
  if (device.is_cpu()) {
    w.m_cpu = relayout_cpu_groups(bytes, co, k, groups);
    w.m_lut = cpu_code_lut(wp, wn);
  } else {
    const MmaCodeLayout mma = relayout_mma(bytes, co, k, groups);
    Tensor words = Tensor::empty({static_cast<int64_t>(mma.words.size() * 2)}, DType::U8);
    std::memcpy(words.data<uint8_t>(), mma.words.data(), mma.words.size() * 2);
    w.m_mma = words.to(device);
  }
  return w;
}

PackedConvWeight PackedConvWeight::from_dense(const Tensor& weight, Device device, const std::string& what,
                                              int64_t groups) {
  TTQ_CHECK(weight.dim() == 4 && weight.dtype() == DType::F32) << what << ": F32 [co, ci, kh, kw] expected";
  const Tensor w = weight.to(Device::cpu()).contiguous();
  const float* v = w.data<float>();
  const int64_t n = w.numel();
  float pos = 0, neg = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (v[i] > 0) {
      TTQ_INPUT_CHECK(pos == 0 || v[i] == pos) << what << ": more than three distinct values";
      pos = v[i];
    } else if (v[i] < 0) {
      TTQ_INPUT_CHECK(neg == 0 || v[i] == neg) << what << ": more than three distinct values";
      neg = v[i];
    } else {
      TTQ_INPUT_CHECK(v[i] == 0) << what << ": non-finite value";
    }
  }
  Tensor codes = Tensor::empty({n}, DType::U8);
  uint8_t* c = codes.data<uint8_t>();
  for (int64_t i = 0; i < n; ++i) c[i] = v[i] > 0 ? packed::kPos : (v[i] < 0 ? packed::kNeg : packed::kZero);
  return from_codes(pack_codes(codes), w.shape(), pos == 0 ? 1.0f : pos, neg == 0 ? 1.0f : -neg, device, what,
                    groups);
}

Tensor PackedConvWeight::decode() const {
  Tensor wp = Tensor::full({1}, m_wp, DType::F32, m_device),
         wn = Tensor::full({1}, m_wn, DType::F32, m_device);
  return decode_packed(m_codes, m_shape, wp, wn);
}

int64_t PackedConvWeight::bytes() const {
  if (!defined()) return 0;
  if (m_device.is_cpu()) {
    int64_t b = static_cast<int64_t>(m_lut.size() * 4);
    for (const CpuCodeLayout& l : m_cpu)
      b += static_cast<int64_t>(l.codes.size() + l.mask.size() * 8 + l.start.size() * 8);
    return b;
  }
  return m_codes.numel() + m_mma.numel();
}

}  // namespace ttq::kernels
