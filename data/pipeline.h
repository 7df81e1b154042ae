// The input pipeline of a training run: what the data's images are (detected
// from their headers), the preprocessing ttq_train's --channels, --image-size,
// --crop, --augment, --mean and --std ask for (defaults from the data where that
// is unambiguous), per-channel statistics for `--mean auto`, and the
// "preprocess" metadata that carries the result to ttq_eval and ttq_infer.
// docs/data.md, "Preprocessing". Tests: tests/test_pipeline.cpp.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "data/augment.h"
#include "data/dataset.h"

namespace ttq::data {

// What a data set's images are. IDX: 1x28x28; Tiny ImageNet: 3x64x64; a folder:
// probed from the headers of up to kProbeImages of its training images, spread
// evenly over the sorted file list (nothing is decoded).
struct ImageFormat {
  int channels = 3;      // 1 when every probed image is gray (with or without alpha), else 3
  int image_size = 64;   // the common side when `uniform`, else 64
  bool uniform = false;  // every probed image is image_size square
  int64_t probed = 0;    // images probed (0: the data's format is fixed)
  std::string summary;   // for the log: "1x28x28 (200 images probed)", "mixed sizes, ..."
};
inline constexpr int64_t kProbeImages = 200;
ImageFormat detect_format(const DataSpec& spec);

// ttq_train's pipeline flags as given (0 / "": not given).
struct PipelineOptions {
  int channels = 0;
  int image_size = 0;
  int crop = 0;
  std::string augment;    // none | flip-crop | seed
  std::string mean, std;  // "auto" or one number per channel, comma-separated (one number: every channel)
};

struct ResolvedPreprocess {
  Preprocess pre;
  bool auto_stats = false;  // mean / std are to be computed from the training split (channel_stats)
  bool mean_given = false, std_given = false;  // given as numbers: auto_stats leaves them alone
  std::string stats_from;                      // where mean / std come from, for config.json and the log
  std::string detected;                        // what detect_format found ("" when every value was given)
};

// The preprocessing of a new run. Each value not given comes from `init` (the
// "preprocess" metadata of --init's file, when it has one), else from the data:
//  - channels, image_size: detect_format (64 when a folder's sizes differ);
//  - augment: seed for 3x64 images (the seed project's pipeline), else flip-crop;
//  - crop: image_size * 7 / 8 with seed augmentation (56 of 64), else image_size;
//  - pad (flip-crop): image_size / 14 (2 for 28) when crop == image_size, else 0;
//  - mean / std: Fashion-MNIST's (0.2860, 0.3530) for 1-channel IDX data,
//    ImageNet's for 3 channels, otherwise auto.
// Throws InputError naming the flag for an impossible combination.
ResolvedPreprocess resolve_preprocess(const PipelineOptions& options, const DataSpec& spec,
                                      const Preprocess* init);

// Per-channel mean and (population) standard deviation of pixel / 255 over at
// most `max_images` images of `set` (a seeded subset when it holds more), each
// fitted to p's channels and size (fit_image), before cropping. Unreadable
// images are skipped (reported once by the data set).
struct ChannelStats {
  std::array<float, 3> mean{0, 0, 0}, std{1, 1, 1};
  int64_t images = 0;
};
inline constexpr int64_t kStatsImages = 10000;
ChannelStats channel_stats(const Dataset& set, const Preprocess& p, int64_t max_images, uint64_t seed);

// "--mean 0.5" / "--std 0.2,0.3,0.4": one value per channel (one value stands for
// all). Throws InputError naming `flag` for a non-number, a wrong count, a
// non-finite value or (positive) a value <= 0.
std::vector<float> parse_channel_values(const std::string& flag, const std::string& text, int channels,
                                        bool positive);

// The "preprocess" metadata of checkpoints and packed files: channels,
// image_size, crop, mean, std (what validation and inference apply), augment
// and pad (what training applied).
std::string preprocess_json(const Preprocess& p);
// Reads it back; a file without augment / pad (older checkpoints) gets the
// defaults of resolve_preprocess for its channels and sizes. Throws InputError
// naming `path` for a malformed value.
Preprocess parse_preprocess_json(const std::string& text, const std::string& path);

}  // namespace ttq::data
