// PIL-equivalent image operations and the seed's augmentation. Each operation
// follows PIL's C code (libImaging Geometry.c, Filter.c, Blend.c, Convert.c) in
// its arithmetic type and rounding, which is what makes results match PIL's to
// the bit. Tested in tests/test_augment.cpp.
#include "data/augment.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/error.h"
#include "engine/rng.h"

namespace ttq::data {

namespace {

void check_image(const Image& img, const char* what) {
  TTQ_CHECK(!img.empty() && (img.channels == 1 || img.channels == 3) &&
            img.pixels.size() == size_t(img.width) * img.height * img.channels)
      << what << ": bad image " << img.width << "x" << img.height << "x" << img.channels;
}

// Python's round(x, 15): correctly rounded through decimal, as printf / strtod are.
double round15(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15f", x);
  return std::strtod(buf, nullptr);
}

// Python's float x % y for y > 0.
double py_mod(double x, double y) {
  double m = std::fmod(x, y);
  if (m != 0 && (m < 0) != (y < 0)) m += y;
  return m;
}

// PIL's BICUBIC macro (a = -1): v2 + d (v3 - v1) + d^2 (2 (v1 - v2) + v3 - v4) + d^3 (-v1 + v2 - v3 + v4).
inline double bicubic(double v1, double v2, double v3, double v4, double d) {
  double p1 = v2;
  double p2 = -v1 + v3;
  double p3 = 2 * (v1 - v2) + v3 - v4;
  double p4 = -v1 + v2 - v3 + v4;
  return p1 + d * (p2 + d * (p3 + d * p4));
}

inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Uniform integer in [0, n) from one counter.
int uniform_int(uint64_t key, uint64_t slot, int n) {
  int v = static_cast<int>(rng::uniform_f64(key, slot) * n);
  return std::min(v, n - 1);
}
// Normal draws live on counters disjoint from the uniform slots.
double normal(uint64_t key, uint64_t slot) { return rng::normal_f64(key, 1000 + slot); }

uint8_t mean_l_level(const Image& img) {
  // ImageStat's mean of the L image, then int(mean + 0.5).
  size_t n = size_t(img.width) * img.height;
  uint64_t sum = 0;
  if (img.channels == 1) {
    for (size_t i = 0; i < n; ++i) sum += img.pixels[i];
  } else {
    const uint8_t* p = img.pixels.data();
    for (size_t i = 0; i < n; ++i) sum += rgb_to_l(p[3 * i], p[3 * i + 1], p[3 * i + 2]);
  }
  double mean = double(sum) / double(n);
  return static_cast<uint8_t>(static_cast<int>(mean + 0.5));
}

}  // namespace

Image rotate_bicubic(const Image& img, double degrees) {
  check_image(img, "rotate_bicubic");
  double angle = py_mod(degrees, 360.0);
  if (angle == 0) return img;
  const int w = img.width, h = img.height, nc = img.channels;
  // The output -> input matrix exactly as PIL's rotate() builds it.
  double rad = -(angle * (M_PI / 180.0));
  double a0 = round15(std::cos(rad)), a1 = round15(std::sin(rad));
  double a3 = round15(-std::sin(rad)), a4 = round15(std::cos(rad));
  double cx = w / 2.0, cy = h / 2.0;
  double a2 = a0 * (-cx) + a1 * (-cy) + 0.0;
  double a5 = a3 * (-cx) + a4 * (-cy) + 0.0;
  a2 += cx;
  a5 += cy;

  Image out(w, h, nc);
  const uint8_t* src = img.pixels.data();
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      double xin = a0 * (x + 0.5) + a1 * (y + 0.5) + a2;
      double yin = a3 * (x + 0.5) + a4 * (y + 0.5) + a5;
      if (xin < 0.0 || xin >= w || yin < 0.0 || yin >= h) continue;  // stays black
      xin -= 0.5;
      yin -= 0.5;
      int xi = static_cast<int>(std::floor(xin));
      int yi = static_cast<int>(std::floor(yin));
      double dx = xin - xi, dy = yin - yi;
      --xi;
      --yi;
      int xs[4], ys[4];
      for (int k = 0; k < 4; ++k) {
        xs[k] = clampi(xi + k, 0, w - 1);
        ys[k] = clampi(yi + k, 0, h - 1);  // PIL repeats the last valid row: the same as clamping
      }
      for (int c = 0; c < nc; ++c) {
        double v[4];
        for (int r = 0; r < 4; ++r) {
          const uint8_t* row = src + size_t(ys[r]) * w * nc + c;
          v[r] = bicubic(row[xs[0] * nc], row[xs[1] * nc], row[xs[2] * nc], row[xs[3] * nc], dx);
        }
        double s = bicubic(v[0], v[1], v[2], v[3], dy);
        out.pixels[(size_t(y) * w + x) * nc + c] = s <= 0.0 ? 0 : s >= 255.0 ? 255 : static_cast<uint8_t>(s);
      }
    }
  }
  return out;
}

Image crop(const Image& img, int top, int left, int h, int w) {
  check_image(img, "crop");
  TTQ_CHECK(top >= 0 && left >= 0 && h > 0 && w > 0 && top + h <= img.height && left + w <= img.width)
      << "crop: [" << top << ", " << left << ", " << h << ", " << w << "] outside " << img.width << "x"
      << img.height;
  Image out(w, h, img.channels);
  size_t row = size_t(w) * img.channels;
  for (int y = 0; y < h; ++y) {
    std::memcpy(&out.pixels[y * row], &img.pixels[(size_t(top + y) * img.width + left) * img.channels], row);
  }
  return out;
}

Image center_crop(const Image& img, int size) {
  TTQ_CHECK(size <= img.width && size <= img.height)
      << "center_crop: " << size << " larger than " << img.width << "x" << img.height;
  int top = static_cast<int>(std::nearbyint((img.height - size) / 2.0));
  int left = static_cast<int>(std::nearbyint((img.width - size) / 2.0));
  return crop(img, top, left, size, size);
}

Image pad(const Image& img, int p) {
  check_image(img, "pad");
  TTQ_CHECK(p >= 0) << "pad: negative padding " << p;
  if (p == 0) return img;
  Image out(img.width + 2 * p, img.height + 2 * p, img.channels);
  size_t row = size_t(img.width) * img.channels;
  for (int y = 0; y < img.height; ++y) {
    std::memcpy(&out.pixels[(size_t(y + p) * out.width + p) * img.channels], &img.pixels[y * row], row);
  }
  return out;
}

Image hflip(const Image& img) {
  check_image(img, "hflip");
  Image out(img.width, img.height, img.channels);
  const int nc = img.channels;
  for (int y = 0; y < img.height; ++y) {
    const uint8_t* s = &img.pixels[size_t(y) * img.width * nc];
    uint8_t* d = &out.pixels[size_t(y) * img.width * nc];
    for (int x = 0; x < img.width; ++x) {
      for (int c = 0; c < nc; ++c) d[x * nc + c] = s[(img.width - 1 - x) * nc + c];
    }
  }
  return out;
}

Image smooth_filter(const Image& img) {
  check_image(img, "smooth_filter");
  const int w = img.width, h = img.height, nc = img.channels;
  if (w < 3 || h < 3) return img;  // PIL copies images smaller than the kernel
  Image out = img;                 // border rows and columns stay as they are
  // The kernel as PIL holds it: float32 weights divided by the float32 scale.
  const float k[9] = {1.0f / 13.0f, 1.0f / 13.0f, 1.0f / 13.0f, 1.0f / 13.0f, 5.0f / 13.0f,
                      1.0f / 13.0f, 1.0f / 13.0f, 1.0f / 13.0f, 1.0f / 13.0f};
  const uint8_t* src = img.pixels.data();
  for (int y = 1; y < h - 1; ++y) {
    const uint8_t* up = src + size_t(y - 1) * w * nc;
    const uint8_t* mid = src + size_t(y) * w * nc;
    const uint8_t* down = src + size_t(y + 1) * w * nc;
    uint8_t* o = &out.pixels[size_t(y) * w * nc];
    for (int x = 1; x < w - 1; ++x) {
      for (int c = 0; c < nc; ++c) {
        int i = x * nc + c;
        // Same order of float operations as PIL: offset 0.5 for rounding, then
        // row y+1 with kernel[0..2], row y with kernel[3..5], row y-1 with kernel[6..8].
        float ss = 0.5f;
        ss += float(down[i - nc]) * k[0] + float(down[i]) * k[1] + float(down[i + nc]) * k[2];
        ss += float(mid[i - nc]) * k[3] + float(mid[i]) * k[4] + float(mid[i + nc]) * k[5];
        ss += float(up[i - nc]) * k[6] + float(up[i]) * k[7] + float(up[i + nc]) * k[8];
        o[i] = ss <= 0.0f ? 0 : ss >= 255.0f ? 255 : static_cast<uint8_t>(ss);
      }
    }
  }
  return out;
}

Image blend(const Image& a, const Image& b, float alpha) {
  check_image(a, "blend");
  TTQ_CHECK(a.width == b.width && a.height == b.height && a.channels == b.channels)
      << "blend: image sizes differ";
  if (alpha == 0.0f) return a;
  if (alpha == 1.0f) return b;
  Image out(a.width, a.height, a.channels);
  const size_t n = a.pixels.size();
  const uint8_t* pa = a.pixels.data();
  const uint8_t* pb = b.pixels.data();
  uint8_t* po = out.pixels.data();
  if (alpha >= 0.0f && alpha <= 1.0f) {
    for (size_t i = 0; i < n; ++i) {
      po[i] = static_cast<uint8_t>(float(int(pa[i])) + alpha * float(int(pb[i]) - int(pa[i])));
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      float t = float(int(pa[i])) + alpha * float(int(pb[i]) - int(pa[i]));
      po[i] = t <= 0.0f ? 0 : t >= 255.0f ? 255 : static_cast<uint8_t>(t);
    }
  }
  return out;
}

Image enhance_color(const Image& img, double factor) {
  check_image(img, "enhance_color");
  if (img.channels == 1) return blend(img, img, static_cast<float>(factor));  // L -> L -> L is the image
  return blend(convert_channels(convert_channels(img, 1), 3), img, static_cast<float>(factor));
}

Image enhance_contrast(const Image& img, double factor) {
  check_image(img, "enhance_contrast");
  Image flat(img.width, img.height, img.channels);
  std::fill(flat.pixels.begin(), flat.pixels.end(), mean_l_level(img));
  return blend(flat, img, static_cast<float>(factor));
}

Image enhance_brightness(const Image& img, double factor) {
  check_image(img, "enhance_brightness");
  return blend(Image(img.width, img.height, img.channels), img, static_cast<float>(factor));
}

Image enhance_sharpness(const Image& img, double factor) {
  check_image(img, "enhance_sharpness");
  return blend(smooth_filter(img), img, static_cast<float>(factor));
}

Image enhance(const Image& img, Enhancer which, double factor) {
  switch (which) {
    case kColor: return enhance_color(img, factor);
    case kContrast: return enhance_contrast(img, factor);
    case kBrightness: return enhance_brightness(img, factor);
    case kSharpness: return enhance_sharpness(img, factor);
  }
  TTQ_THROW() << "enhance: unknown enhancer " << int(which);
}

Preprocess Preprocess::seed_rgb(int image_size, int crop) {
  TTQ_CHECK(crop > 0 && crop <= image_size) << "seed_rgb: crop " << crop << " > image size " << image_size;
  Preprocess p;
  p.channels = 3;
  p.image_size = image_size;
  p.crop = crop;
  p.augment = TrainAugment::Seed;
  return p;
}

Preprocess Preprocess::gray(int size, int pad) {
  TTQ_CHECK(size > 0 && pad >= 0) << "gray: bad size " << size << " / pad " << pad;
  Preprocess p;
  p.channels = 1;
  p.image_size = size;
  p.crop = size;
  p.pad = pad;
  p.augment = TrainAugment::PadCropFlip;
  p.mean = {0.2860f, 0.2860f, 0.2860f};
  p.std = {0.3530f, 0.3530f, 0.3530f};
  return p;
}

Preprocess Preprocess::for_input(int channels, int size) {
  TTQ_CHECK(channels == 1 || channels == 3) << "for_input: channels must be 1 or 3, got " << channels;
  TTQ_CHECK(size > 0) << "for_input: bad size " << size;
  if (channels == 1) return gray(size);
  return seed_rgb((size * 8 + 6) / 7, size);
}

const char* augment_name(TrainAugment a) {
  switch (a) {
    case TrainAugment::Seed: return "seed";
    case TrainAugment::PadCropFlip: return "flip-crop";
    case TrainAugment::None: return "none";
  }
  return "?";
}

TrainAugment parse_augment(const std::string& name) {
  for (TrainAugment a : {TrainAugment::Seed, TrainAugment::PadCropFlip, TrainAugment::None})
    if (name == augment_name(a)) return a;
  TTQ_INPUT_ERROR() << "--augment: expected none, flip-crop or seed, got '" << name << "'";
}

Image fit_image(const Image& img, int channels, int size) {
  Image out = img.channels == channels ? img : convert_channels(img, channels);
  if (out.width != size || out.height != size) out = resize_cover(out, size);
  return out;
}

uint64_t sample_key(uint64_t seed, uint64_t epoch, uint64_t index) {
  return rng::draw64(rng::draw64(seed ^ 0x61756720'6b657973ull, epoch), index);
}

// Counters of a sample's stream: 0 angle (normal), 1 / 2 crop top / left,
// 3 flip, 4-6 the order's Fisher-Yates swaps, 11-14 the four factors (normal).
SeedAugmentParams draw_seed_params(uint64_t key, int image_size, int crop) {
  TTQ_CHECK(crop <= image_size) << "draw_seed_params: crop " << crop << " > " << image_size;
  SeedAugmentParams p;
  p.angle = std::clamp(15.0 * normal(key, 0), -40.0, 40.0);
  p.top = uniform_int(key, 1, image_size - crop + 1);
  p.left = uniform_int(key, 2, image_size - crop + 1);
  p.flip = rng::uniform_f64(key, 3) < 0.5;
  // numpy's shuffle: for i = n-1 .. 1 swap order[i] with order[randint(0, i)].
  for (int i = 3; i >= 1; --i) std::swap(p.order[i], p.order[uniform_int(key, 4 + (3 - i), i + 1)]);
  p.factors[kColor] = std::clamp(1.0 + 0.3 * normal(key, 11), 0.4, 1.6);
  p.factors[kContrast] = std::clamp(1.0 + 0.15 * normal(key, 12), 0.7, 1.3);
  p.factors[kBrightness] = std::clamp(1.0 + 0.15 * normal(key, 13), 0.7, 1.3);
  p.factors[kSharpness] = std::clamp(1.0 + 0.3 * normal(key, 14), 0.4, 1.6);
  return p;
}

CropFlipParams draw_crop_flip_params(uint64_t key, int padded_size, int crop) {
  TTQ_CHECK(crop <= padded_size) << "draw_crop_flip_params: crop " << crop << " > " << padded_size;
  CropFlipParams p;
  p.top = uniform_int(key, 1, padded_size - crop + 1);
  p.left = uniform_int(key, 2, padded_size - crop + 1);
  p.flip = rng::uniform_f64(key, 3) < 0.5;
  return p;
}

Image augment_seed(const Image& img, const SeedAugmentParams& prm, int crop_size) {
  Image x = rotate_bicubic(img, prm.angle);
  x = crop(x, prm.top, prm.left, crop_size, crop_size);
  if (prm.flip) x = hflip(x);
  for (int e : prm.order) x = enhance(x, static_cast<Enhancer>(e), prm.factors[e]);
  return x;
}

void normalize_chw(const Image& img, const Preprocess& p, float* out) {
  check_image(img, "normalize_chw");
  TTQ_CHECK(img.channels == p.channels)
      << "normalize_chw: image has " << img.channels << " channels, expected " << p.channels;
  const size_t hw = size_t(img.width) * img.height;
  for (int c = 0; c < img.channels; ++c) {
    const float m = p.mean[c], s = p.std[c];
    float* o = out + c * hw;
    for (size_t i = 0; i < hw; ++i) {
      // torchvision: ToTensor divides by 255, Normalize subtracts and divides, all in float.
      o[i] = (float(img.pixels[i * img.channels + c]) / 255.0f - m) / s;
    }
  }
}

void preprocess(const Image& img, const Preprocess& p, bool train, uint64_t key, float* out) {
  check_image(img, "preprocess");
  TTQ_CHECK(img.width == p.image_size && img.height == p.image_size && img.channels == p.channels)
      << "preprocess: image " << img.width << "x" << img.height << "x" << img.channels << ", expected "
      << p.image_size << "x" << p.image_size << "x" << p.channels;
  if (!train || p.augment == TrainAugment::None) {
    normalize_chw(center_crop(img, p.crop), p, out);
    return;
  }
  if (p.augment == TrainAugment::Seed) {
    normalize_chw(augment_seed(img, draw_seed_params(key, p.image_size, p.crop), p.crop), p, out);
    return;
  }
  CropFlipParams prm = draw_crop_flip_params(key, p.image_size + 2 * p.pad, p.crop);
  Image x = crop(pad(img, p.pad), prm.top, prm.left, p.crop, p.crop);
  if (prm.flip) x = hflip(x);
  normalize_chw(x, p, out);
}

}  // namespace ttq::data
