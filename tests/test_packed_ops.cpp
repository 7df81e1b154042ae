// The graph-level inference ops of kernels/packed_ops.h against the engine's ops, on
// every device (cuda:0 skipped without a GPU), with poisoned outputs:
//  - dense_conv2d_out: strides, paddings, dilations, groups (depthwise included),
//    rectangular kernels, odd sizes, against ops::conv2d (the same bits on the CPU, whose
//    twin is the engine's conv); inputs and outputs as channel slices of wider buffers,
//    with nothing outside the output slice written;
//  - avg_pool_out: kernel, stride, padding, ceil_mode, count_include_pad against
//    ops::avg_pool2d (the same bits on the CPU), channel slices;
//  - add_out: relu or not, channel slices, in place, against ops::add / ops::relu
//    (one float addition: the same bits on every device).
#include <string>
#include <vector>

#include "engine/ops/ops.h"
#include "kernels/packed_ops.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

// t's values as a channel slice [.., c0, c0 + t.size(1)) of a wider buffer of
// `channels` channels, the rest of the buffer filled with `fill`.
Tensor in_wider_buffer(const Tensor& t, int64_t channels, int64_t c0, float fill, Device dev) {
  Shape s = t.shape();
  s[1] = channels;
  Tensor buf = Tensor::full(s, fill, DType::F32, dev);
  Tensor v = buf.narrow(1, c0, t.size(1));
  v.copy_(t.to(dev));
  return v;
}

class PackedGraphOps : public testing::TestWithParam<Device> {};

struct ConvCase {
  int64_t n, ci, h, w, co, kh, kw;
  int stride, pad, dilation, groups;
  bool bias;
  std::string str() const {
    return "DENSE_CONV(n=" + std::to_string(n) + ", ci=" + std::to_string(ci) + ", hw=" + std::to_string(h) +
           "x" + std::to_string(w) + ", co=" + std::to_string(co) + ", k=" + std::to_string(kh) + "x" +
           std::to_string(kw) + ", s=" + std::to_string(stride) + ", p=" + std::to_string(pad) +
           ", d=" + std::to_string(dilation) + ", g=" + std::to_string(groups) + (bias ? ", bias" : "") + ")";
  }
};

const std::vector<ConvCase> kConvCases = {
    {3, 7, 13, 12, 5, 3, 3, 1, 1, 1, 1, false},    // a first conv
    {3, 7, 13, 12, 5, 1, 1, 1, 0, 1, 1, true},     // a classifier
    {2, 3, 17, 15, 8, 7, 7, 2, 3, 1, 1, false},    // a ResNet stem, odd sizes
    {2, 6, 11, 9, 4, 3, 3, 2, 2, 2, 2, true},      // 2 groups, dilated, strided
    {1, 9, 10, 10, 6, 3, 3, 1, 1, 1, 3, false},    // 3 groups
    {2, 8, 9, 11, 8, 3, 3, 1, 1, 1, 8, true},      // depthwise
    {2, 8, 12, 12, 16, 5, 5, 2, 4, 2, 8, false},   // depthwise x2, dilated, strided
    {1, 12, 7, 7, 12, 1, 1, 1, 0, 1, 4, false},    // grouped 1x1
    {2, 5, 9, 8, 3, 3, 2, 1, 0, 3, 1, true},       // rectangular, dilation 3
    {1, 64, 20, 20, 64, 3, 3, 1, 1, 1, 64, true},  // a larger depthwise layer (threaded)
};

TEST_P(PackedGraphOps, DenseConvMatchesTheEngineConv) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  for (size_t i = 0; i < kConvCases.size(); ++i) {
    const ConvCase& c = kConvCases[i];
    const Tensor x = test::rand({c.n, c.ci, c.h, c.w}, 10 + i);
    const Tensor w = test::rand({c.co, c.ci / c.groups, c.kh, c.kw}, 20 + i);
    const Tensor b = c.bias ? test::rand({c.co}, 30 + i) : Tensor();
    Conv2dParams p;
    p.stride_h = p.stride_w = c.stride;
    p.pad_h = p.pad_w = c.pad;
    p.dilation_h = p.dilation_w = c.dilation;
    p.groups = c.groups;
    const Tensor expect = ops::conv2d(x, w, b, p);
    const Tensor wd = w.to(dev), bd = c.bias ? b.to(dev) : Tensor();
    // CPU: the engine's conv itself; CUDA: a direct fp32 kernel.
    const double tol = dev.is_cpu() ? 0.0 : 1e-5;
    {
      Tensor y = Tensor::empty(expect.shape(), DType::F32, dev);
      test::poison(y);
      kernels::dense_conv2d_out(x.to(dev), wd, bd, p, y);
      EXPECT_LE(test::max_rel_error(y.to(Device::cpu()), expect), tol) << c.str();
    }
    // x a channel slice of a wider buffer (NaN around it), y written into the middle
    // channels of another, whose other channels stay as they were.
    const Tensor xs = in_wider_buffer(x, c.ci + 5, 2, NAN, dev);
    Tensor ys = in_wider_buffer(Tensor::full(expect.shape(), NAN), c.co + 7, 3, 0.5f, dev);
    kernels::dense_conv2d_out(xs, wd, bd, p, ys);
    EXPECT_LE(test::max_rel_error(ys.to(Device::cpu()).contiguous(), expect), tol) << c.str() << " slices";
  }
}

TEST_P(PackedGraphOps, DenseConvWritesOnlyItsOutputSlice) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  const Tensor x = test::rand({2, 6, 9, 9}, 40), w = test::rand({6, 2, 3, 3}, 41);
  Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  p.groups = 3;
  Tensor buffer = Tensor::full({2, 20, 9, 9}, 0.25f, DType::F32, dev);
  Tensor y = buffer.narrow(1, 8, 6);
  kernels::dense_conv2d_out(x.to(dev), w.to(dev), Tensor(), p, y);
  const Tensor after = buffer.to(Device::cpu());
  EXPECT_LE(test::max_rel_error(after.narrow(1, 8, 6).contiguous(), ops::conv2d(x, w, Tensor(), p)),
            dev.is_cpu() ? 0.0 : 1e-5);
  for (auto [c0, len] : {std::pair<int64_t, int64_t>{0, 8}, {14, 6}})
    for (float v : after.narrow(1, c0, len).contiguous().to_vector<float>()) ASSERT_EQ(v, 0.25f);
}

TEST_P(PackedGraphOps, DenseConvRefusesBadShapes) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  const Tensor x = Tensor::zeros({1, 6, 5, 5}, DType::F32, dev);
  Conv2dParams p;
  p.groups = 4;  // does not divide 6
  Tensor y = Tensor::empty({1, 4, 3, 3}, DType::F32, dev);
  EXPECT_THROW(kernels::dense_conv2d_out(x, Tensor::zeros({4, 1, 3, 3}, DType::F32, dev), Tensor(), p, y),
               Error);
  p.groups = 2;  // w has 2 channels per group where x gives 3
  EXPECT_THROW(kernels::dense_conv2d_out(x, Tensor::zeros({4, 2, 3, 3}, DType::F32, dev), Tensor(), p, y),
               Error);
  p.groups = 1;
  p.dilation_h = p.dilation_w = 3;  // a 7x7 span on 5x5
  EXPECT_THROW(kernels::dense_conv2d_out(x, Tensor::zeros({4, 6, 3, 3}, DType::F32, dev), Tensor(), p, y),
               Error);
  p.dilation_h = p.dilation_w = 2;  // 1x1 output, not 3x3
  EXPECT_THROW(kernels::dense_conv2d_out(x, Tensor::zeros({4, 6, 3, 3}, DType::F32, dev), Tensor(), p, y),
               Error);
}

TEST_P(PackedGraphOps, AvgPoolMatchesTheEngineAvgPool) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  const std::vector<Shape> shapes = {{2, 5, 13, 12}, {1, 3, 7, 7}, {3, 4, 6, 9}, {1, 2, 1, 5}};
  std::vector<kernels::AvgPoolSpec> specs;
  for (int kernel : {1, 2, 3, 5})
    for (int stride : {1, 2, 3})
      for (int pad = 0; 2 * pad <= kernel; ++pad)
        for (bool ceil : {false, true})
          for (bool include : {true, false}) specs.push_back({kernel, stride, pad, ceil, include});
  int ran = 0;
  for (size_t si = 0; si < shapes.size(); ++si) {
    const Tensor x = test::rand(shapes[si], 50 + si);
    for (const kernels::AvgPoolSpec& p : specs) {
      const std::string what = "AVG_POOL(x=" + shape_str(shapes[si]) + ", k=" + std::to_string(p.kernel) +
                               ", s=" + std::to_string(p.stride) + ", p=" + std::to_string(p.pad) +
                               ", ceil=" + std::to_string(p.ceil_mode) +
                               ", include_pad=" + std::to_string(p.count_include_pad) + ")";
      const int64_t ho = pool_out_size(shapes[si][2], p.kernel, p.stride, p.pad, p.ceil_mode);
      const int64_t wo = pool_out_size(shapes[si][3], p.kernel, p.stride, p.pad, p.ceil_mode);
      if (ho < 1 || wo < 1) {  // the kernel does not fit: refused, as the engine does
        EXPECT_THROW(kernels::avg_pool_output_shape(x.shape(), p), Error) << what;
        continue;
      }
      const Tensor expect = ops::avg_pool2d(x, p.kernel, p.stride, p.pad, p.ceil_mode, p.count_include_pad);
      ASSERT_EQ(kernels::avg_pool_output_shape(x.shape(), p), expect.shape()) << what;
      // Input and output as channel slices of wider buffers.
      const Tensor xs = in_wider_buffer(x, x.size(1) + 3, 1, NAN, dev);
      Tensor ys = in_wider_buffer(Tensor::full(expect.shape(), NAN), expect.size(1) + 2, 2, 0.0f, dev);
      kernels::avg_pool_out(xs, p, ys);
      const Tensor got = ys.to(Device::cpu()).contiguous();
      if (dev.is_cpu()) {
        EXPECT_EQ(test::max_abs_diff(got, expect), 0.0) << what;  // sums in double, as the engine
      } else {
        EXPECT_LE(test::max_rel_error(got, expect), 1e-6) << what;
      }
      ++ran;
    }
  }
  EXPECT_GT(ran, 300);
  // Padding beyond half the kernel is refused (PyTorch's rule).
  EXPECT_THROW(kernels::avg_pool_output_shape({1, 1, 8, 8}, {3, 1, 2, false, true}), Error);
}

TEST_P(PackedGraphOps, AddMatchesTheEngineAddOnSlicesAndInPlace) {
  const Device dev = GetParam();
  TTQ_SKIP_IF_NO_DEVICE(dev);
  for (const Shape& s : {Shape{2, 5, 7, 9}, Shape{1, 3, 1, 1}, Shape{4, 16, 33, 31}}) {
    const Tensor a = test::rand(s, 60), b = test::rand(s, 61);
    const Tensor sum = ops::add(a, b), relu = ops::relu(sum);
    for (bool r : {false, true}) {
      const Tensor& expect = r ? relu : sum;
      // Dense operands.
      Tensor y = Tensor::empty(s, DType::F32, dev);
      test::poison(y);
      kernels::add_out(a.to(dev), b.to(dev), r, y);
      EXPECT_EQ(test::max_abs_diff(y.to(Device::cpu()), expect), 0.0) << shape_str(s) << " relu " << r;
      // Channel slices of three wider buffers.
      const Tensor as = in_wider_buffer(a, s[1] + 2, 1, NAN, dev),
                   bs = in_wider_buffer(b, s[1] + 4, 3, NAN, dev);
      Tensor ys = in_wider_buffer(Tensor::full(s, NAN), s[1] + 3, 0, NAN, dev);
      kernels::add_out(as, bs, r, ys);
      EXPECT_EQ(test::max_abs_diff(ys.to(Device::cpu()).contiguous(), expect), 0.0)
          << shape_str(s) << " slices";
      // In place: y is a.
      Tensor ai = in_wider_buffer(a, s[1] + 2, 2, NAN, dev);
      kernels::add_out(ai, bs, r, ai);
      EXPECT_EQ(test::max_abs_diff(ai.to(Device::cpu()).contiguous(), expect), 0.0)
          << shape_str(s) << " in place";
    }
  }
  Tensor y = Tensor::empty({2, 3, 4, 4}, DType::F32, dev);
  EXPECT_THROW(kernels::add_out(Tensor::zeros({2, 3, 4, 4}, DType::F32, dev),
                                Tensor::zeros({2, 3, 4, 5}, DType::F32, dev), false, y),
               Error);
}

INSTANTIATE_TEST_SUITE_P(Devices, PackedGraphOps, testing::ValuesIn(test::all_devices()), test::device_name);

}  // namespace
}  // namespace ttq
