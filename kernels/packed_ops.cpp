// CPU twins (plain loops, OpenMP over planes; the dense conv is the engine's CPU conv)
// and tensor entries of the fused inference ops of kernels/packed_ops.h. CUDA twins:
// kernels/packed_ops.cu. Tests: tests/test_packed_ops.cpp, tests/test_packed_model.cpp.
#include "kernels/packed_ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/backend.h"
#include "engine/cpu/parallel.h"
#include "engine/cuda/runtime.h"
#include "kernels/tensor_args.h"

namespace ttq::kernels {

namespace {

using detail::dense_planes;
using detail::dense_samples;
using detail::opt_ptr;

#ifdef TTQ_HAS_CUDA
cudaStream_t stream() { return static_cast<cudaStream_t>(cuda::current_stream()); }
#endif

}  // namespace

Shape affine_maxpool_output_shape(const Shape& x, const MaxPoolSpec& p) {
  TTQ_CHECK(x.size() == 4) << "affine_maxpool: x must be 4-d";
  TTQ_CHECK(p.kernel >= 1 && p.stride >= 1 && p.pad >= 0 && 2 * p.pad <= p.kernel)
      << "affine_maxpool: bad pooling";
  return {x[0], x[1], pool_out_size(x[2], p.kernel, p.stride, p.pad, p.ceil_mode),
          pool_out_size(x[3], p.kernel, p.stride, p.pad, p.ceil_mode)};
}

void affine_maxpool_out(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu,
                        const MaxPoolSpec& p, Tensor& y) {
  TTQ_CHECK(x.dim() == 4 && x.dtype() == DType::F32 && dense_planes(x))
      << "affine_maxpool: bad x " << x.str();
  const Shape out = affine_maxpool_output_shape(x.shape(), p);
  TTQ_CHECK(y.shape() == out && y.dtype() == DType::F32 && dense_planes(y) && y.device() == x.device())
      << "affine_maxpool: y must be F32 " << shape_str(out) << " with dense planes, got " << y.str();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), ho = out[2], wo = out[3];
  const float* sc = opt_ptr(scale, c, x.device(), "affine_maxpool scale");
  const float* sh = opt_ptr(shift, c, x.device(), "affine_maxpool shift");
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  if (x.device().is_cuda()) {
#ifdef TTQ_HAS_CUDA
    affine_maxpool_cuda(xp, x.stride(0), x.stride(1), n, c, h, w, sc, sh, relu, p, yp, y.stride(0),
                        y.stride(1), ho, wo, stream());
    return;
#else
    TTQ_THROW() << "affine_maxpool: this build has no CUDA backend";
#endif
  }
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), ys0 = y.stride(0), ys1 = y.stride(1);
  // Separable: activate the plane once, max over each row's windows, then over rows
  // (max is exact in any order). Window bounds per output column are precomputed.
  // Branch-free maxima (maxss / maxps): a NaN input is not propagated.
  std::vector<int64_t> wlo(static_cast<size_t>(wo)), whi(static_cast<size_t>(wo));
  for (int64_t ow = 0; ow < wo; ++ow) {
    wlo[ow] = std::max<int64_t>(ow * p.stride - p.pad, 0);
    whi[ow] = std::min<int64_t>(ow * p.stride - p.pad + p.kernel, w);
  }
#pragma omp parallel if (n * c * h * w > cpu::kParallelElements)
  {
    std::vector<float> act(static_cast<size_t>(h * w)), rowmax(static_cast<size_t>(h * wo));
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < n * c; ++nc) {
      const int64_t i = nc / c, ch = nc % c;
      const float* in = xp + i * xs0 + ch * xs1;
      float* o = yp + i * ys0 + ch * ys1;
      const float s = sc ? sc[ch] : 1.0f, b = sh ? sh[ch] : 0.0f;
      float* a = act.data();
      for (int64_t e = 0; e < h * w; ++e) {
        float v = in[e];
        if (sc) v = v * s;
        if (sh) v = v + b;
        if (relu) v = v > 0.0f ? v : 0.0f;
        a[e] = v;
      }
      for (int64_t ih = 0; ih < h; ++ih) {
        const float* r = a + ih * w;
        float* m = rowmax.data() + ih * wo;
        for (int64_t ow = 0; ow < wo; ++ow) {
          float best = r[wlo[ow]];
          for (int64_t iw = wlo[ow] + 1; iw < whi[ow]; ++iw) best = r[iw] > best ? r[iw] : best;
          m[ow] = best;
        }
      }
      for (int64_t oh = 0; oh < ho; ++oh) {
        const int64_t h0 = std::max<int64_t>(oh * p.stride - p.pad, 0);
        const int64_t h1 = std::min<int64_t>(oh * p.stride - p.pad + p.kernel, h);
        float* dst = o + oh * wo;
        std::copy(rowmax.data() + h0 * wo, rowmax.data() + (h0 + 1) * wo, dst);
        for (int64_t ih = h0 + 1; ih < h1; ++ih) {
          const float* m = rowmax.data() + ih * wo;
          for (int64_t ow = 0; ow < wo; ++ow) dst[ow] = m[ow] > dst[ow] ? m[ow] : dst[ow];
        }
      }
    }
  }
}

void affine_global_avgpool_out(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu,
                               Tensor& y) {
  TTQ_CHECK(x.dim() == 4 && x.dtype() == DType::F32 && dense_planes(x))
      << "affine_global_avgpool: bad x " << x.str();
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  TTQ_CHECK(y.shape() == Shape({n, c}) && y.dtype() == DType::F32 && y.is_contiguous() &&
            y.device() == x.device())
      << "affine_global_avgpool: y must be contiguous F32 [" << n << ", " << c << "], got " << y.str();
  const float* sc = opt_ptr(scale, c, x.device(), "affine_global_avgpool scale");
  const float* sh = opt_ptr(shift, c, x.device(), "affine_global_avgpool shift");
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  if (x.device().is_cuda()) {
#ifdef TTQ_HAS_CUDA
    affine_global_avgpool_cuda(xp, x.stride(0), x.stride(1), n, c, hw, sc, sh, relu, yp, stream());
    return;
#else
    TTQ_THROW() << "affine_global_avgpool: this build has no CUDA backend";
#endif
  }
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1);
#pragma omp parallel for schedule(static) if (n * c * hw > cpu::kParallelElements)
  for (int64_t nc = 0; nc < n * c; ++nc) {
    const int64_t i = nc / c, ch = nc % c;
    const float* in = xp + i * xs0 + ch * xs1;
    const float s = sc ? sc[ch] : 1.0f, b = sh ? sh[ch] : 0.0f;
    double sum = 0;
    for (int64_t e = 0; e < hw; ++e) {
      float v = in[e];
      if (sc) v = v * s;
      if (sh) v = v + b;
      if (relu) v = v > 0.0f ? v : 0.0f;
      sum += v;
    }
    yp[nc] = static_cast<float>(sum / static_cast<double>(hw));
  }
}

void linear_out(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  TTQ_CHECK(x.dim() == 2 && x.dtype() == DType::F32 && x.is_contiguous()) << "linear_out: bad x " << x.str();
  TTQ_CHECK(w.dim() == 2 && w.dtype() == DType::F32 && w.is_contiguous() && w.size(1) == x.size(1) &&
            w.device() == x.device())
      << "linear_out: bad w " << w.str() << " for x " << x.str();
  const int64_t n = x.size(0), in = x.size(1), out = w.size(0);
  TTQ_CHECK(y.shape() == Shape({n, out}) && y.dtype() == DType::F32 && y.is_contiguous() &&
            y.device() == x.device())
      << "linear_out: y must be contiguous F32 [" << n << ", " << out << "], got " << y.str();
  const float* bp = opt_ptr(b, out, x.device(), "linear_out bias");
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  float* yp = y.data<float>();
  if (x.device().is_cuda()) {
#ifdef TTQ_HAS_CUDA
    linear_cuda(xp, n, in, wp, bp, out, yp, stream());
    return;
#else
    TTQ_THROW() << "linear_out: this build has no CUDA backend";
#endif
  }
#pragma omp parallel for schedule(static) if (n * in * out > cpu::kParallelMacs)
  for (int64_t no = 0; no < n * out; ++no) {
    const int64_t i = no / out, o = no % out;
    const float* xr = xp + i * in;
    const float* wr = wp + o * in;
    double acc = bp ? bp[o] : 0.0;
    for (int64_t e = 0; e < in; ++e) acc += static_cast<double>(xr[e]) * wr[e];
    yp[no] = static_cast<float>(acc);
  }
}

// ---- average pooling ---------------------------------------------------------------

Shape avg_pool_output_shape(const Shape& x, const AvgPoolSpec& p) {
  TTQ_CHECK(x.size() == 4) << "avg_pool: x must be 4-d, got " << shape_str(x);
  TTQ_CHECK(p.kernel >= 1 && p.stride >= 1 && p.pad >= 0 && 2 * p.pad <= p.kernel)
      << "avg_pool: bad pooling (kernel " << p.kernel << ", stride " << p.stride << ", padding " << p.pad
      << "; the padding must be at most half the kernel)";
  const int64_t ho = pool_out_size(x[2], p.kernel, p.stride, p.pad, p.ceil_mode);
  const int64_t wo = pool_out_size(x[3], p.kernel, p.stride, p.pad, p.ceil_mode);
  TTQ_CHECK(ho >= 1 && wo >= 1) << "avg_pool: kernel " << p.kernel << " does not fit " << shape_str(x);
  return {x[0], x[1], ho, wo};
}

void avg_pool_out(const Tensor& x, const AvgPoolSpec& p, Tensor& y) {
  TTQ_CHECK(x.dim() == 4 && x.dtype() == DType::F32 && dense_planes(x)) << "avg_pool: bad x " << x.str();
  const Shape out = avg_pool_output_shape(x.shape(), p);
  TTQ_CHECK(y.shape() == out && y.dtype() == DType::F32 && dense_planes(y) && y.device() == x.device())
      << "avg_pool: y must be F32 " << shape_str(out) << " with dense planes, got " << y.str();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), ho = out[2], wo = out[3];
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  if (x.device().is_cuda()) {
#ifdef TTQ_HAS_CUDA
    avg_pool_cuda(xp, x.stride(0), x.stride(1), n, c, h, w, p, yp, y.stride(0), y.stride(1), ho, wo,
                  stream());
    return;
#else
    TTQ_THROW() << "avg_pool: this build has no CUDA backend";
#endif
  }
  // Windows per output row and column (separable): [lo, hi) inside the input, and the
  // extent clipped to the padded input only (count_include_pad's divisor).
  struct Span {
    int64_t lo, hi, padded;
  };
  auto spans = [&](int64_t out_size, int64_t in_size) {
    std::vector<Span> v(static_cast<size_t>(out_size));
    for (int64_t o = 0; o < out_size; ++o) {
      const int64_t s = o * p.stride - p.pad, e = std::min<int64_t>(s + p.kernel, in_size + p.pad);
      v[o] = {std::max<int64_t>(s, 0), std::min<int64_t>(e, in_size), e - s};
    }
    return v;
  };
  const std::vector<Span> rows = spans(ho, h), cols = spans(wo, w);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), ys0 = y.stride(0), ys1 = y.stride(1);
#pragma omp parallel for schedule(static) if (n * c * h * w > cpu::kParallelElements)
  for (int64_t nc = 0; nc < n * c; ++nc) {
    const int64_t i = nc / c, ch = nc % c;
    const float* in = xp + i * xs0 + ch * xs1;
    float* o = yp + i * ys0 + ch * ys1;
    for (int64_t oh = 0; oh < ho; ++oh) {
      const Span& r = rows[oh];
      for (int64_t ow = 0; ow < wo; ++ow) {
        const Span& q = cols[ow];
        double sum = 0;
        for (int64_t ih = r.lo; ih < r.hi; ++ih)
          for (int64_t iw = q.lo; iw < q.hi; ++iw) sum += static_cast<double>(in[ih * w + iw]);
        const int64_t inside = std::max<int64_t>(r.hi - r.lo, 0) * std::max<int64_t>(q.hi - q.lo, 0);
        const double divisor = static_cast<double>(p.count_include_pad ? r.padded * q.padded : inside);
        o[oh * wo + ow] = divisor > 0 ? static_cast<float>(sum / divisor) : 0.0f;
      }
    }
  }
}

// ---- residual add ---------------------------------------------------------------------

void add_out(const Tensor& a, const Tensor& b, bool relu, Tensor& y) {
  TTQ_CHECK(a.dim() == 4 && a.dtype() == DType::F32 && dense_planes(a)) << "add_out: bad a " << a.str();
  TTQ_CHECK(b.shape() == a.shape() && b.dtype() == DType::F32 && dense_planes(b) && b.device() == a.device())
      << "add_out: b " << b.str() << " does not match a " << a.str();
  TTQ_CHECK(y.shape() == a.shape() && y.dtype() == DType::F32 && dense_planes(y) && y.device() == a.device())
      << "add_out: y must be F32 " << shape_str(a.shape()) << " with dense planes, got " << y.str();
  const int64_t n = a.size(0), c = a.size(1), hw = a.size(2) * a.size(3);
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  float* yp = y.data<float>();
  if (a.device().is_cuda()) {
#ifdef TTQ_HAS_CUDA
    add_cuda(ap, a.stride(0), a.stride(1), bp, b.stride(0), b.stride(1), relu, yp, y.stride(0), y.stride(1),
             n, c, hw, stream());
    return;
#else
    TTQ_THROW() << "add_out: this build has no CUDA backend";
#endif
  }
  const int64_t as0 = a.stride(0), as1 = a.stride(1), bs0 = b.stride(0), bs1 = b.stride(1), ys0 = y.stride(0),
                ys1 = y.stride(1);
#pragma omp parallel for schedule(static) if (n * c * hw > cpu::kParallelElements)
  for (int64_t nc = 0; nc < n * c; ++nc) {
    const int64_t i = nc / c, ch = nc % c;
    const float* pa = ap + i * as0 + ch * as1;
    const float* pb = bp + i * bs0 + ch * bs1;
    float* py = yp + i * ys0 + ch * ys1;
    // y may be a or b itself: each element is read before it is written.
    if (relu) {
      for (int64_t e = 0; e < hw; ++e) {
        const float v = pa[e] + pb[e];
        py[e] = v > 0.0f ? v : 0.0f;
      }
    } else {
      for (int64_t e = 0; e < hw; ++e) py[e] = pa[e] + pb[e];
    }
  }
}

// ---- dense convolution ----------------------------------------------------------------

void dense_conv2d_out(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p, Tensor& y) {
  TTQ_CHECK(x.dim() == 4 && x.dtype() == DType::F32 && dense_samples(x))
      << "dense_conv2d_out: x must be F32 [n, ci, h, w], each sample dense, got " << x.str();
  TTQ_CHECK(p.groups >= 1 && p.stride_h >= 1 && p.stride_w >= 1 && p.pad_h >= 0 && p.pad_w >= 0 &&
            p.dilation_h >= 1 && p.dilation_w >= 1)
      << "dense_conv2d_out: bad stride / padding / dilation / groups";
  TTQ_CHECK(w.dim() == 4 && w.dtype() == DType::F32 && w.is_contiguous() &&
            w.size(1) * p.groups == x.size(1) && w.size(0) % p.groups == 0 && w.device() == x.device())
      << "dense_conv2d_out: bad w " << w.str() << " for x " << x.str() << " and " << p.groups << " groups";
  const int64_t n = x.size(0), h = x.size(2), wd = x.size(3);
  [[maybe_unused]] const int64_t ci = x.size(1);  // the CUDA launch needs it
  const int64_t co = w.size(0), kh = w.size(2), kw = w.size(3);
  TTQ_CHECK(h + 2 * int64_t{p.pad_h} >= p.dilation_h * (kh - 1) + 1 &&
            wd + 2 * int64_t{p.pad_w} >= p.dilation_w * (kw - 1) + 1)
      << "dense_conv2d_out: kernel " << kh << "x" << kw << " (dilation " << p.dilation_h << "x"
      << p.dilation_w << ") larger than the padded input " << x.str();
  const int64_t ho = conv_out_size(h, static_cast<int>(kh), p.stride_h, p.pad_h, p.dilation_h);
  const int64_t wo = conv_out_size(wd, static_cast<int>(kw), p.stride_w, p.pad_w, p.dilation_w);
  TTQ_CHECK(y.shape() == Shape({n, co, ho, wo}) && y.dtype() == DType::F32 && dense_samples(y) &&
            y.device() == x.device())
      << "dense_conv2d_out: y must be F32 " << shape_str({n, co, ho, wo}) << ", each sample dense, got "
      << y.str();
  [[maybe_unused]] const float* bp = opt_ptr(b, co, x.device(), "dense_conv2d_out bias");
  if (x.device().is_cuda()) {
#ifdef TTQ_HAS_CUDA
    dense_conv2d_cuda(x.data<float>(), x.stride(0), x.stride(1), n, ci, h, wd, w.data<float>(), bp, co, kh,
                      kw, p, y.data<float>(), y.stride(0), y.stride(1), ho, wo, stream());
    return;
#else
    TTQ_THROW() << "dense_conv2d_out: this build has no CUDA backend";
#endif
  }
  cpu::conv2d_forward(x, w, b, p, y);
}

void dense_conv2d_out(const Tensor& x, const Tensor& w, const Tensor& b, int pad, Tensor& y) {
  Conv2dParams p;
  p.pad_h = p.pad_w = pad;
  dense_conv2d_out(x, w, b, p, y);
}

}  // namespace ttq::kernels
