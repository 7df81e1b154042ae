// 8-bit images and their codecs: decoding through stb_image v2.30 (a copy in
// third_party/stb; JPEG, PNG and BMP only: stb's other decoders are compiled
// out), channel conversion with PIL's
// exact rules, resizing, and encoding (PNG / JPEG / BMP through stb_image_write)
// for tests and tools.
// Tested in tests/test_data.cpp (round trips, truncation, channel rules).
//
// Size policy (who resizes, who rejects) is the datasets' (data/dataset.h):
// image folders and inference inputs are resized with resize_cover(); Tiny
// ImageNet requires 64x64 and skips any other size as a bad file.
//
// Decode limits. A few kilobytes of PNG can declare 2 billion pixels, so the
// header's size is checked before anything is decoded: an image with a side
// above kMaxImageSide or more than kMaxImagePixels pixels is refused like any
// undecodable file ("image too large: ..."). 64 M pixels (8192 x 8192) is far
// above any data set this engine trains on; files above kMaxImageFileBytes are
// not read at all. Data that would not fit the declared size (a PNG chunk
// claiming gigabytes, a zlib stream inflating far past the pixels) is refused
// too: each of stb's allocations is held to 16 MB + 10 bytes per declared pixel.
// Fuzz target: fuzz/fuzz_image.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ttq::data {

inline constexpr int64_t kMaxImagePixels = int64_t(64) << 20;  // 64 M pixels
inline constexpr int kMaxImageSide = 16384;                    // pixels, either side
inline constexpr uint64_t kMaxImageFileBytes = uint64_t(512) << 20;

// Row-major, interleaved (HWC) 8-bit image: pixel (y, x) channel c is at
// pixels[(y * width + x) * channels + c]. channels is 1 (L) or 3 (RGB).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<uint8_t> pixels;

  Image() = default;
  Image(int w, int h, int c) : width(w), height(h), channels(c), pixels(size_t(w) * h * c, 0) {}
  bool empty() const { return pixels.empty(); }
  uint8_t& at(int y, int x, int c) { return pixels[(size_t(y) * width + x) * channels + c]; }
  uint8_t at(int y, int x, int c) const { return pixels[(size_t(y) * width + x) * channels + c]; }
  bool operator==(const Image& o) const {
    return width == o.width && height == o.height && channels == o.channels && pixels == o.pixels;
  }
};

// Outcome of a decode: ok, or a one-line reason ("truncated JPEG (no end-of-image
// marker)", "not an image: unknown image type", ...).
struct DecodeResult {
  bool ok = false;
  std::string error;
  bool reported = false;  // the failure was already reported (by the data set a view reads)
};

// Decodes an encoded image held in memory into `channels` channels (1 or 3).
// Rejects (ok = false) what stb cannot decode, images beyond the decode limits
// above (checked on the header, before decoding), input stb mishandles or once
// did (JPEG Huffman tables of more than 256 codes, an empty first PNG IDAT), and
// files that stb would accept although they are cut short: a JPEG whose scans
// end without the EOI marker, a PNG chunk past the end of the file, a BMP
// shorter than its header's file size. Grayscale -> RGB replicates; RGB -> L
// uses rgb_to_l (PIL's rule); an alpha channel is dropped.
// `max_pixels` may lower the pixel limit (the fuzz target keeps decodes small).
// ensures on success: 1 <= width, height <= kMaxImageSide, width * height <= max_pixels.
DecodeResult decode_image(const uint8_t* data, size_t size, int channels, Image* out,
                          int64_t max_pixels = kMaxImagePixels);
// Reads and decodes a file; an unreadable file is a failed decode, not a throw.
// Only regular files are read (engine/io/file.h): a directory, a FIFO, a device
// or a broken symbolic link is a failed decode saying so, without blocking.
DecodeResult decode_image_file(const std::string& path, int channels, Image* out);

// A file's size and channel count from its header, without decoding the pixels
// (1: gray, 2: gray + alpha, 3: RGB, 4: RGBA; a palette PNG counts as RGB).
struct ImageInfo {
  bool ok = false;
  std::string error;
  int width = 0, height = 0, channels = 0;
};
ImageInfo probe_image_file(const std::string& path);

// PIL's convert("L"): L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, the
// fixed-point form of R*299/1000 + G*587/1000 + B*114/1000 rounded to nearest.
inline uint8_t rgb_to_l(uint8_t r, uint8_t g, uint8_t b) {
  return static_cast<uint8_t>((uint32_t(r) * 19595u + uint32_t(g) * 38470u + uint32_t(b) * 7471u + 0x8000u) >>
                              16);
}
// Converts between 1 and 3 channels (identity when equal).
Image convert_channels(const Image& img, int channels);

// Resizes to exactly w x h with a triangle filter (bilinear when enlarging,
// antialiased when shrinking), edges clamped.
Image resize(const Image& img, int w, int h);
// Scales so that the shorter side is `size` (aspect kept), then takes the
// centred size x size square: the policy for image folders and inference.
// Returns the image unchanged when it is already size x size. An image longer
// than kMaxCoverAspect times its width (or the reverse) is first cut to its
// central kMaxCoverAspect : 1 part, so that the scaled intermediate never holds
// more than kMaxCoverAspect * size^2 pixels (the square taken is the same centre;
// only the resampling grid moves by a fraction of a pixel).
inline constexpr int kMaxCoverAspect = 16;
Image resize_cover(const Image& img, int size);

// Encodes by the path's extension (.png, .jpg / .jpeg, .bmp; case-insensitive).
// Throws ttq::InputError naming the path when it cannot be written.
void save_image(const std::string& path, const Image& img, int jpeg_quality = 90);
// Encodes to memory (format "png", "jpg" or "bmp").
std::vector<uint8_t> encode_image(const Image& img, const std::string& format, int jpeg_quality = 90);

// True for the extensions image folders accept: jpg, jpeg, png, bmp (any case).
bool has_image_extension(const std::string& path);

}  // namespace ttq::data
