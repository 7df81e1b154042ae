// Dataset layouts, spec strings and inference inputs (see data/dataset.h for
// the bad-data and size policies). Tested in tests/test_data.cpp.
#include "data/dataset.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "data/idx.h"
#include "engine/error.h"
#include "engine/io/file.h"
#include "engine/rng.h"

namespace fs = std::filesystem;

namespace ttq::data {

namespace {

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}
bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

std::vector<std::string> read_lines(const fs::path& path) {
  std::ifstream f(path);
  TTQ_INPUT_CHECK(f.good()) << path.string() << ": cannot open";
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(f, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// A classifier needs two classes: with one, every prediction is right and the
// accuracy says nothing.
void check_class_count(const std::vector<std::string>& classes, const std::string& where) {
  TTQ_INPUT_CHECK(classes.size() >= 2) << where << ": only one class ('" << classes.at(0)
                                       << "'); a classification data set needs at least two";
}

// Sub-folders of `dir`, sorted by name, hidden ones ('.') left out.
std::vector<std::string> list_subdirs(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (!name.empty() && name[0] != '.' && is_dir(e.path())) out.push_back(name);
  }
  TTQ_INPUT_CHECK(!ec) << dir.string() << ": cannot list (" << ec.message() << ")";
  std::sort(out.begin(), out.end());
  return out;
}

// Image files under `dir` (recursively when asked: real sub-folders are entered,
// symbolic links to folders are not), sorted by path. Every entry named like an
// image is an item, whatever it is: a directory called x.png, a FIFO, a device
// or a broken symbolic link fails its decode like a corrupt file, so it is
// reported, skipped and counted in each epoch that meets it, and never opened
// (engine/io/file.h). Other entries are reported once here and ignored; hidden
// entries ('.') are ignored.
std::vector<std::string> list_images(const fs::path& dir, bool recursive) {
  std::vector<std::string> out;
  std::error_code ec;
  // Returns true when `e` is a folder to enter.
  auto visit = [&](const fs::directory_entry& e) {
    std::string name = e.path().filename().string();
    if (name.empty() || name[0] == '.') return false;
    if (has_image_extension(name)) {
      out.push_back(e.path().string());
      return false;
    }
    std::error_code sec;
    const bool link = e.is_symlink(sec);
    if (is_dir(e.path())) {
      if (recursive && !link) return true;
      report_skipped(e.path().string(), link ? "not an image file (a link to a folder, not followed)"
                                             : "not an image file (a folder)");
    } else if (is_file(e.path())) {
      report_skipped(e.path().string(), "not an image file (extension)");
    } else {
      report_skipped(e.path().string(), io::regular_file_problem(e.path().string()));
    }
    return false;
  };
  if (recursive) {
    fs::recursive_directory_iterator it(dir, ec), end;
    while (!ec && it != end) {
      if (!visit(*it)) it.disable_recursion_pending();
      it.increment(ec);
    }
  } else {
    fs::directory_iterator it(dir, ec), end;
    while (!ec && it != end) {
      visit(*it);
      it.increment(ec);
    }
  }
  TTQ_INPUT_CHECK(!ec) << dir.string() << ": cannot list (" << ec.message() << ")";
  std::sort(out.begin(), out.end());
  return out;
}

// wnid -> words from words.txt ("n01443537\tgoldfish, Carassius auratus").
std::map<std::string, std::string> read_words(const fs::path& path) {
  std::map<std::string, std::string> words;
  if (!is_file(path)) return words;
  for (const std::string& line : read_lines(path)) {
    size_t tab = line.find('\t');
    if (tab == std::string::npos) continue;
    words[trim(line.substr(0, tab))] = trim(line.substr(tab + 1));
  }
  return words;
}

struct TinyClasses {
  std::vector<std::string> wnids;
  std::vector<std::string> descriptions;
};

TinyClasses tiny_imagenet_classes(const fs::path& root) {
  TTQ_INPUT_CHECK(is_dir(root)) << root.string() << ": no such folder";
  fs::path train = root / "train";
  TinyClasses c;
  fs::path wnids_path = root / "wnids.txt";
  if (is_file(wnids_path)) {
    for (const std::string& line : read_lines(wnids_path)) {
      std::string w = trim(line);
      if (!w.empty()) c.wnids.push_back(w);
    }
    TTQ_INPUT_CHECK(!c.wnids.empty()) << wnids_path.string() << ": no class ids";
    std::sort(c.wnids.begin(), c.wnids.end());
    auto dup = std::adjacent_find(c.wnids.begin(), c.wnids.end());
    TTQ_INPUT_CHECK(dup == c.wnids.end()) << wnids_path.string() << ": class id " << *dup << " listed twice";
  } else {
    TTQ_INPUT_CHECK(is_dir(train)) << train.string() << ": no such folder (and no wnids.txt)";
    c.wnids = list_subdirs(train);
    TTQ_INPUT_CHECK(!c.wnids.empty()) << train.string() << ": no class folders";
  }
  check_class_count(c.wnids, is_file(wnids_path) ? wnids_path.string() : train.string());
  std::map<std::string, std::string> words = read_words(root / "words.txt");
  for (const std::string& w : c.wnids) {
    auto it = words.find(w);
    c.descriptions.push_back(it == words.end() ? w : it->second);
  }
  return c;
}

std::vector<std::string> folder_classes(const fs::path& root) {
  TTQ_INPUT_CHECK(is_dir(root)) << root.string() << ": no such folder";
  std::vector<std::string> classes = list_subdirs(root);
  TTQ_INPUT_CHECK(!classes.empty()) << root.string() << ": no class folders";
  return classes;
}

// DIR/name or DIR/name.gz, whichever exists (plain first).
std::string find_idx(const fs::path& dir, const std::string& name) {
  if (is_file(dir / name)) return (dir / name).string();
  if (is_file(dir / (name + ".gz"))) return (dir / (name + ".gz")).string();
  TTQ_INPUT_ERROR() << (dir / name).string() << "[.gz]: missing";
}

}  // namespace

void report_skipped(const std::string& path, const std::string& reason) {
  std::fprintf(stderr, "ttq: skipping %s: %s\n", printable(path).c_str(), printable(reason).c_str());
}

// ---- Dataset ----

bool Dataset::load(int64_t i, Image* out) const {
  TTQ_CHECK(i >= 0 && i < size()) << "Dataset::load: index " << i << " outside [0, " << size() << ")";
  {
    std::lock_guard<std::mutex> lock(m_mutex);
    if (m_bad.count(i) != 0) return false;
  }
  DecodeResult r = decode(i, out);
  if (r.ok) return true;
  bool first;
  {
    std::lock_guard<std::mutex> lock(m_mutex);
    first = m_bad.insert(i).second;
  }
  if (first && !r.reported) report_skipped(item_name(i), r.error);
  return false;
}

int64_t Dataset::bad_item_count() const {
  std::lock_guard<std::mutex> lock(m_mutex);
  return static_cast<int64_t>(m_bad.size());
}

// ---- ImageFileDataset ----

ImageFileDataset::ImageFileDataset(std::vector<Item> items, std::vector<std::string> class_names,
                                   std::vector<std::string> class_descriptions, int channels, int image_size,
                                   bool fixed_size)
    : m_items(std::move(items)), m_fixed_size(fixed_size) {
  TTQ_CHECK(channels == 1 || channels == 3) << "ImageFileDataset: channels must be 1 or 3";
  TTQ_CHECK(image_size > 0) << "ImageFileDataset: bad image size " << image_size;
  TTQ_CHECK(class_descriptions.empty() || class_descriptions.size() == class_names.size())
      << "ImageFileDataset: descriptions do not match classes";
  m_class_names = std::move(class_names);
  m_class_descriptions = class_descriptions.empty() ? m_class_names : std::move(class_descriptions);
  m_channels = channels;
  m_image_size = image_size;
  for (const Item& it : m_items) {
    TTQ_INPUT_CHECK(it.label >= 0 && it.label < num_classes())
        << it.path << ": label " << it.label << " outside [0, " << num_classes() << ")";
  }
}

DecodeResult ImageFileDataset::decode(int64_t i, Image* out) const {
  DecodeResult r = decode_image_file(m_items[i].path, m_channels, out);
  if (!r.ok) return r;
  if (out->width != m_image_size || out->height != m_image_size) {
    if (m_fixed_size) {
      return {false, "image is " + std::to_string(out->width) + "x" + std::to_string(out->height) +
                         ", expected " + std::to_string(m_image_size) + "x" + std::to_string(m_image_size)};
    }
    *out = resize_cover(*out, m_image_size);
  }
  return r;
}

// ---- IdxDataset ----

IdxDataset::IdxDataset(const std::string& images_path, const std::string& labels_path,
                       std::vector<std::string> class_names)
    : m_images_path(images_path) {
  TTQ_CHECK(!class_names.empty()) << "IdxDataset: no class names";
  IdxArray images = read_idx(images_path, 3);
  IdxArray labels = read_idx(labels_path, 1);
  TTQ_INPUT_CHECK(images.dims[0] == labels.dims[0]) << images_path << ": " << images.dims[0] << " images but "
                                                    << labels_path << " has " << labels.dims[0] << " labels";
  TTQ_INPUT_CHECK(images.dims[1] == kIdxImageSize && images.dims[2] == kIdxImageSize)
      << images_path << ": images are " << images.dims[1] << "x" << images.dims[2] << ", expected "
      << kIdxImageSize << "x" << kIdxImageSize;
  for (size_t i = 0; i < labels.data.size(); ++i) {
    TTQ_INPUT_CHECK(labels.data[i] < class_names.size())
        << labels_path << ": label " << int(labels.data[i]) << " of item " << i << " outside [0, "
        << class_names.size() << ")";
  }
  m_count = images.dims[0];
  m_pixels = std::move(images.data);
  m_labels = std::move(labels.data);
  m_class_names = std::move(class_names);
  m_class_descriptions = m_class_names;
  m_channels = 1;
  m_image_size = static_cast<int>(images.dims[1]);
}

std::string IdxDataset::item_name(int64_t i) const { return m_images_path + "[" + std::to_string(i) + "]"; }

DecodeResult IdxDataset::decode(int64_t i, Image* out) const {
  const size_t n = size_t(m_image_size) * m_image_size;
  *out = Image(m_image_size, m_image_size, 1);
  std::copy_n(m_pixels.begin() + static_cast<std::ptrdiff_t>(n * i), n, out->pixels.begin());
  return {true, ""};
}

// ---- views: subsets, concatenations, held-out splits ----

SubsetDataset::SubsetDataset(std::shared_ptr<const Dataset> base, std::vector<int64_t> indices)
    : m_base(std::move(base)), m_indices(std::move(indices)) {
  for (int64_t i : m_indices) {
    TTQ_CHECK(i >= 0 && i < m_base->size())
        << "SubsetDataset: index " << i << " outside [0, " << m_base->size() << ")";
  }
  m_class_names = m_base->class_names();
  m_class_descriptions = m_base->class_descriptions();
  m_channels = m_base->channels();
  m_image_size = m_base->image_size();
}

DecodeResult SubsetDataset::decode(int64_t i, Image* out) const {
  // The base reports an unusable item itself (once); a view only passes the verdict on.
  if (m_base->load(m_indices[i], out)) return {true, ""};
  return {false, "unusable", true};
}

ConcatDataset::ConcatDataset(std::vector<std::shared_ptr<const Dataset>> parts) : m_parts(std::move(parts)) {
  TTQ_CHECK(!m_parts.empty()) << "ConcatDataset: no parts";
  const Dataset& first = *m_parts.front();
  m_offsets.push_back(0);
  for (const auto& p : m_parts) {
    TTQ_CHECK(p->class_names() == first.class_names() && p->channels() == first.channels() &&
              p->image_size() == first.image_size())
        << "ConcatDataset: parts differ in classes, channels or image size";
    m_offsets.push_back(m_offsets.back() + p->size());
  }
  m_class_names = first.class_names();
  m_class_descriptions = first.class_descriptions();
  m_channels = first.channels();
  m_image_size = first.image_size();
}

std::pair<const Dataset*, int64_t> ConcatDataset::locate(int64_t i) const {
  auto it = std::upper_bound(m_offsets.begin(), m_offsets.end(), i);
  const size_t k = static_cast<size_t>(it - m_offsets.begin()) - 1;
  return {m_parts[k].get(), i - m_offsets[k]};
}
int64_t ConcatDataset::label(int64_t i) const {
  auto [d, j] = locate(i);
  return d->label(j);
}
std::string ConcatDataset::item_name(int64_t i) const {
  auto [d, j] = locate(i);
  return d->item_name(j);
}
DecodeResult ConcatDataset::decode(int64_t i, Image* out) const {
  auto [d, j] = locate(i);
  if (d->load(j, out)) return {true, ""};
  return {false, "unusable", true};
}

std::shared_ptr<const Dataset> random_subset(std::shared_ptr<const Dataset> base, int64_t n, uint64_t seed) {
  if (n >= base->size()) return base;
  std::vector<int64_t> idx(static_cast<size_t>(base->size()));
  for (int64_t i = 0; i < base->size(); ++i) idx[i] = i;
  Generator g(seed ^ 0x5b5e7ull);
  for (int64_t i = static_cast<int64_t>(idx.size()) - 1; i > 0; --i)
    std::swap(idx[i], idx[static_cast<int64_t>(g.below(static_cast<uint64_t>(i + 1)))]);
  idx.resize(static_cast<size_t>(std::max<int64_t>(n, 0)));
  std::sort(idx.begin(), idx.end());
  return std::make_shared<SubsetDataset>(std::move(base), std::move(idx));
}

int64_t resolve_val_size(int64_t requested, int64_t train_size) {
  TTQ_INPUT_CHECK(train_size >= 2) << "--val-size: " << train_size
                                   << " training image(s) are too few to hold out a validation split";
  if (requested < 0) return std::clamp<int64_t>(train_size / 10, 1, kDefaultMaxValSize);
  TTQ_INPUT_CHECK(requested >= 1 && requested < train_size)
      << "--val-size: " << requested << " is outside [1, " << train_size - 1 << "] (the training split has "
      << train_size << " images)";
  return requested;
}

std::pair<std::shared_ptr<const Dataset>, std::shared_ptr<const Dataset>> hold_out(
    std::shared_ptr<const Dataset> base, int64_t val_size, uint64_t seed) {
  const int64_t n = base->size();
  const int64_t classes = base->num_classes();
  TTQ_CHECK(val_size >= 0 && val_size < n) << "hold_out: val_size " << val_size << " of " << n;
  std::vector<std::vector<int64_t>> by_class(static_cast<size_t>(classes));
  for (int64_t i = 0; i < n; ++i) by_class[static_cast<size_t>(base->label(i))].push_back(i);

  // Each class's share of val_size: floors of the exact shares, then the rest by
  // largest remainder (ties to the lower class). A class keeps one training image.
  std::vector<int64_t> quota(static_cast<size_t>(classes), 0);
  std::vector<std::pair<int64_t, int64_t>> remainder;  // (-remainder numerator, class)
  int64_t given = 0;
  for (int64_t c = 0; c < classes; ++c) {
    const int64_t nc = static_cast<int64_t>(by_class[c].size());
    const __int128 exact = static_cast<__int128>(val_size) * nc;
    quota[c] = std::min<int64_t>(static_cast<int64_t>(exact / n), std::max<int64_t>(nc - 1, 0));
    given += quota[c];
    remainder.push_back({-static_cast<int64_t>(exact % n), c});
  }
  std::sort(remainder.begin(), remainder.end());
  for (bool progress = true; given < val_size && progress;) {
    progress = false;
    for (const auto& [r, c] : remainder) {
      if (given == val_size) break;
      if (quota[c] + 1 < static_cast<int64_t>(by_class[c].size())) {
        ++quota[c];
        ++given;
        progress = true;
      }
    }
  }

  std::vector<int64_t> train, val;
  for (int64_t c = 0; c < classes; ++c) {
    std::vector<int64_t>& idx = by_class[c];
    Generator g(seed ^ (0x7a11d5ull + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(c + 1)));
    for (int64_t i = static_cast<int64_t>(idx.size()) - 1; i > 0; --i)
      std::swap(idx[i], idx[static_cast<int64_t>(g.below(static_cast<uint64_t>(i + 1)))]);
    val.insert(val.end(), idx.begin(), idx.begin() + quota[c]);
    train.insert(train.end(), idx.begin() + quota[c], idx.end());
  }
  std::sort(train.begin(), train.end());
  std::sort(val.begin(), val.end());
  return {std::make_shared<SubsetDataset>(base, std::move(train)),
          std::make_shared<SubsetDataset>(base, std::move(val))};
}

namespace {

// train, val and the bookkeeping when val is held out of `full_train`.
void hold_out_val(Splits& s, std::shared_ptr<const Dataset> full_train, const SplitOptions& split) {
  const int64_t v = resolve_val_size(split.val_size, full_train->size());
  std::tie(s.train, s.val) = hold_out(std::move(full_train), v, split.seed);
  s.val_size = v;
  s.val_from = std::to_string(s.val->size()) + " images held out of the training images (stratified, seed " +
               std::to_string(split.seed) + ")";
}

}  // namespace

// ---- layouts ----

Splits open_tiny_imagenet(const std::string& root_str, const SplitOptions& split) {
  fs::path root(root_str);
  TinyClasses classes = tiny_imagenet_classes(root);
  std::map<std::string, int64_t> index;
  for (size_t i = 0; i < classes.wnids.size(); ++i) index[classes.wnids[i]] = static_cast<int64_t>(i);

  fs::path train = root / "train";
  TTQ_INPUT_CHECK(is_dir(train)) << train.string() << ": no such folder";
  for (const std::string& d : list_subdirs(train)) {
    TTQ_INPUT_CHECK(index.count(d) != 0) << (train / d).string() << ": class folder not in wnids.txt";
  }
  std::vector<ImageFileDataset::Item> train_items;
  for (size_t c = 0; c < classes.wnids.size(); ++c) {
    fs::path dir = train / classes.wnids[c] / "images";
    TTQ_INPUT_CHECK(is_dir(dir)) << dir.string() << ": no such folder (class " << classes.wnids[c] << ")";
    std::vector<std::string> files = list_images(dir, false);
    TTQ_INPUT_CHECK(!files.empty()) << dir.string() << ": no images (empty class)";
    for (std::string& f : files) train_items.push_back({std::move(f), static_cast<int64_t>(c)});
  }

  fs::path ann = root / "val" / "val_annotations.txt";
  TTQ_INPUT_CHECK(is_file(ann)) << ann.string() << ": missing";
  std::vector<ImageFileDataset::Item> val_items;
  std::vector<std::string> lines = read_lines(ann);
  for (size_t ln = 0; ln < lines.size(); ++ln) {
    std::istringstream fields(lines[ln]);
    std::string file, wnid;
    if (!(fields >> file)) continue;  // blank line
    TTQ_INPUT_CHECK(static_cast<bool>(fields >> wnid))
        << ann.string() << ":" << ln + 1 << ": expected FILE WNID";
    auto it = index.find(wnid);
    TTQ_INPUT_CHECK(it != index.end()) << ann.string() << ":" << ln + 1 << ": unknown class '" << wnid << "'";
    val_items.push_back({(root / "val" / "images" / file).string(), it->second});
  }
  TTQ_INPUT_CHECK(!val_items.empty()) << ann.string() << ": no annotations";

  Splits s;
  auto full_train = std::make_shared<ImageFileDataset>(std::move(train_items), classes.wnids,
                                                       classes.descriptions, 3, 64, true);
  s.test = std::make_shared<ImageFileDataset>(std::move(val_items), classes.wnids, classes.descriptions, 3,
                                              64, true);
  s.test_from = (root / "val").string() + " (the official validation images; the test images have no labels)";
  s.all = std::make_shared<ConcatDataset>(std::vector<std::shared_ptr<const Dataset>>{full_train, s.test});
  hold_out_val(s, full_train, split);
  return s;
}

std::shared_ptr<ImageFileDataset> open_image_folder(const std::string& root_str, int image_size,
                                                    const std::vector<std::string>* class_names,
                                                    int channels) {
  fs::path root(root_str);
  std::vector<std::string> folders = folder_classes(root);
  if (class_names == nullptr) check_class_count(folders, root.string());
  std::vector<std::string> classes = class_names ? *class_names : folders;
  std::map<std::string, int64_t> index;
  for (size_t i = 0; i < classes.size(); ++i) index[classes[i]] = static_cast<int64_t>(i);
  std::vector<ImageFileDataset::Item> items;
  for (const std::string& f : folders) {
    auto it = index.find(f);
    TTQ_INPUT_CHECK(it != index.end()) << (root / f).string() << ": class not among the training classes";
    std::vector<std::string> files = list_images(root / f, true);
    TTQ_INPUT_CHECK(!files.empty()) << (root / f).string() << ": no images (empty class)";
    for (std::string& p : files) items.push_back({std::move(p), it->second});
  }
  return std::make_shared<ImageFileDataset>(std::move(items), classes, std::vector<std::string>{}, channels,
                                            image_size, false);
}

Splits open_folder_splits(const std::string& root_str, int image_size, const SplitOptions& split,
                          int channels) {
  fs::path root(root_str);
  TTQ_INPUT_CHECK(is_dir(root)) << root.string() << ": no such folder";
  Splits s;
  s.test_from = "none";
  if (!is_dir(root / "train")) {
    // DIR/<class>/...: validation held out, no test split.
    std::shared_ptr<const Dataset> all = open_image_folder(root.string(), image_size, nullptr, channels);
    s.all = all;
    hold_out_val(s, all, split);
    s.test_from = "none (" + root.string() + " has no train/ and test/ folders)";
    return s;
  }
  auto train = open_image_folder((root / "train").string(), image_size, nullptr, channels);
  const std::vector<std::string> classes = train->class_names();
  std::vector<std::shared_ptr<const Dataset>> parts = {train};
  if (is_dir(root / "val")) {
    s.train = train;
    s.val = open_image_folder((root / "val").string(), image_size, &classes, channels);
    s.val_from = (root / "val").string();
    parts.push_back(s.val);
  } else {
    hold_out_val(s, train, split);
  }
  if (is_dir(root / "test")) {
    s.test = open_image_folder((root / "test").string(), image_size, &classes, channels);
    s.test_from = (root / "test").string();
    parts.push_back(s.test);
  } else {
    s.test_from = "none (" + root.string() + " has no test/ folder)";
  }
  s.all = parts.size() == 1 ? parts[0] : std::make_shared<ConcatDataset>(parts);
  return s;
}

Splits open_idx_folder(const std::string& dir_str, const std::vector<std::string>& class_names,
                       const SplitOptions& split) {
  fs::path dir(dir_str);
  TTQ_INPUT_CHECK(is_dir(dir)) << dir.string() << ": no such folder";
  Splits s;
  auto full_train = std::make_shared<IdxDataset>(find_idx(dir, "train-images-idx3-ubyte"),
                                                 find_idx(dir, "train-labels-idx1-ubyte"), class_names);
  s.test = std::make_shared<IdxDataset>(find_idx(dir, "t10k-images-idx3-ubyte"),
                                        find_idx(dir, "t10k-labels-idx1-ubyte"), class_names);
  TTQ_INPUT_CHECK(s.test->image_size() == full_train->image_size())
      << dir.string() << ": the t10k images are " << s.test->image_size()
      << " pixels square, the training images " << full_train->image_size();
  s.test_from = find_idx(dir, "t10k-images-idx3-ubyte");
  s.all = std::make_shared<ConcatDataset>(std::vector<std::shared_ptr<const Dataset>>{full_train, s.test});
  hold_out_val(s, full_train, split);
  return s;
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

const std::vector<std::string>& mnist_classes() {
  static const std::vector<std::string> names = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  return names;
}

// ---- spec strings ----

std::string DataSpec::str() const {
  switch (kind) {
    case Kind::FashionMnist: return "fashion-mnist:" + dir;
    case Kind::Mnist: return "mnist:" + dir;
    case Kind::TinyImageNet: return "tiny-imagenet:" + dir;
    case Kind::Folder: return "folder:" + dir;
  }
  return "?";
}

DataSpec parse_data_spec(std::string_view spec) {
  std::string s(spec);
  size_t colon = s.find(':');
  std::string name = s.substr(0, colon);
  std::string dir = colon == std::string::npos ? "" : s.substr(colon + 1);
  bool has_dir = colon != std::string::npos;
  DataSpec out;
  if (name == "fashion-mnist") {
    out.kind = DataSpec::Kind::FashionMnist;
    out.dir = has_dir ? dir : kFashionMnistDir;
  } else if (name == "mnist") {
    out.kind = DataSpec::Kind::Mnist;
    out.dir = dir;
  } else if (name == "tiny-imagenet") {
    out.kind = DataSpec::Kind::TinyImageNet;
    out.dir = dir;
  } else if (name == "folder") {
    out.kind = DataSpec::Kind::Folder;
    out.dir = dir;
  } else {
    TTQ_INPUT_ERROR() << "data spec '" << s
                      << "': unknown kind (fashion-mnist[:DIR], mnist:DIR, tiny-imagenet:DIR, folder:DIR)";
  }
  TTQ_INPUT_CHECK(!out.dir.empty()) << "data spec '" << s << "': missing folder after '" << name << ":'";
  return out;
}

Splits open_data(const DataSpec& spec, int image_size, const SplitOptions& split, int channels) {
  switch (spec.kind) {
    case DataSpec::Kind::FashionMnist: return open_idx_folder(spec.dir, fashion_mnist_classes(), split);
    case DataSpec::Kind::Mnist: return open_idx_folder(spec.dir, mnist_classes(), split);
    case DataSpec::Kind::TinyImageNet: return open_tiny_imagenet(spec.dir, split);
    case DataSpec::Kind::Folder: return open_folder_splits(spec.dir, image_size, split, channels);
  }
  TTQ_THROW() << "open_data: unknown kind";
}

Preprocess preprocess_for(const DataSpec& spec) {
  if (spec.kind == DataSpec::Kind::FashionMnist || spec.kind == DataSpec::Kind::Mnist)
    return Preprocess::gray(kIdxImageSize);
  return Preprocess::seed_rgb();
}

ClassNames class_names_for(const DataSpec& spec) {
  ClassNames c;
  switch (spec.kind) {
    case DataSpec::Kind::FashionMnist: c.names = fashion_mnist_classes(); break;
    case DataSpec::Kind::Mnist: c.names = mnist_classes(); break;
    case DataSpec::Kind::TinyImageNet: {
      TinyClasses t = tiny_imagenet_classes(spec.dir);
      c.names = std::move(t.wnids);
      c.descriptions = std::move(t.descriptions);
      break;
    }
    case DataSpec::Kind::Folder: {
      fs::path root(spec.dir);
      if (is_dir(root / "train")) root /= "train";
      c.names = folder_classes(root);
      check_class_count(c.names, root.string());
      break;
    }
  }
  if (c.descriptions.empty()) c.descriptions = c.names;
  return c;
}

// ---- inference inputs ----

Tensor load_image_tensor(const std::string& path, const Preprocess& p) {
  Image img;
  DecodeResult r = decode_image_file(path, p.channels, &img);
  TTQ_INPUT_CHECK(r.ok) << path << ": " << r.error;
  return image_tensor(img, p);
}

Tensor image_tensor(const Image& decoded, const Preprocess& p) {
  const Image* img = &decoded;
  Image converted, resized;
  if (img->channels != p.channels) img = &(converted = convert_channels(*img, p.channels));
  if (img->width != p.image_size || img->height != p.image_size)
    img = &(resized = resize_cover(*img, p.image_size));
  Tensor t = Tensor::empty({1, p.channels, p.crop, p.crop}, DType::F32);
  preprocess(*img, p, /*train=*/false, 0, t.data<float>());
  return t;
}

}  // namespace ttq::data
