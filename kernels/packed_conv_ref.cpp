// The reference packed 2-bit convolution (kernels/packed_conv.h): packed_conv_ref,
// straight loops over every output and tap, float64 sums, the canonical codes decoded
// as it goes, the prologue / pooling / epilogue applied per element exactly as the
// contract states. What the fast CPU twin (kernels/packed_conv_cpu.cpp) and the CUDA
// twin (kernels/packed_conv.cu) are tested against: tests/test_packed_conv.cpp.
#include "kernels/packed_conv.h"
#include "kernels/packed_conv_internal.h"
#include "kernels/packed_format.h"

namespace ttq::kernels {

using detail::canonical_code;
using detail::check_args;

namespace {

inline float affine(float v, const ChannelAffine& a, int64_t c) {
  if (a.scale) v = v * a.scale[c];
  if (a.shift) v = v + a.shift[c];
  if (a.relu) v = v > 0.0f ? v : 0.0f;
  return v;
}

// The conv's input value at (n, c, ih, iw) of the (pooled) plane, inside the plane.
inline float input_value(const PackedConvArgs& a, int64_t n, int64_t c, int64_t ih, int64_t iw) {
  const float* plane = a.x + n * a.x_sn + c * a.x_sc;
  const int64_t w = a.shape.w;
  if (!a.shape.pool2) return affine(plane[ih * w + iw], a.pre, c);
  const float* p = plane + 2 * ih * w + 2 * iw;
  // PyTorch's avg_pool2d order: rows, then columns, then the division (by 4, exact).
  const float s = ((affine(p[0], a.pre, c) + affine(p[1], a.pre, c)) + affine(p[w], a.pre, c)) +
                  affine(p[w + 1], a.pre, c);
  return s * 0.25f;
}

inline float epilogue(const PackedConvArgs& a, float v, int64_t n, int64_t co, int64_t p) {
  v = affine(v, a.post, co);
  if (a.residual) v += a.residual[n * a.r_sn + co * a.r_sc + p];
  return v;
}

}  // namespace

void packed_conv_ref(const PackedConvArgs& a, const uint8_t* canonical) {
  check_args(a);
  const PackedConvShape& s = a.shape;
  const int64_t ho = s.ho(), wo = s.wo(), hs = s.hs(), ws = s.ws(), k = s.k();
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t co = 0; co < s.co; ++co) {
      const int64_t c0 = co / s.og() * s.cg();  // the group's first input channel
      for (int64_t oh = 0; oh < ho; ++oh) {
        for (int64_t ow = 0; ow < wo; ++ow) {
          double acc = 0;
          for (int64_t c = 0; c < s.cg(); ++c) {
            for (int64_t i = 0; i < s.kh; ++i) {
              for (int64_t j = 0; j < s.kw; ++j) {
                const int64_t ih = oh * s.stride - s.pad + i, iw = ow * s.stride - s.pad + j;
                if (ih < 0 || ih >= hs || iw < 0 || iw >= ws) continue;
                const uint8_t code = canonical_code(canonical, co * k + (c * s.kh + i) * s.kw + j);
                const double wv = code == packed::kPos ? a.wp : (code == packed::kNeg ? -double(a.wn) : 0.0);
                acc += wv * input_value(a, n, c0 + c, ih, iw);
              }
            }
          }
          a.y[n * a.y_sn + co * a.y_sc + oh * wo + ow] =
              epilogue(a, static_cast<float>(acc), n, co, oh * wo + ow);
        }
      }
    }
  }
}

}  // namespace ttq::kernels
