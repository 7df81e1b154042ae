// Datasets: Tiny ImageNet in its original layout, ROOT/<class>/* image folders,
// and IDX data (Fashion-MNIST, MNIST), plus the tool spec strings
// (`fashion-mnist[:DIR]`, `mnist:DIR`, `tiny-imagenet:DIR`, `folder:DIR`) and the
// small API the inference tool needs (class names, one image -> input tensor).
// Tested in tests/test_data.cpp on trees generated at test time.
//
// Bad data. A structural problem is a ttq::InputError naming the path: missing
// folder or file, a class folder with no images, a single class, a label out of
// range, an IDX header that does not match its data or images that are not
// kIdxImageSize square, an annotation naming an unknown class. A single unusable
// image (corrupt, truncated, not an image, too large, wrong size where a size is
// required, or not a file at all: a folder named x.png, a FIFO, a device, a
// broken link) is reported once on stderr ("ttq: skipping PATH: REASON") and
// skipped, never opened when it is not a regular file; the loader counts skipped
// samples per epoch, each once in every epoch that meets it. A split none of
// whose images can be read is an error of the trainer (train/trainer.cpp).
//
// Size policy. Tiny ImageNet and IDX data have a fixed size: a Tiny ImageNet
// image that is not 64x64 is reported and skipped, IDX images must be
// kIdxImageSize square (28x28) or the files are refused. Image folders accept any size: images are resized
// (shorter side to the image size, triangle filter, centre square) with resize_cover().
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "data/augment.h"
#include "data/image.h"
#include "engine/tensor.h"

namespace ttq::data {

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // requires: 0 <= i < size(). ensures: 0 <= label(i) < num_classes().
  virtual int64_t label(int64_t i) const = 0;
  // Where item i comes from, for messages: a file path or "FILE[i]".
  virtual std::string item_name(int64_t i) const = 0;

  // Class i's name: a wnid, a folder name, or a Fashion-MNIST name.
  const std::vector<std::string>& class_names() const { return m_class_names; }
  // Human-readable names (words.txt for Tiny ImageNet), else the class names.
  const std::vector<std::string>& class_descriptions() const { return m_class_descriptions; }
  int64_t num_classes() const { return static_cast<int64_t>(m_class_names.size()); }
  int channels() const { return m_channels; }
  int image_size() const { return m_image_size; }  // every loaded image is this size, square

  // Decodes item i (image_size() square, channels() channels). On an unusable
  // file returns false after reporting it on stderr the first time. Thread-safe.
  bool load(int64_t i, Image* out) const;
  // Distinct items found unusable so far.
  int64_t bad_item_count() const;

 protected:
  // Decodes item i or explains why not (no reporting; `reported` set when a
  // wrapped dataset has reported the failure already).
  virtual DecodeResult decode(int64_t i, Image* out) const = 0;

  std::vector<std::string> m_class_names;
  std::vector<std::string> m_class_descriptions;
  int m_channels = 3;
  int m_image_size = 64;

 private:
  mutable std::mutex m_mutex;
  mutable std::unordered_set<int64_t> m_bad;
};

// A list of image files with labels; what Tiny ImageNet and image folders are.
class ImageFileDataset : public Dataset {
 public:
  struct Item {
    std::string path;
    int64_t label;
  };
  // fixed_size: images must already be image_size square (else reported and
  // skipped); otherwise they are resized with resize_cover().
  ImageFileDataset(std::vector<Item> items, std::vector<std::string> class_names,
                   std::vector<std::string> class_descriptions, int channels, int image_size,
                   bool fixed_size);
  int64_t size() const override { return static_cast<int64_t>(m_items.size()); }
  int64_t label(int64_t i) const override { return m_items[i].label; }
  std::string item_name(int64_t i) const override { return m_items[i].path; }
  const std::vector<Item>& items() const { return m_items; }

 protected:
  DecodeResult decode(int64_t i, Image* out) const override;

 private:
  std::vector<Item> m_items;
  bool m_fixed_size;
};

// The image size of IDX data sets (MNIST, Fashion-MNIST): what preprocess_for gives them.
inline constexpr int kIdxImageSize = 28;

// Images held in memory (IDX data): n images of kIdxImageSize square, one channel.
class IdxDataset : public Dataset {
 public:
  // Throws InputError naming the files when they do not match each other, the
  // images are not kIdxImageSize square, or a label is not below class_names.size().
  IdxDataset(const std::string& images_path, const std::string& labels_path,
             std::vector<std::string> class_names);
  int64_t size() const override { return m_count; }
  int64_t label(int64_t i) const override { return m_labels[i]; }
  std::string item_name(int64_t i) const override;

 protected:
  DecodeResult decode(int64_t i, Image* out) const override;

 private:
  std::string m_images_path;
  int64_t m_count = 0;
  std::vector<uint8_t> m_pixels;
  std::vector<uint8_t> m_labels;
};

// A view of some items of another data set (same classes, same images), by index.
class SubsetDataset : public Dataset {
 public:
  // requires: every index in [0, base->size()).
  SubsetDataset(std::shared_ptr<const Dataset> base, std::vector<int64_t> indices);
  int64_t size() const override { return static_cast<int64_t>(m_indices.size()); }
  int64_t label(int64_t i) const override { return m_base->label(m_indices[i]); }
  std::string item_name(int64_t i) const override { return m_base->item_name(m_indices[i]); }
  const std::vector<int64_t>& indices() const { return m_indices; }

 protected:
  DecodeResult decode(int64_t i, Image* out) const override;

 private:
  std::shared_ptr<const Dataset> m_base;
  std::vector<int64_t> m_indices;
};

// Data sets with the same classes, channels and image size, one after the other.
class ConcatDataset : public Dataset {
 public:
  explicit ConcatDataset(std::vector<std::shared_ptr<const Dataset>> parts);
  int64_t size() const override { return m_offsets.back(); }
  int64_t label(int64_t i) const override;
  std::string item_name(int64_t i) const override;

 protected:
  DecodeResult decode(int64_t i, Image* out) const override;

 private:
  std::pair<const Dataset*, int64_t> locate(int64_t i) const;
  std::vector<std::shared_ptr<const Dataset>> m_parts;
  std::vector<int64_t> m_offsets;  // m_offsets[k] = items before part k; back() = size()
};

// `n` items of `base` drawn without replacement by a seeded permutation (classes
// stay mixed), in index order; all of them when n >= base->size().
std::shared_ptr<const Dataset> random_subset(std::shared_ptr<const Dataset> base, int64_t n, uint64_t seed);

// How the validation split is formed when a data set has none of its own.
struct SplitOptions {
  // Images held out of the training images (stratified by class). -1: the default,
  // 10% of the training images, at most 5000 (at least 1).
  int64_t val_size = -1;
  // Which images: the split depends only on the data, val_size and this seed, so
  // every run, phase and evaluation over the same data sees the same split.
  uint64_t seed = 0;
};
inline constexpr int64_t kDefaultMaxValSize = 5000;
// The number of images SplitOptions holds out of `train_size` training images.
// Throws InputError (naming --val-size) when it leaves no training image.
int64_t resolve_val_size(int64_t requested, int64_t train_size);

// Splits `base` into training and validation items, stratified: each class gives
// its share of val_size (largest remainder; at least one image of each class
// stays in training), chosen by a per-class seeded shuffle. Both keep index order.
// ensures: first (train) and second (val) partition base's items.
std::pair<std::shared_ptr<const Dataset>, std::shared_ptr<const Dataset>> hold_out(
    std::shared_ptr<const Dataset> base, int64_t val_size, uint64_t seed);

// The three splits of a data set (docs/data.md):
//  - train: what the optimiser sees;
//  - val: model selection (best checkpoint, schedule, early stop): the data set's
//    own validation folder when it has one, else held out of the training images;
//  - test: touched once, at the end of a run (null when the data set has none);
//  - all: every image the data set holds, for `ttq_eval --split all`.
struct Splits {
  std::shared_ptr<const Dataset> train;
  std::shared_ptr<const Dataset> val;
  std::shared_ptr<const Dataset> test;
  std::shared_ptr<const Dataset> all;
  std::string val_from;   // where val comes from, for logs and config.json
  std::string test_from;  // where test comes from ("none" when there is no test split)
  int64_t val_size = 0;   // images held out of train for val (0: val is the data set's own)
};

// Tiny ImageNet as shipped (tiny-imagenet-200/): wnids.txt, train/<wnid>/images/*,
// val/images/* + val/val_annotations.txt, words.txt (optional). Classes are the
// wnids in sorted order (wnids.txt when present, else the train folders). RGB,
// 64x64 required. Files in the image folders without an image extension are
// reported and ignored. The official test images carry no labels, so the
// official val/ is the test split and validation is held out of train/.
Splits open_tiny_imagenet(const std::string& root, const SplitOptions& split = {});

// ROOT/<class>/*.{jpg,jpeg,png,bmp}: one split, classes sorted by name. When
// `class_names` is given, folders must be among them (a validation split using
// the training classes); otherwise every sub-folder is a class and must hold images.
// Images are decoded to `channels` (1 or 3) and resized to `image_size` square.
std::shared_ptr<ImageFileDataset> open_image_folder(const std::string& root, int image_size = 64,
                                                    const std::vector<std::string>* class_names = nullptr,
                                                    int channels = 3);
// `folder:DIR`. With DIR/train: train is DIR/train, val is DIR/val when present
// (else held out of DIR/train), test is DIR/test when present (else none).
// Without DIR/train, DIR holds the class folders: val is held out of them and
// there is no test split. `all` is every image under DIR.
Splits open_folder_splits(const std::string& root, int image_size = 64, const SplitOptions& split = {},
                          int channels = 3);

// IDX data in DIR: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
// t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]. The t10k files are
// the test split; val is held out of the train files.
Splits open_idx_folder(const std::string& dir, const std::vector<std::string>& class_names,
                       const SplitOptions& split = {});

// Where Debian's dataset-fashion-mnist installs the data.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
const std::vector<std::string>& fashion_mnist_classes();  // T-shirt/top, Trouser, ...
const std::vector<std::string>& mnist_classes();          // "0" .. "9"

// ---- tool spec strings ----

struct DataSpec {
  enum class Kind { FashionMnist, Mnist, TinyImageNet, Folder };
  Kind kind = Kind::FashionMnist;
  std::string dir;  // resolved: the default folder for fashion-mnist
  std::string str() const;
};
// `fashion-mnist[:DIR]` (default DIR kFashionMnistDir), `mnist:DIR`,
// `tiny-imagenet:DIR`, `folder:DIR`. Throws InputError naming the spec.
DataSpec parse_data_spec(std::string_view spec);
// `image_size` and `channels` are what image folders are decoded to; IDX and
// Tiny ImageNet images keep their own (the loader fits them to its Preprocess).
Splits open_data(const DataSpec& spec, int image_size = 64, const SplitOptions& split = {}, int channels = 3);
// The preprocessing of a model file without "preprocess" metadata, and of a run
// whose config.json predates the pipeline options: gray 28 for IDX, the seed's
// 64 -> 56 RGB pipeline for the rest (data/pipeline.h resolves a new run's).
Preprocess preprocess_for(const DataSpec& spec);
// Class names and descriptions without decoding any image (for inference output).
struct ClassNames {
  std::vector<std::string> names;
  std::vector<std::string> descriptions;
};
ClassNames class_names_for(const DataSpec& spec);

// ---- inference inputs ----

// Loads one image file as the validation transform gives it to a model:
// converted to p.channels, resized with resize_cover() to p.image_size when its
// size differs, centre-cropped to p.crop, normalised.
// ensures: F32 tensor [1, p.channels, p.crop, p.crop] on the CPU.
// Throws InputError naming the path when the file cannot be decoded.
Tensor load_image_tensor(const std::string& path, const Preprocess& p);
// The same transform of an image already decoded (1 or 3 channels; converted to
// p.channels): the one function every inference input goes through.
Tensor image_tensor(const Image& img, const Preprocess& p);

// Writes "ttq: skipping PATH: REASON" on stderr (one line: control characters
// in either are escaped with printable()).
void report_skipped(const std::string& path, const std::string& reason);

}  // namespace ttq::data
