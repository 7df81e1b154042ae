// Image codecs through stb (the one translation unit that compiles stb_image,
// stb_image_write and stb_image_resize), the checks stb lacks (JPEG / BMP
// truncation, JPEG Huffman tables, PNG chunks, the size limits, an allocation budget), and
// channel conversion. Tested in tests/test_data.cpp; fuzzed by fuzz/fuzz_image.cpp.
#include "data/image.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "engine/error.h"

// stb_image allocates as its input says, before checking the input holds that
// much: a PNG chunk declaring 2 GB of image data, a zlib stream inflating to
// 4 GB behind a 1x1 header. Its allocations go through these, which refuse any
// single allocation above the budget decode_image sets from the header's size
// (thread-local: loader workers decode side by side); stb then fails with
// "outofmem" and the file is refused like any corrupt one.
namespace {
thread_local size_t g_stbi_alloc_budget = SIZE_MAX;
void* stbi_budget_malloc(size_t n) { return n > g_stbi_alloc_budget ? nullptr : std::malloc(n); }
void* stbi_budget_realloc(void* p, size_t n) {
  return n > g_stbi_alloc_budget ? nullptr : std::realloc(p, n);
}
}  // namespace

// stb's implementations are compiled here with internal linkage, so another
// library that also compiles stb cannot collide with these symbols.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#pragma GCC diagnostic ignored "-Wshadow"
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO  // files are read here, so errors name the path
// The formats image folders take, and no other: less decoder code faces hostile files.
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_MALLOC(n) stbi_budget_malloc(n)
#define STBI_REALLOC(p, n) stbi_budget_realloc(p, n)
#define STBI_FREE(p) std::free(p)
#include "third_party/stb/stb_image.h"  // v2.30: third_party/stb/README.md says why a copy
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#include <stb_image_write.h>
#define STB_IMAGE_RESIZE_STATIC
// stb_image_resize 0.97 asserts `total < 1.1f` on some downsampling ratios
// (stb issue 1449, e.g. 120x90 -> 85x64) although it renormalises the
// coefficients right after; without NDEBUG that would abort a debug build.
#define STBIR_ASSERT(x) ((void)0)
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb_image_resize.h>
#pragma GCC diagnostic pop

#include "engine/io/file.h"

namespace ttq::data {

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string extension(const std::string& path) {
  size_t slash = path.find_last_of('/');
  size_t dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  return lower(path.substr(dot + 1));
}

// Where a JPEG's first segment starts (after SOI), or 0 when the data is not a
// JPEG to stb, which takes any run of 0xFF fill bytes before the SOI marker.
size_t jpeg_start(const uint8_t* d, size_t n) {
  if (n < 2 || d[0] != 0xFF) return 0;
  size_t i = 1;
  while (i < n && d[i] == 0xFF) ++i;
  return i < n && d[i] == 0xD8 ? i + 1 : 0;
}

// Whether the payload of a DHT segment holds well-formed Huffman tables. stb
// before 2.28 trusted the 16 code counts: a table of more than 256 codes wrote
// past its arrays (found by fuzz/fuzz_image.cpp on Debian's 2.27). Kept in front
// of the decoder so that a file of that kind is refused whatever stb is built.
bool jpeg_dht_valid(const uint8_t* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (i + 17 > n || (p[i] >> 4) > 1 || (p[i] & 15) > 3) return false;
    size_t codes = 0;
    for (int k = 1; k <= 16; ++k) codes += p[i + k];
    if (codes > 256) return false;
    i += 17 + codes;
  }
  return i == n;
}

// "" for a JPEG stb may decode, else why not. stb decodes a JPEG whose data
// stops early by padding with zeros, so a cut file would pass as an image with a
// grey bottom. Walk the marker structure as stb does: header segments by their
// lengths (Huffman tables checked on the way), entropy-coded data up to the next
// marker that is neither a stuffed 0xFF00 nor a restart; a complete stream reaches EOI.
std::string jpeg_problem(const uint8_t* d, size_t n, size_t start) {
  const std::string truncated = "truncated or corrupt JPEG (no end-of-image marker)";
  size_t i = start;
  while (i + 1 < n) {
    if (d[i] != 0xFF) {  // stray bytes between segments: decoders skip them too
      ++i;
      continue;
    }
    uint8_t m = d[i + 1];
    if (m == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    if (m == 0xD9) return "";
    if (m == 0x00 || m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) {  // no length field
      i += 2;
      continue;
    }
    if (i + 3 >= n) return truncated;
    size_t len = (size_t(d[i + 2]) << 8) | d[i + 3];
    if (len < 2 || i + 2 + len > n) return truncated;
    if (m == 0xC4 && !jpeg_dht_valid(d + i + 4, len - 2)) return "corrupt JPEG (bad Huffman table)";
    i += 2 + len;
    if (m == 0xDA) {  // start of scan: skip the entropy-coded segment
      while (i + 1 < n) {
        if (d[i] == 0xFF) {
          uint8_t x = d[i + 1];
          if (x == 0x00 || (x >= 0xD0 && x <= 0xD7)) {
            i += 2;
            continue;
          }
          if (x == 0xFF) {
            ++i;
            continue;
          }
          break;  // a real marker
        }
        ++i;
      }
    }
  }
  return truncated;
}

bool is_png(const uint8_t* d, size_t n) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  return n >= 8 && std::memcmp(d, sig, 8) == 0;
}

// "" for a PNG whose chunks stb may read, else why not: every chunk up to IEND
// inside the file, and no empty IDAT chunk before any image data (stb would
// memcpy zero bytes to a null buffer, undefined behaviour found by fuzz/fuzz_image.cpp).
std::string png_problem(const uint8_t* d, size_t n) {
  size_t i = 8;
  bool data = false;
  while (i + 8 <= n) {
    const uint32_t len =
        (uint32_t(d[i]) << 24) | (uint32_t(d[i + 1]) << 16) | (uint32_t(d[i + 2]) << 8) | d[i + 3];
    if (len > 0x7fffffffu || len + size_t(12) > n - i)
      return "truncated or corrupt PNG (a chunk runs past the end)";
    const bool idat = std::memcmp(d + i + 4, "IDAT", 4) == 0;
    if (idat && len == 0 && !data) return "corrupt PNG (empty image data chunk)";
    data = data || (idat && len > 0);
    if (std::memcmp(d + i + 4, "IEND", 4) == 0) return "";
    i += 12 + len;
  }
  return "truncated PNG (no IEND chunk)";
}

uint32_t read_le32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

// The bytes an uncompressed BMP needs: pixel data offset + rows x row stride, or
// 0 when its header cannot tell (stb then judges). stb reads missing pixels as
// zeros, so without this a 91-byte file would decode as a 1028 x 4148 image
// (found by fuzz/fuzz_image.cpp).
uint64_t bmp_bytes_needed(const uint8_t* d, size_t n) {
  if (n < 30) return 0;
  const uint64_t offset = read_le32(d + 10);
  const uint32_t header = read_le32(d + 14);
  int64_t w = 0, h = 0;
  uint32_t bpp = 0, compression = 0;
  if (header == 12) {  // OS/2: 16-bit sizes
    w = d[18] | (d[19] << 8);
    h = d[20] | (d[21] << 8);
    bpp = d[24] | (d[25] << 8);
  } else if (header >= 40 && n >= 34) {
    w = static_cast<int32_t>(read_le32(d + 18));
    h = static_cast<int32_t>(read_le32(d + 22));
    bpp = d[28] | (d[29] << 8);
    compression = read_le32(d + 30);
  } else {
    return 0;
  }
  if (compression != 0 && compression != 3) return 0;  // RLE and others: stb refuses them
  if (w <= 0 || bpp == 0 || bpp > 32) return 0;
  const uint64_t stride = (uint64_t(w) * bpp + 31) / 32 * 4;
  return offset + stride * uint64_t(h < 0 ? -h : h);
}

// stb's allocation budget for one image: kStbiAllocFloor + kStbiAllocPerPixel * w * h bytes.
constexpr size_t kStbiAllocFloor = size_t(16) << 20;
constexpr size_t kStbiAllocPerPixel = 10;

// Rows [top, top + h) of an image; columns [left, left + w) of an image.
Image crop_rows(const Image& img, int top, int h) {
  Image out(img.width, h, img.channels);
  const size_t row = size_t(img.width) * img.channels;
  std::memcpy(out.pixels.data(), img.pixels.data() + size_t(top) * row, size_t(h) * row);
  return out;
}
Image crop_columns(const Image& img, int left, int w) {
  Image out(w, img.height, img.channels);
  const size_t in_row = size_t(img.width) * img.channels, out_row = size_t(w) * img.channels;
  for (int y = 0; y < img.height; ++y)
    std::memcpy(out.pixels.data() + y * out_row, img.pixels.data() + y * in_row + size_t(left) * img.channels,
                out_row);
  return out;
}

void append_bytes(void* context, void* data, int size) {
  auto* v = static_cast<std::vector<uint8_t>*>(context);
  auto* p = static_cast<const uint8_t*>(data);
  v->insert(v->end(), p, p + size);
}

}  // namespace

bool has_image_extension(const std::string& path) {
  std::string e = extension(path);
  return e == "jpg" || e == "jpeg" || e == "png" || e == "bmp";
}

Image convert_channels(const Image& img, int channels) {
  TTQ_CHECK(channels == 1 || channels == 3) << "convert_channels: channels must be 1 or 3, got " << channels;
  TTQ_CHECK(img.channels == 1 || img.channels == 3)
      << "convert_channels: image has " << img.channels << " channels";
  if (img.channels == channels) return img;
  Image out(img.width, img.height, channels);
  size_t n = size_t(img.width) * img.height;
  const uint8_t* s = img.pixels.data();
  uint8_t* d = out.pixels.data();
  if (channels == 3) {
    for (size_t i = 0; i < n; ++i) d[3 * i] = d[3 * i + 1] = d[3 * i + 2] = s[i];
  } else {
    for (size_t i = 0; i < n; ++i) d[i] = rgb_to_l(s[3 * i], s[3 * i + 1], s[3 * i + 2]);
  }
  return out;
}

DecodeResult decode_image(const uint8_t* data, size_t size, int channels, Image* out, int64_t max_pixels) {
  TTQ_CHECK(channels == 1 || channels == 3) << "decode_image: channels must be 1 or 3, got " << channels;
  TTQ_CHECK(out != nullptr) << "decode_image: null output";
  if (size == 0) return {false, "empty file"};
  if (size > size_t(INT32_MAX)) return {false, "file too large"};
  if (const size_t start = jpeg_start(data, size); start != 0) {
    if (std::string why = jpeg_problem(data, size, start); !why.empty()) return {false, why};
  }
  if (is_png(data, size)) {
    if (std::string why = png_problem(data, size); !why.empty()) return {false, why};
  }
  if (size >= 6 && data[0] == 'B' && data[1] == 'M') {
    const uint64_t declared = std::max<uint64_t>(read_le32(data + 2), bmp_bytes_needed(data, size));
    if (declared > size) {
      return {false,
              "truncated BMP (" + std::to_string(size) + " of " + std::to_string(declared) + " bytes)"};
    }
  }
  // The size the header declares, checked before any pixel is decoded.
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(data, static_cast<int>(size), &w, &h, &comp)) {
    const char* why = stbi_failure_reason();
    return {false, std::string("cannot decode: ") + (why ? why : "unknown error")};
  }
  max_pixels = std::min(max_pixels, kMaxImagePixels);
  if (w > kMaxImageSide || h > kMaxImageSide || int64_t(w) * h > max_pixels) {
    const std::string limit =
        max_pixels % (1 << 20) == 0 ? std::to_string(max_pixels >> 20) + " M" : std::to_string(max_pixels);
    return {false, "image too large: " + std::to_string(w) + "x" + std::to_string(h) + " (at most " + limit +
                       " pixels and " + std::to_string(kMaxImageSide) + " pixels a side)"};
  }
  const int header_w = w, header_h = h;
  // The largest buffer stb needs is about 8 bytes a pixel (16-bit RGBA PNG data
  // before conversion), plus padding to JPEG blocks for tiny images.
  g_stbi_alloc_budget = kStbiAllocFloor + kStbiAllocPerPixel * size_t(w) * size_t(h);
  uint8_t* px = stbi_load_from_memory(data, static_cast<int>(size), &w, &h, &comp, 0);
  g_stbi_alloc_budget = SIZE_MAX;
  if (px == nullptr) {
    const char* why = stbi_failure_reason();
    if (why != nullptr && std::string(why) == "outofmem") {
      return {false, "cannot decode: more data than a " + std::to_string(header_w) + "x" +
                         std::to_string(header_h) + " image holds (corrupt or a decompression bomb)"};
    }
    return {false, std::string("cannot decode: ") + (why ? why : "unknown error")};
  }
  if (w <= 0 || h <= 0 || w != header_w || h != header_h || comp < 1 || comp > 4) {
    stbi_image_free(px);
    return {false, "cannot decode: bad dimensions"};
  }
  // Native layout -> 1 or 3 channels, alpha dropped (PIL's convert does the same).
  Image native(w, h, comp >= 3 ? 3 : 1);
  size_t n = size_t(w) * h;
  for (size_t i = 0; i < n; ++i) {
    for (int c = 0; c < native.channels; ++c) native.pixels[i * native.channels + c] = px[i * comp + c];
  }
  stbi_image_free(px);
  *out = convert_channels(native, channels);
  return {true, ""};
}

DecodeResult decode_image_file(const std::string& path, int channels, Image* out) {
  std::vector<uint8_t> bytes;
  std::string error;
  if (!io::read_regular_file(path, kMaxImageFileBytes, &bytes, &error)) return {false, error};
  return decode_image(bytes.data(), bytes.size(), channels, out);
}

ImageInfo probe_image_file(const std::string& path) {
  ImageInfo info;
  std::vector<uint8_t> bytes;
  if (!io::read_regular_file(path, kMaxImageFileBytes, &bytes, &info.error)) return info;
  if (!stbi_info_from_memory(bytes.data(), static_cast<int>(bytes.size()), &info.width, &info.height,
                             &info.channels)) {
    const char* why = stbi_failure_reason();
    info.error = std::string("cannot decode: ") + (why ? why : "unknown error");
    return info;
  }
  info.ok = true;
  return info;
}

Image resize(const Image& img, int w, int h) {
  TTQ_CHECK(w > 0 && h > 0 && !img.empty())
      << "resize: bad sizes " << img.width << "x" << img.height << " -> " << w << "x" << h;
  if (w == img.width && h == img.height) return img;
  Image out(w, h, img.channels);
  int ok = stbir_resize_uint8_generic(img.pixels.data(), img.width, img.height, 0, out.pixels.data(), w, h, 0,
                                      img.channels, STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_CLAMP,
                                      STBIR_FILTER_TRIANGLE, STBIR_COLORSPACE_LINEAR, nullptr);
  TTQ_CHECK(ok) << "resize: stb_image_resize failed";
  return out;
}

Image resize_cover(const Image& img, int size) {
  TTQ_CHECK(size > 0 && !img.empty()) << "resize_cover: bad size " << size;
  if (img.width == size && img.height == size) return img;
  // A 1 x 16384 image scaled to a 64-pixel width would be 64 x 1 M: cut it first.
  if (img.height > int64_t(kMaxCoverAspect) * img.width) {
    const int h = kMaxCoverAspect * img.width;
    return resize_cover(crop_rows(img, (img.height - h) / 2, h), size);
  }
  if (img.width > int64_t(kMaxCoverAspect) * img.height) {
    const int w = kMaxCoverAspect * img.height;
    return resize_cover(crop_columns(img, (img.width - w) / 2, w), size);
  }
  double scale = double(size) / std::min(img.width, img.height);
  int w = std::max(size, static_cast<int>(std::lround(img.width * scale)));
  int h = std::max(size, static_cast<int>(std::lround(img.height * scale)));
  Image scaled = resize(img, w, h);
  // Centre as torchvision's CenterCrop does: Python's round((w - size) / 2), halves to even.
  int left = static_cast<int>(std::nearbyint((w - size) / 2.0));
  int top = static_cast<int>(std::nearbyint((h - size) / 2.0));
  Image out(size, size, img.channels);
  size_t row = size_t(size) * img.channels;
  for (int y = 0; y < size; ++y) {
    std::memcpy(&out.pixels[y * row], &scaled.pixels[((size_t(top) + y) * w + left) * img.channels], row);
  }
  return out;
}

std::vector<uint8_t> encode_image(const Image& img, const std::string& format, int jpeg_quality) {
  TTQ_CHECK(!img.empty() && (img.channels == 1 || img.channels == 3)) << "encode_image: empty or bad image";
  std::vector<uint8_t> bytes;
  int ok = 0;
  std::string f = lower(format);
  if (f == "png") {
    ok = stbi_write_png_to_func(append_bytes, &bytes, img.width, img.height, img.channels, img.pixels.data(),
                                img.width * img.channels);
  } else if (f == "jpg" || f == "jpeg") {
    ok = stbi_write_jpg_to_func(append_bytes, &bytes, img.width, img.height, img.channels, img.pixels.data(),
                                jpeg_quality);
  } else if (f == "bmp") {
    ok = stbi_write_bmp_to_func(append_bytes, &bytes, img.width, img.height, img.channels, img.pixels.data());
  } else {
    TTQ_THROW() << "encode_image: unknown format '" << format << "' (png, jpg, bmp)";
  }
  TTQ_CHECK(ok) << "encode_image: stb_image_write failed for " << format;
  return bytes;
}

void save_image(const std::string& path, const Image& img, int jpeg_quality) {
  std::string e = extension(path);
  TTQ_INPUT_CHECK(e == "png" || e == "jpg" || e == "jpeg" || e == "bmp")
      << path << ": unknown image extension (png, jpg, jpeg, bmp)";
  std::vector<uint8_t> bytes = encode_image(img, e, jpeg_quality);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  TTQ_INPUT_CHECK(f.good()) << path << ": cannot open for writing";
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  f.close();
  TTQ_INPUT_CHECK(f.good()) << path << ": write failed";
}

}  // namespace ttq::data
