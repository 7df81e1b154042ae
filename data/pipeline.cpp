// The input pipeline of a training run (data/pipeline.h).
#include "data/pipeline.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"
#include "engine/rng.h"

namespace ttq::data {

namespace fs = std::filesystem;

namespace {

// Image files of a folder data set's training classes, quietly (the data set
// itself reports what it skips when it is opened), sorted.
std::vector<std::string> folder_training_files(const fs::path& dir) {
  std::error_code ec;
  const fs::path root = fs::is_directory(dir / "train", ec) ? dir / "train" : dir;
  std::vector<std::string> files;
  for (fs::recursive_directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.empty() && name[0] == '.') {
      it.disable_recursion_pending();
      continue;
    }
    if (it.depth() >= 1 && has_image_extension(name) && it->is_regular_file(ec))
      files.push_back(it->path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

const std::array<float, 3> kImageNetMean{0.485f, 0.456f, 0.406f};
const std::array<float, 3> kImageNetStd{0.229f, 0.224f, 0.225f};

bool is_idx(const DataSpec& spec) {
  return spec.kind == DataSpec::Kind::FashionMnist || spec.kind == DataSpec::Kind::Mnist;
}

TrainAugment default_augment(int channels, int image_size) {
  return channels == 3 && image_size == 64 ? TrainAugment::Seed : TrainAugment::PadCropFlip;
}
int default_crop(TrainAugment a, int image_size) {
  return a == TrainAugment::Seed ? std::max(1, image_size * 7 / 8) : image_size;
}
int default_pad(TrainAugment a, int image_size, int crop) {
  return a == TrainAugment::PadCropFlip && crop == image_size ? std::max(1, image_size / 14) : 0;
}

}  // namespace

ImageFormat detect_format(const DataSpec& spec) {
  ImageFormat f;
  f.uniform = true;
  if (is_idx(spec)) {
    f.channels = 1;
    f.image_size = kIdxImageSize;
    f.summary = "1x28x28 (IDX)";
    return f;
  }
  if (spec.kind == DataSpec::Kind::TinyImageNet) {
    f.channels = 3;
    f.image_size = 64;
    f.summary = "3x64x64 (Tiny ImageNet)";
    return f;
  }
  const std::vector<std::string> files = folder_training_files(spec.dir);
  const int64_t n = static_cast<int64_t>(files.size());
  const int64_t k = std::min(n, kProbeImages);
  bool gray = true;
  int side = -1;
  int64_t read = 0;
  for (int64_t i = 0; i < k; ++i) {
    const ImageInfo info = probe_image_file(files[static_cast<size_t>(i * n / k)]);
    if (!info.ok) continue;  // the data set reports it when it meets it
    ++read;
    gray = gray && info.channels <= 2;
    if (info.width != info.height || (side >= 0 && info.width != side)) f.uniform = false;
    side = info.width;
  }
  f.probed = read;
  if (read == 0) {  // nothing readable: the data set's own checks will say so
    f.uniform = false;
    f.summary = "no readable image to probe";
    return f;
  }
  f.channels = gray ? 1 : 3;
  if (f.uniform) f.image_size = side;
  std::ostringstream os;
  if (f.uniform) {
    os << f.channels << "x" << side << "x" << side;
  } else {
    os << (gray ? "gray" : "colour") << " images of mixed sizes (resized to 64)";
  }
  os << " (" << read << " of " << n << " training images probed)";
  f.summary = os.str();
  return f;
}

std::vector<float> parse_channel_values(const std::string& flag, const std::string& text, int channels,
                                        bool positive) {
  std::vector<float> v;
  bool ok = !text.empty();
  std::stringstream ss(text);
  std::string item;
  while (ok && std::getline(ss, item, ',')) {
    size_t used = 0;
    double d = 0;
    try {
      d = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ok = used > 0 && used == item.size() && std::isfinite(d) && (!positive || d > 0);
    v.push_back(static_cast<float>(d));
  }
  if (ok && v.size() == 1) v.assign(static_cast<size_t>(channels), v[0]);
  TTQ_INPUT_CHECK(ok && static_cast<int>(v.size()) == channels)
      << flag << ": expected auto, one number or " << channels << " comma-separated numbers (finite"
      << (positive ? ", positive" : "") << "), got '" << text << "'";
  return v;
}

ResolvedPreprocess resolve_preprocess(const PipelineOptions& o, const DataSpec& spec,
                                      const Preprocess* init) {
  ResolvedPreprocess r;
  Preprocess& p = r.pre;
  TTQ_INPUT_CHECK(o.channels == 0 || o.channels == 1 || o.channels == 3)
      << "--channels: expected 1 (gray) or 3 (RGB), got " << o.channels;
  ImageFormat fmt;
  if ((o.channels == 0 || o.image_size == 0) && init == nullptr) {
    fmt = detect_format(spec);
    r.detected = fmt.summary;
  }
  p.channels = o.channels ? o.channels : (init ? init->channels : fmt.channels);
  p.image_size = o.image_size ? o.image_size : (init ? init->image_size : fmt.image_size);
  if (!o.augment.empty()) {
    p.augment = parse_augment(o.augment);
  } else {
    p.augment = init ? init->augment : default_augment(p.channels, p.image_size);
  }
  p.crop = o.crop ? o.crop
                  : (init && init->image_size == p.image_size ? init->crop
                                                              : default_crop(p.augment, p.image_size));
  TTQ_INPUT_CHECK(p.crop <= p.image_size)
      << "--crop " << p.crop << ": larger than the image size " << p.image_size << " (--image-size)";
  p.pad = default_pad(p.augment, p.image_size, p.crop);

  const bool auto_mean = o.mean == "auto", auto_std = o.std == "auto";
  if (!o.mean.empty() && !auto_mean) {
    const auto v = parse_channel_values("--mean", o.mean, p.channels, false);
    std::copy(v.begin(), v.end(), p.mean.begin());
  }
  if (!o.std.empty() && !auto_std) {
    const auto v = parse_channel_values("--std", o.std, p.channels, true);
    std::copy(v.begin(), v.end(), p.std.begin());
  }
  // What fills the values not given.
  if (o.mean.empty() || o.std.empty()) {
    Preprocess defaults;
    if (init && init->channels == p.channels) {
      defaults = *init;
      r.stats_from = "--init's";
    } else if (p.channels == 1 && is_idx(spec)) {
      defaults = Preprocess::gray();
      r.stats_from = "Fashion-MNIST's";
    } else if (p.channels == 3) {
      defaults.mean = kImageNetMean;
      defaults.std = kImageNetStd;
      r.stats_from = "ImageNet's";
    } else {
      r.stats_from = "auto";
    }
    if (r.stats_from == "auto") {
      r.auto_stats = true;
    } else {
      if (o.mean.empty()) p.mean = defaults.mean;
      if (o.std.empty()) p.std = defaults.std;
    }
  }
  if (auto_mean || auto_std) r.auto_stats = true;
  if (!o.mean.empty() && !o.std.empty() && !auto_mean && !auto_std) r.stats_from = "given";
  if (r.auto_stats) r.stats_from = "auto";
  // A mean or std given as numbers beside an auto one keeps its number (channel_stats fills the other).
  r.mean_given = !o.mean.empty() && !auto_mean;
  r.std_given = !o.std.empty() && !auto_std;
  return r;
}

ChannelStats channel_stats(const Dataset& set, const Preprocess& p, int64_t max_images, uint64_t seed) {
  const int64_t n = set.size();
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = i;
  if (n > max_images) {
    Generator g(seed ^ 0x5747a75ull);
    for (int64_t i = n - 1; i > 0; --i)
      std::swap(idx[static_cast<size_t>(i)], idx[static_cast<size_t>(g.below(static_cast<uint64_t>(i + 1)))]);
    idx.resize(static_cast<size_t>(max_images));
    std::sort(idx.begin(), idx.end());
  }
  std::array<double, 3> sum{0, 0, 0}, sq{0, 0, 0};
  double pixels = 0;
  ChannelStats s;
  Image img;
  for (int64_t i : idx) {
    if (!set.load(i, &img)) continue;
    img = fit_image(img, p.channels, p.image_size);
    const size_t hw = size_t(img.width) * img.height;
    for (size_t k = 0; k < hw; ++k) {
      for (int c = 0; c < p.channels; ++c) {
        const double v = img.pixels[k * p.channels + c] / 255.0;
        sum[c] += v;
        sq[c] += v * v;
      }
    }
    pixels += static_cast<double>(hw);
    ++s.images;
  }
  TTQ_INPUT_CHECK(s.images > 0) << "--mean/--std auto: no training image could be read";
  for (int c = 0; c < 3; ++c) {
    const int src = c < p.channels ? c : 0;
    const double m = sum[src] / pixels;
    const double var = std::max(0.0, sq[src] / pixels - m * m);
    s.mean[c] = static_cast<float>(m);
    // A flat channel (every pixel equal) would divide by zero: 1 keeps it at 0 after the shift.
    s.std[c] = var > 0 ? static_cast<float>(std::sqrt(var)) : 1.0f;
  }
  return s;
}

std::string preprocess_json(const Preprocess& p) {
  nlohmann::json j;
  j["channels"] = p.channels;
  j["image_size"] = p.image_size;
  j["crop"] = p.crop;
  j["mean"] = std::vector<float>(p.mean.begin(), p.mean.begin() + p.channels);
  j["std"] = std::vector<float>(p.std.begin(), p.std.begin() + p.channels);
  j["augment"] = augment_name(p.augment);
  j["pad"] = p.pad;
  return j.dump();
}

Preprocess parse_preprocess_json(const std::string& text, const std::string& path) {
  Preprocess p;
  try {
    const auto j = nlohmann::json::parse(text);
    auto integer = [&](const char* key, int lo, int hi) {
      const nlohmann::json& v = j.at(key);
      TTQ_INPUT_CHECK(v.is_number_integer() && v.get<int64_t>() >= lo && v.get<int64_t>() <= hi)
          << path << ": preprocess metadata: " << key << " is " << v.dump() << ", expected an integer in ["
          << lo << ", " << hi << "]";
      return static_cast<int>(v.get<int64_t>());
    };
    p.channels = integer("channels", 1, 3);
    TTQ_INPUT_CHECK(p.channels != 2) << path << ": preprocess metadata: channels is 2, expected 1 or 3";
    p.image_size = integer("image_size", 1, 2048);
    p.crop = integer("crop", 1, p.image_size);
    const auto mean = j.at("mean").get<std::vector<float>>();
    const auto stdev = j.at("std").get<std::vector<float>>();
    TTQ_INPUT_CHECK(static_cast<int>(mean.size()) == p.channels &&
                    static_cast<int>(stdev.size()) == p.channels)
        << path << ": preprocess metadata: mean and std need " << p.channels << " values each";
    for (int c = 0; c < p.channels; ++c) {
      TTQ_INPUT_CHECK(std::isfinite(mean[c]))
          << path << ": preprocess metadata: mean[" << c << "] is not finite";
      TTQ_INPUT_CHECK(std::isfinite(stdev[c]) && stdev[c] > 0)
          << path << ": preprocess metadata: std[" << c << "] is " << stdev[c]
          << ", expected a positive number";
    }
    for (int c = 0; c < 3; ++c) {
      p.mean[c] = mean[c < p.channels ? c : 0];
      p.std[c] = stdev[c < p.channels ? c : 0];
    }
    if (j.contains("augment")) {
      TTQ_INPUT_CHECK(j["augment"].is_string()) << path << ": preprocess metadata: augment is not a name";
      try {
        p.augment = parse_augment(j["augment"].get<std::string>());
      } catch (const InputError&) {
        TTQ_INPUT_ERROR() << path << ": preprocess metadata: unknown augment " << j["augment"].dump();
      }
    } else {
      // Files written before the pipeline options: what training applied then.
      p.augment = p.channels == 3 ? TrainAugment::Seed : TrainAugment::PadCropFlip;
    }
    p.pad =
        j.contains("pad") ? integer("pad", 0, p.image_size) : default_pad(p.augment, p.image_size, p.crop);
  } catch (const nlohmann::json::exception& e) {
    TTQ_INPUT_ERROR() << path << ": bad preprocess metadata: " << e.what();
  }
  return p;
}

}  // namespace ttq::data
