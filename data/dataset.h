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
// image that is not 64x64 is reported and skipped, IDX data is as its header
// says. Image folders accept any size: images are resized (shorter side to the
// image size, triangle filter, centre square) with resize_cover().
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

struct Splits {
  std::shared_ptr<const Dataset> train;
  std::shared_ptr<const Dataset> val;
};

// Tiny ImageNet as shipped (tiny-imagenet-200/): wnids.txt, train/<wnid>/images/*,
// val/images/* + val/val_annotations.txt, words.txt (optional). Classes are the
// wnids in sorted order (wnids.txt when present, else the train folders). RGB,
// 64x64 required. Files in the image folders without an image extension are
// reported and ignored.
Splits open_tiny_imagenet(const std::string& root);

// ROOT/<class>/*.{jpg,jpeg,png,bmp}: one split, classes sorted by name. When
// `class_names` is given, folders must be among them (a validation split using
// the training classes); otherwise every sub-folder is a class and must hold images.
std::shared_ptr<ImageFileDataset> open_image_folder(const std::string& root, int image_size = 64,
                                                    const std::vector<std::string>* class_names = nullptr);
// `folder:DIR`: DIR/train and DIR/val when DIR/train exists (DIR/val optional:
// without it the validation split is empty); otherwise DIR holds the class
// folders and every 10th image of each class (sorted by name: the 10th, 20th,
// ...) is held out for validation.
Splits open_folder_splits(const std::string& root, int image_size = 64);

// IDX data in DIR: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
// t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz].
Splits open_idx_folder(const std::string& dir, const std::vector<std::string>& class_names);

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
Splits open_data(const DataSpec& spec, int image_size = 64);
// The preprocessing a spec's images want (gray 28 for IDX, the seed's for the rest).
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

// Writes "ttq: skipping PATH: REASON" on stderr (one line: control characters
// in either are escaped with printable()).
void report_skipped(const std::string& path, const std::string& reason);

}  // namespace ttq::data
