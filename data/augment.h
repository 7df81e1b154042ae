// Preprocessing and augmentation, reproducing the seed's pipeline: PIL's
// Image.rotate (bicubic), torchvision's RandomCrop / RandomHorizontalFlip /
// CenterCrop / ToTensor / Normalize, and PIL's ImageEnhance (Color, Contrast,
// Brightness, Sharpness) with PIL's own integer rounding, so that the same
// parameters give the same 8-bit pixels PIL gives. All randomness comes from
// ttq::rng keyed by (seed, epoch, sample index).
// Tested in tests/test_augment.cpp (naive formulas, PIL outputs embedded there).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "data/image.h"

namespace ttq::data {

// ---- PIL-equivalent 8-bit operations (1- or 3-channel images) ----

// PIL Image.rotate(degrees, resample=BICUBIC): counter-clockwise about the
// image centre (w/2, h/2), same size, black outside. Bicubic with a = -1
// (PIL's affine filter), edges clamped, results truncated to 8 bits.
// An angle that is a multiple of 360 returns a copy, as PIL does.
Image rotate_bicubic(const Image& img, double degrees);
// Rows [top, top+h) and columns [left, left+w). requires: inside the image.
Image crop(const Image& img, int top, int left, int h, int w);
// torchvision's CenterCrop: top = round((H - size) / 2), halves to even.
Image center_crop(const Image& img, int size);
// Zero border of `p` pixels on every side.
Image pad(const Image& img, int p);
Image hflip(const Image& img);
// PIL ImageFilter.SMOOTH: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 in float,
// rounded; the border rows and columns are copied unchanged.
Image smooth_filter(const Image& img);
// PIL Image.blend(a, b, alpha) = a + alpha * (b - a) in float, truncated;
// clipped to [0, 255] when alpha is outside [0, 1]; alpha 0 / 1 copy a / b.
Image blend(const Image& a, const Image& b, float alpha);
// PIL ImageEnhance.X(img).enhance(factor) = blend(degenerate, img, factor) with
// degenerate = the L image (Color), a flat image of the rounded mean L level
// (Contrast), black (Brightness), smooth_filter(img) (Sharpness).
Image enhance_color(const Image& img, double factor);
Image enhance_contrast(const Image& img, double factor);
Image enhance_brightness(const Image& img, double factor);
Image enhance_sharpness(const Image& img, double factor);
enum Enhancer : int { kColor = 0, kContrast = 1, kBrightness = 2, kSharpness = 3 };
Image enhance(const Image& img, Enhancer which, double factor);

// ---- configuration: what a model's input needs ----

enum class TrainAugment {
  Seed,         // rotate, random crop, flip, four enhancements in random order
  PadCropFlip,  // zero-pad, random crop, flip (28x28 grayscale data)
  None,
};

struct Preprocess {
  int channels = 3;     // images are converted to this many channels
  int image_size = 64;  // stored images are image_size x image_size
  int crop = 56;        // network input: crop x crop
  int pad = 0;          // PadCropFlip padding
  TrainAugment augment = TrainAugment::Seed;
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};  // per channel (first `channels` used)
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};

  // The seed's 64x64 RGB pipeline (random 56 crops, ImageNet mean / std).
  static Preprocess seed_rgb(int image_size = 64, int crop = 56);
  // Grayscale: random crop `size` from the image padded by `pad`, flip,
  // Fashion-MNIST mean / std (0.2860, 0.3530).
  static Preprocess gray(int size = 28, int pad = 2);
  // For a model input of channels x size x size: 3 channels -> seed_rgb with
  // images of size * 8 / 7 (56 -> 64); 1 channel -> gray(size).
  static Preprocess for_input(int channels, int size);
};

// The names --augment takes and config.json / metadata record: "seed",
// "flip-crop" (PadCropFlip), "none". parse_augment throws InputError naming --augment.
const char* augment_name(TrainAugment a);
TrainAugment parse_augment(const std::string& name);

// An image as a Preprocess wants it stored: converted to `channels` (PIL's rules,
// data/image.h) and resized with resize_cover() to `size` square when it is not.
Image fit_image(const Image& img, int channels, int size);

// ---- randomness ----

// The key of one sample's random stream.
uint64_t sample_key(uint64_t seed, uint64_t epoch, uint64_t index);

// The seed's random choices for one sample, drawn from fixed counters of the
// sample's stream (so they do not depend on the order samples are processed).
struct SeedAugmentParams {
  double angle = 0;                      // degrees: N(0, 15) clipped to [-40, 40]
  int top = 0, left = 0;                 // crop origin, uniform in [0, image_size - crop]
  bool flip = false;                     // probability 1/2
  std::array<int, 4> order{0, 1, 2, 3};  // enhancers in application order
  // Indexed by Enhancer: colour and sharpness N(1, 0.3) clipped to [0.4, 1.6];
  // contrast and brightness N(1, 0.15) clipped to [0.7, 1.3].
  std::array<double, 4> factors{1, 1, 1, 1};
};
SeedAugmentParams draw_seed_params(uint64_t key, int image_size, int crop);

struct CropFlipParams {
  int top = 0, left = 0;  // uniform in [0, 2 * pad + image_size - crop]
  bool flip = false;
};
CropFlipParams draw_crop_flip_params(uint64_t key, int padded_size, int crop);

// The seed's augmentation with given parameters, before normalisation:
// rotate, crop, flip, enhancers in `order`.
Image augment_seed(const Image& img, const SeedAugmentParams& prm, int crop);

// ---- the whole per-sample transform ----

// requires: img is p.image_size square with p.channels channels; out holds
// p.channels * p.crop * p.crop floats.
// ensures: out = CHW of ((pixel / 255) - mean) / std of the training
// augmentation drawn from `key` (train) or of the centre crop (validation).
void preprocess(const Image& img, const Preprocess& p, bool train, uint64_t key, float* out);
// ToTensor + Normalize of an image already at its final size.
void normalize_chw(const Image& img, const Preprocess& p, float* out);

}  // namespace ttq::data
