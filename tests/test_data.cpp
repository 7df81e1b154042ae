// Data pipeline: codecs (round trips, truncated and non-image files, pixel
// bombs, FIFOs and devices), IDX files (plain, gzipped, bad headers, gzip
// bombs), dataset layouts generated here at test time (Tiny ImageNet as shipped,
// image folders with non-file entries, one class), spec strings, the loader's
// determinism across worker counts, exact skip counts and exact mid-epoch
// resume, and the inference input API. The real Fashion-MNIST is checked when installed.
// Augmentation itself is tested in tests/test_augment.cpp.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <numeric>
#include <set>

#include "data/dataset.h"
#include "data/idx.h"
#include "data/image.h"
#include "data/loader.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ttq::data {
namespace {

// A fresh folder under the system temp dir, removed at scope end.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "ttq_data_XXXXXX").string();
    TTQ_CHECK(mkdtemp(tmpl.data()) != nullptr) << "mkdtemp failed";
    m_path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  const fs::path& path() const { return m_path; }
  std::string operator/(const std::string& s) const { return (m_path / s).string(); }

 private:
  fs::path m_path;
};

void write_bytes(const fs::path& p, const std::vector<uint8_t>& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}
void write_text(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << s;
}

// Smooth colour field with a per-image phase, so that JPEG keeps it well and
// images differ.
Image make_image(int w, int h, int c, int seed) {
  Image img(w, h, c);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < c; ++k)
        img.at(y, x, k) =
            static_cast<uint8_t>(128 + 100 * std::sin(0.11 * x * (k + 1) + 0.07 * y + seed * 0.9 + k));
  return img;
}

void write_image(const fs::path& p, const Image& img) {
  fs::create_directories(p.parent_path());
  save_image(p.string(), img, 92);
}

int mean_abs_diff(const Image& a, const Image& b) {
  long s = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) s += std::abs(int(a.pixels[i]) - int(b.pixels[i]));
  return static_cast<int>(s / long(a.pixels.size()));
}

// ---------------------------------------------------------------- codecs

TEST(ImageCodec, RoundTripsAndChannelRules) {
  TempDir dir;
  Image rgb = make_image(13, 7, 3, 1), gray = make_image(13, 7, 1, 2);
  Image out;
  for (const char* ext : {"png", "bmp"}) {
    std::string p = dir / (std::string("a.") + ext);
    save_image(p, rgb);
    ASSERT_TRUE(decode_image_file(p, 3, &out).ok) << ext;
    EXPECT_EQ(out, rgb) << ext;
  }
  save_image(dir / "g.png", gray);
  ASSERT_TRUE(decode_image_file(dir / "g.png", 1, &out).ok);
  EXPECT_EQ(out, gray);
  // Gray -> RGB replicates.
  ASSERT_TRUE(decode_image_file(dir / "g.png", 3, &out).ok);
  ASSERT_EQ(out.channels, 3);
  for (int y = 0; y < 7; ++y)
    for (int x = 0; x < 13; ++x)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(out.at(y, x, c), gray.at(y, x, 0));
  // RGB -> L with PIL's rule, checked on hand-computed values too.
  EXPECT_EQ(rgb_to_l(255, 0, 0), 76);   // 76.245
  EXPECT_EQ(rgb_to_l(0, 255, 0), 150);  // 149.685
  EXPECT_EQ(rgb_to_l(0, 0, 255), 29);   // 29.07
  EXPECT_EQ(rgb_to_l(255, 255, 255), 255);
  EXPECT_EQ(rgb_to_l(10, 200, 30), 124);  // 2.99 + 117.4 + 3.42 = 123.81
  ASSERT_TRUE(decode_image_file(dir / "a.png", 1, &out).ok);
  ASSERT_EQ(out.channels, 1);
  for (int y = 0; y < 7; ++y)
    for (int x = 0; x < 13; ++x) {
      double l = 0.299 * rgb.at(y, x, 0) + 0.587 * rgb.at(y, x, 1) + 0.114 * rgb.at(y, x, 2);
      ASSERT_NEAR(out.at(y, x, 0), l, 0.5 + 1e-3);
    }
  // JPEG is lossy: close on smooth content.
  Image big = make_image(64, 64, 3, 3);
  save_image(dir / "b.JPEG", big);
  ASSERT_TRUE(decode_image_file(dir / "b.JPEG", 3, &out).ok);
  EXPECT_LE(mean_abs_diff(out, big), 3);
}

TEST(ImageCodec, RejectsTruncatedCorruptAndNonImages) {
  TempDir dir;
  std::vector<uint8_t> jpg = encode_image(make_image(64, 64, 3, 4), "jpg", 90);
  std::vector<uint8_t> png = encode_image(make_image(64, 64, 3, 4), "png");
  std::vector<uint8_t> bmp = encode_image(make_image(64, 64, 3, 4), "bmp");
  Image out;
  EXPECT_TRUE(decode_image(jpg.data(), jpg.size(), 3, &out).ok);
  auto rejects = [&](std::vector<uint8_t> bytes, const char* what) {
    DecodeResult r = decode_image(bytes.data(), bytes.size(), 3, &out);
    EXPECT_FALSE(r.ok) << what;
    EXPECT_FALSE(r.error.empty()) << what;
    return r.error;
  };
  EXPECT_NE(rejects({jpg.begin(), jpg.begin() + jpg.size() / 2}, "half JPEG").find("truncated"),
            std::string::npos);
  rejects({jpg.begin(), jpg.end() - 2}, "JPEG without EOI");
  rejects({png.begin(), png.begin() + png.size() / 2}, "half PNG");
  EXPECT_NE(rejects({bmp.begin(), bmp.begin() + bmp.size() - 100}, "short BMP").find("truncated"),
            std::string::npos);
  // A BMP whose header claims a small file but whose rows need more (stb would read
  // the missing pixels as zeros: 64 x 1064 from a few hundred bytes).
  std::vector<uint8_t> tall_bmp = bmp;
  tall_bmp[22] = 0x28;  // height 64 -> 0x428 = 1064
  tall_bmp[23] = 0x04;
  EXPECT_NE(rejects(tall_bmp, "BMP rows past the end").find("truncated BMP"), std::string::npos);
  std::string text = "this is a text file, not an image\n";
  rejects({text.begin(), text.end()}, "text");
  rejects({}, "empty");
  Generator g(5);
  std::vector<uint8_t> noise(3000);
  for (auto& b : noise) b = static_cast<uint8_t>(g.below(256));
  rejects(noise, "noise");
  // A JPEG header followed by garbage.
  std::vector<uint8_t> bad(jpg.begin(), jpg.begin() + 200);
  bad.insert(bad.end(), noise.begin(), noise.end());
  rejects(bad, "JPEG header + noise");
  EXPECT_NE(decode_image_file(dir / "missing.png", 3, &out).error.find("cannot open"), std::string::npos);
}

// A PNG whose IHDR declares w x h (the CRC recomputed), around a 2x2 image's data.
std::vector<uint8_t> png_declaring(uint32_t w, uint32_t h) {
  std::vector<uint8_t> png = encode_image(make_image(2, 2, 1, 1), "png");
  // Signature (8), IHDR length (4), "IHDR" (4), width (4), height (4), ..., CRC over type + data.
  for (int k = 0; k < 4; ++k) {
    png[16 + k] = static_cast<uint8_t>(w >> (24 - 8 * k));
    png[20 + k] = static_cast<uint8_t>(h >> (24 - 8 * k));
  }
  const uint32_t crc = static_cast<uint32_t>(crc32(0, png.data() + 12, 17));
  for (int k = 0; k < 4; ++k) png[29 + k] = static_cast<uint8_t>(crc >> (24 - 8 * k));
  return png;
}

// The size a header declares is checked before anything is decoded: a real
// 1 x 2,000,000 PNG of some kilobytes (2.6 GB when decoded and resized without
// the check), and headers declaring more pixels or longer sides than the limits.
TEST(ImageCodec, PixelBombsAreRefusedBeforeDecoding) {
  Image out;
  std::vector<uint8_t> tall = encode_image(Image(1, 2000000, 1), "png");
  EXPECT_LT(tall.size(), 100000u);
  DecodeResult r = decode_image(tall.data(), tall.size(), 3, &out);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("image too large: 1x2000000"), std::string::npos) << r.error;
  for (auto [w, h] : std::vector<std::pair<uint32_t, uint32_t>>{{8200, 8200}, {20000, 20}, {20, 16385}}) {
    std::vector<uint8_t> png = png_declaring(w, h);
    r = decode_image(png.data(), png.size(), 3, &out);
    EXPECT_FALSE(r.ok) << w << "x" << h;
    EXPECT_NE(r.error.find("image too large"), std::string::npos) << w << "x" << h << ": " << r.error;
  }
  // At the limits the header passes (the data, a 2x2 image's, then fails to decode).
  std::vector<uint8_t> edge = png_declaring(8192, 8192);
  r = decode_image(edge.data(), edge.size(), 3, &out);
  EXPECT_EQ(r.error.find("too large"), std::string::npos) << r.error;
  EXPECT_EQ(int64_t(8192) * 8192, kMaxImagePixels);
}

// A PNG of `w` x `h` gray pixels whose IDAT chunk holds `idat` and declares `declared` bytes.
std::vector<uint8_t> png_with_idat(uint32_t w, uint32_t h, const std::vector<uint8_t>& idat,
                                   uint32_t declared) {
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  auto chunk = [&](const char* type, const std::vector<uint8_t>& body, uint32_t length) {
    for (int k = 24; k >= 0; k -= 8) png.push_back(static_cast<uint8_t>(length >> k));
    std::vector<uint8_t> typed(type, type + 4);
    typed.insert(typed.end(), body.begin(), body.end());
    png.insert(png.end(), typed.begin(), typed.end());
    const uint32_t crc = static_cast<uint32_t>(crc32(0, typed.data(), static_cast<uInt>(typed.size())));
    for (int k = 24; k >= 0; k -= 8) png.push_back(static_cast<uint8_t>(crc >> k));
  };
  std::vector<uint8_t> ihdr;
  for (uint32_t v : {w, h})
    for (int k = 24; k >= 0; k -= 8) ihdr.push_back(static_cast<uint8_t>(v >> k));
  ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});  // 8-bit gray, no interlace
  chunk("IHDR", ihdr, 13);
  chunk("IDAT", idat, declared);
  chunk("IEND", {}, 0);
  return png;
}

// Decompression bombs inside a PNG: a chunk declaring 2 GB behind a few bytes
// (refused by the chunk walk), and a zlib stream inflating to 64 MB behind a 1x1
// header (refused by stb's allocation budget). stb would allocate both.
TEST(ImageCodec, PngDataBeyondItsDeclaredSizeIsRefused) {
  Image out;
  const std::vector<uint8_t> row = {0, 7, 7, 7, 7};  // filter byte + 4 pixels
  std::vector<uint8_t> rows;
  for (int y = 0; y < 3; ++y) rows.insert(rows.end(), row.begin(), row.end());
  std::vector<uint8_t> z(compressBound(static_cast<uLong>(rows.size())));
  uLongf zn = static_cast<uLongf>(z.size());
  ASSERT_EQ(compress(z.data(), &zn, rows.data(), static_cast<uLong>(rows.size())), Z_OK);
  z.resize(zn);
  std::vector<uint8_t> good = png_with_idat(4, 3, z, static_cast<uint32_t>(z.size()));
  ASSERT_TRUE(decode_image(good.data(), good.size(), 1, &out).ok)
      << decode_image(good.data(), good.size(), 1, &out).error;
  EXPECT_EQ(out.at(2, 3, 0), 7);

  std::vector<uint8_t> long_chunk = png_with_idat(4, 3, z, 0x7ffffff0u);
  DecodeResult r = decode_image(long_chunk.data(), long_chunk.size(), 1, &out);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "truncated or corrupt PNG (a chunk runs past the end)");
  // An empty IDAT before any image data (stb would copy to a null buffer).
  std::vector<uint8_t> empty_first = png_with_idat(4, 3, {}, 0);
  r = decode_image(empty_first.data(), empty_first.size(), 1, &out);
  EXPECT_EQ(r.error, "corrupt PNG (empty image data chunk)");

  std::vector<uint8_t> zeros(64 << 20, 0);
  std::vector<uint8_t> bomb(compressBound(static_cast<uLong>(zeros.size())));
  uLongf bn = static_cast<uLongf>(bomb.size());
  ASSERT_EQ(compress2(bomb.data(), &bn, zeros.data(), static_cast<uLong>(zeros.size()), 9), Z_OK);
  bomb.resize(bn);
  std::vector<uint8_t> png = png_with_idat(1, 1, bomb, static_cast<uint32_t>(bomb.size()));
  EXPECT_LT(png.size(), 100000u);
  r = decode_image(png.data(), png.size(), 1, &out);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("more data than a 1x1 image holds"), std::string::npos) << r.error;
}

// A JPEG Huffman table declaring more than 256 codes made stb before 2.28 write
// past its tables (found by fuzz/fuzz_image.cpp): refused before stb sees it.
TEST(ImageCodec, JpegWithAnOversizedHuffmanTableIsRefused) {
  std::vector<uint8_t> jpg = encode_image(make_image(16, 16, 3, 2), "jpg", 80);
  size_t dht = 0;
  for (size_t i = 2; i + 1 < jpg.size(); ++i)
    if (jpg[i] == 0xFF && jpg[i + 1] == 0xC4) {
      dht = i;
      break;
    }
  ASSERT_NE(dht, 0u);
  Image out;
  ASSERT_TRUE(decode_image(jpg.data(), jpg.size(), 3, &out).ok);
  for (int k = 0; k < 16; ++k) jpg[dht + 5 + k] = 17;  // 16 x 17 = 272 codes
  DecodeResult r = decode_image(jpg.data(), jpg.size(), 3, &out);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "corrupt JPEG (bad Huffman table)");
  // stb takes fill bytes (0xFF) before the start-of-image marker: the check does too.
  jpg.insert(jpg.begin(), 5, 0xFF);
  r = decode_image(jpg.data(), jpg.size(), 3, &out);
  EXPECT_EQ(r.error, "corrupt JPEG (bad Huffman table)");
}

// Only regular files are read: a FIFO, a device, a folder or a broken link is a
// failed decode saying so, and a FIFO does not block the reader.
TEST(ImageCodec, NonFilesAreFailedDecodesWithoutReading) {
  TempDir dir;
  const std::string fifo = dir / "p.png", link = dir / "gone.png";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  fs::create_symlink(dir / "nowhere", link);
  fs::create_directories(dir / "d.png");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {fifo, "not a regular file (a FIFO)"},
      {"/dev/zero", "not a regular file (a character device)"},
      {dir / "d.png", "not a regular file (a directory)"},
      {link, "broken symbolic link"},
      {dir / "absent.png", "cannot open: no such file"},
  };
  for (const auto& [path, reason] : cases) {
    auto result = std::async(std::launch::async, [&] {
      Image out;
      return decode_image_file(path, 3, &out);
    });
    if (result.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
      const int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);  // gives the blocked reader an end of file
      if (w >= 0) ::close(w);
      ADD_FAILURE() << path << ": the reader blocked";
    }
    DecodeResult r = result.get();
    EXPECT_FALSE(r.ok) << path;
    EXPECT_EQ(r.error, reason) << path;
  }
}

TEST(ImageCodec, ResizeCoverKeepsAspectAndCentres) {
  Image same = make_image(64, 64, 3, 6);
  EXPECT_EQ(resize_cover(same, 64), same);
  // 128x64, dark left half / bright right half -> 128x64 -> centre 64 square:
  // columns 32..95 of the source, so the left half of the result is dark.
  Image halves(128, 64, 1);
  for (int y = 0; y < 64; ++y)
    for (int x = 64; x < 128; ++x) halves.at(y, x, 0) = 200;
  Image r = resize_cover(halves, 64);
  ASSERT_EQ(r.width, 64);
  ASSERT_EQ(r.height, 64);
  EXPECT_EQ(r.at(10, 0, 0), 0);
  EXPECT_EQ(r.at(10, 30, 0), 0);
  EXPECT_EQ(r.at(10, 34, 0), 200);
  EXPECT_EQ(r.at(10, 63, 0), 200);
  // An image longer than kMaxCoverAspect : 1 is first cut to its central part of
  // that aspect: the result is the cover of that part (a 3 x 3000 image scaled to
  // a width of 64 would otherwise be 64 x 64000).
  Image stripe = make_image(3, 3000, 3, 7);
  const int keep = 3 * kMaxCoverAspect;
  EXPECT_EQ(resize_cover(stripe, 64), resize_cover(crop(stripe, (3000 - keep) / 2, 0, keep, 3), 64));
  Image band = make_image(5000, 2, 1, 8);
  EXPECT_EQ(resize_cover(band, 28), resize_cover(crop(band, 0, (5000 - 32) / 2, 2, 32), 28));
  EXPECT_EQ(resize_cover(band, 28).width, 28);
  // A flat image stays flat at any scale.
  Image flat(100, 80, 3);
  std::fill(flat.pixels.begin(), flat.pixels.end(), 77);
  for (int s : {28, 64, 150}) {
    Image f = resize_cover(flat, s);
    EXPECT_EQ(f.width, s);
    EXPECT_TRUE(std::all_of(f.pixels.begin(), f.pixels.end(), [](uint8_t v) { return v == 77; })) << s;
  }
}

// ---------------------------------------------------------------- IDX

TEST(Idx, PlainAndGzippedRoundTrip) {
  TempDir dir;
  std::vector<uint8_t> data(5 * 3 * 4);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  for (bool gz : {false, true}) {
    std::string p = dir / (gz ? "x.gz" : "x");
    write_idx(p, {5, 3, 4}, data, gz);
    IdxArray a = read_idx(p, 3);
    EXPECT_EQ(a.dims, (std::vector<int64_t>{5, 3, 4}));
    EXPECT_EQ(a.data, data);
  }
  // The gzipped file really is gzip, and the plain one is not.
  std::ifstream f(dir / "x.gz", std::ios::binary);
  EXPECT_EQ(f.get(), 0x1f);
  EXPECT_EQ(f.get(), 0x8b);
  EXPECT_EQ(fs::file_size(dir / "x"), 4u + 12u + data.size());
}

TEST(Idx, BadHeadersNameThePath) {
  TempDir dir;
  auto write = [&](const std::string& name, std::vector<uint8_t> bytes) {
    write_bytes(dir.path() / name, bytes);
    return dir / name;
  };
  // 2 images of 2x2.
  std::vector<uint8_t> good = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_EQ(read_idx(write("good", good)).data.size(), 8u);
  std::vector<uint8_t> b = good;
  b[0] = 1;
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(write("magic", b)), dir / "magic");
  b = good;
  b[2] = 0x0D;  // float elements
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(write("type", b)), "element type");
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(write("dims", good), 1), "3 dimensions, expected 1");
  b = good;
  b.pop_back();
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(write("short", b)), "header says 8");
  b = good;
  b.push_back(0);
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(write("long", b)), dir / "long");
  b = good;
  b[7] = 0;  // a zero dimension
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(write("zero", b)), "is 0");
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(write("tiny", {0, 0})), dir / "tiny");
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(dir / "absent"), "cannot open");
  // A gzip stream cut in the middle.
  std::vector<uint8_t> big(20000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  write_idx(dir / "cut.gz", {20, 1000}, big, true);
  auto size = fs::file_size(dir / "cut.gz");
  fs::resize_file(dir / "cut.gz", size / 2);
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(dir / "cut.gz"), dir / "cut.gz");
}

// gzip bytes of `parts`, each its own gzip member (one member when there is one part).
std::vector<uint8_t> gzip_members(const std::vector<std::vector<uint8_t>>& parts) {
  std::vector<uint8_t> out;
  for (const auto& p : parts) {
    z_stream zs{};
    EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    std::vector<uint8_t> buf(deflateBound(&zs, p.size()));
    zs.next_in = const_cast<Bytef*>(p.data());
    zs.avail_in = static_cast<uInt>(p.size());
    zs.next_out = buf.data();
    zs.avail_out = static_cast<uInt>(buf.size());
    EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
    out.insert(out.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(zs.total_out));
    deflateEnd(&zs);
  }
  return out;
}

std::vector<uint8_t> idx_header(const std::vector<uint32_t>& dims) {
  std::vector<uint8_t> h = {0, 0, 8, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims)
    for (int s = 24; s >= 0; s -= 8) h.push_back(static_cast<uint8_t>(d >> s));
  return h;
}

// A gzipped file is inflated header first, then exactly the promised bytes: a
// stream with 64 MB more than its header says is refused after inflating one
// byte past the data, not after inflating it all; a header promising more than
// the stream can hold or more than kMaxIdxBytes is refused before any allocation.
TEST(Idx, GzipIsInflatedOnlyAsFarAsTheHeaderPromises) {
  std::vector<uint8_t> body = idx_header({1, 28, 28});
  body.resize(body.size() + 784 + (64 << 20), 0);
  std::vector<uint8_t> bomb = gzip_members({body});
  EXPECT_LT(bomb.size(), 200000u);
  EXPECT_INPUT_ERROR_MENTIONS(parse_idx(bomb.data(), bomb.size(), "bomb.gz", 3),
                              "bomb.gz: IDX data is longer than the 784 bytes its header says");
  std::vector<uint8_t> liar = gzip_members({idx_header({1000, 1000, 1000})});
  EXPECT_INPUT_ERROR_MENTIONS(parse_idx(liar.data(), liar.size(), "liar.gz"),
                              "liar.gz: IDX header promises 1000000000 bytes, more than a gzip stream of");
  std::vector<uint8_t> huge = idx_header({65536, 65536});
  EXPECT_INPUT_ERROR_MENTIONS(parse_idx(huge.data(), huge.size(), "huge"),
                              "huge: IDX header promises more than");
  std::vector<uint8_t> huge_gz = gzip_members({huge});
  EXPECT_INPUT_ERROR_MENTIONS(parse_idx(huge_gz.data(), huge_gz.size(), "huge.gz"), "(the limit)");

  // Two members (header, then data) are one stream; bytes after the last member are not.
  std::vector<uint8_t> data(6 * 4);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i);
  std::vector<uint8_t> two = gzip_members({idx_header({6, 4}), data});
  IdxArray a = parse_idx(two.data(), two.size(), "two.gz", 2);
  EXPECT_EQ(a.dims, (std::vector<int64_t>{6, 4}));
  EXPECT_EQ(a.data, data);
  two.push_back(0);
  EXPECT_INPUT_ERROR_MENTIONS(parse_idx(two.data(), two.size(), "trail.gz"), "trail.gz: 1 trailing bytes");
  std::vector<uint8_t> cut = gzip_members({idx_header({6, 4}), data});
  cut.resize(cut.size() - 4);  // no ISIZE: the data is there but the stream is not complete
  EXPECT_INPUT_ERROR_MENTIONS(parse_idx(cut.data(), cut.size(), "cut.gz"), "cut.gz: corrupt gzip stream");
}

// Non-files are refused by type, before anything is read.
TEST(Idx, NonFilesAreRefused) {
  TempDir dir;
  ASSERT_EQ(::mkfifo((dir / "pipe").c_str(), 0600), 0);
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(dir / "pipe"), dir / "pipe" + ": not a regular file (a FIFO)");
  EXPECT_INPUT_ERROR_MENTIONS(read_idx("/dev/zero"), "/dev/zero: not a regular file (a character device)");
  EXPECT_INPUT_ERROR_MENTIONS(read_idx(dir.path().string()), "not a regular file (a directory)");
}

TEST(Idx, DatasetChecksCountsAndLabels) {
  TempDir dir;
  std::vector<uint8_t> px(6 * 28 * 28, 9);
  write_idx(dir / "img", {6, 28, 28}, px, true);
  write_idx(dir / "lab", {6}, {0, 1, 2, 3, 4, 9}, false);
  write_idx(dir / "lab5", {5}, {0, 1, 2, 3, 4}, false);
  write_idx(dir / "lab_bad", {6}, {0, 1, 2, 10, 4, 5}, false);
  IdxDataset ds(dir / "img", dir / "lab", mnist_classes());
  EXPECT_EQ(ds.size(), 6);
  EXPECT_EQ(ds.label(5), 9);
  EXPECT_EQ(ds.image_size(), 28);
  EXPECT_EQ(ds.channels(), 1);
  EXPECT_INPUT_ERROR_MENTIONS(IdxDataset(dir / "img", dir / "lab5", mnist_classes()), "5 labels");
  EXPECT_INPUT_ERROR_MENTIONS(IdxDataset(dir / "img", dir / "lab_bad", mnist_classes()), dir / "lab_bad");
  EXPECT_INPUT_ERROR_MENTIONS(IdxDataset(dir / "lab", dir / "lab", mnist_classes()),
                              "1 dimensions, expected 3");
  // The data sets' image size is 28x28: any other is refused when opening.
  write_idx(dir / "img10", {6, 10, 10}, std::vector<uint8_t>(600, 1), false);
  EXPECT_INPUT_ERROR_MENTIONS(IdxDataset(dir / "img10", dir / "lab", mnist_classes()),
                              dir / "img10" + ": images are 10x10, expected 28x28");
  write_idx(dir / "img_rect", {6, 28, 30}, std::vector<uint8_t>(6 * 28 * 30, 1), false);
  EXPECT_INPUT_ERROR_MENTIONS(IdxDataset(dir / "img_rect", dir / "lab", mnist_classes()), "28x30");
}

TEST(FashionMnist, RealDataFromTheDebianPackage) {
  if (!fs::exists(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz") &&
      !fs::exists(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte")) {
    GTEST_SKIP() << "dataset-fashion-mnist not installed at " << kFashionMnistDir;
  }
  Splits s = open_data(parse_data_spec("fashion-mnist"));
  // t10k is the test split; 5000 validation images (the default: 10%, at most
  // 5000) are held out of the 60000 training images, 500 of each class.
  ASSERT_EQ(s.train->size(), 55000);
  ASSERT_EQ(s.val->size(), 5000);
  ASSERT_EQ(s.test->size(), 10000);
  ASSERT_EQ(s.all->size(), 70000);
  EXPECT_EQ(s.val_size, 5000);
  EXPECT_EQ(s.train->image_size(), 28);
  EXPECT_EQ(s.train->class_names()[9], "Ankle boot");
  std::vector<int64_t> htrain(10, 0), hval(10, 0), htest(10, 0);
  for (int64_t i = 0; i < s.train->size(); ++i) htrain[s.train->label(i)]++;
  for (int64_t i = 0; i < s.val->size(); ++i) hval[s.val->label(i)]++;
  for (int64_t i = 0; i < s.test->size(); ++i) htest[s.test->label(i)]++;
  EXPECT_EQ(htrain, std::vector<int64_t>(10, 5500));
  EXPECT_EQ(hval, std::vector<int64_t>(10, 500));
  EXPECT_EQ(htest, std::vector<int64_t>(10, 1000));
  EXPECT_NE(s.test->item_name(0).find("t10k-images"), std::string::npos) << s.test->item_name(0);
  EXPECT_NE(s.val->item_name(0).find("train-images"), std::string::npos) << s.val->item_name(0);
  // Images are not blank, and the first item of both files is an ankle boot (label 9).
  Image img;
  for (const auto& d : {s.all, s.test}) {
    ASSERT_TRUE(d->load(0, &img));
    EXPECT_EQ(d->label(0), 9);
    EXPECT_GT(*std::max_element(img.pixels.begin(), img.pixels.end()), 200);
  }
}

// ---------------------------------------------------------------- splits

// `n` images per class (8x8 gray IDX-like data in memory is not needed: labels
// are all a split looks at), as a SubsetDataset-friendly base.
class LabelsOnly : public Dataset {
 public:
  explicit LabelsOnly(std::vector<int64_t> per_class) {
    for (size_t c = 0; c < per_class.size(); ++c) {
      std::string name = "c";
      name += std::to_string(c);  // (not "c" + ...: a false -Wrestrict in GCC 12)
      m_class_names.push_back(name);
      for (int64_t k = 0; k < per_class[c]; ++k) m_labels.push_back(static_cast<int64_t>(c));
    }
    // Classes interleaved, so that index order says nothing about the class.
    Generator g(5);
    for (int64_t i = static_cast<int64_t>(m_labels.size()) - 1; i > 0; --i)
      std::swap(m_labels[i], m_labels[g.below(static_cast<uint64_t>(i + 1))]);
    m_class_descriptions = m_class_names;
  }
  int64_t size() const override { return static_cast<int64_t>(m_labels.size()); }
  int64_t label(int64_t i) const override { return m_labels[i]; }
  std::string item_name(int64_t i) const override { return "item" + std::to_string(i); }

 protected:
  DecodeResult decode(int64_t, Image* out) const override {
    *out = Image(1, 1, 1);
    return {true, ""};
  }

 private:
  std::vector<int64_t> m_labels;
};

std::vector<int64_t> indices_of(const std::shared_ptr<const Dataset>& d) {
  auto sub = std::dynamic_pointer_cast<const SubsetDataset>(d);
  EXPECT_TRUE(sub != nullptr);
  return sub ? sub->indices() : std::vector<int64_t>{};
}

std::vector<int64_t> per_class(const Dataset& d) {
  std::vector<int64_t> h(static_cast<size_t>(d.num_classes()), 0);
  for (int64_t i = 0; i < d.size(); ++i) h[d.label(i)]++;
  return h;
}

TEST(Splits, HoldOutIsStratifiedDisjointSeededAndComplete) {
  auto base = std::make_shared<LabelsOnly>(std::vector<int64_t>{50, 30, 20, 1});
  auto [train, val] = hold_out(base, 10, 0);
  // Shares of 10 over 101 images: 4.95, 2.97, 1.98, 0.099 -> floors 4, 2, 1, 0 and
  // the three left go by largest remainder to classes 2, 1, 0.
  EXPECT_EQ(per_class(*val), (std::vector<int64_t>{5, 3, 2, 0}));
  EXPECT_EQ(per_class(*train), (std::vector<int64_t>{45, 27, 18, 1}));
  std::vector<int64_t> a = indices_of(train), b = indices_of(val), both;
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_TRUE(std::is_sorted(b.begin(), b.end()));
  both = a;
  both.insert(both.end(), b.begin(), b.end());
  std::sort(both.begin(), both.end());
  std::vector<int64_t> every(101);
  for (int64_t i = 0; i < 101; ++i) every[i] = i;
  EXPECT_EQ(both, every);  // a partition: nothing lost, nothing in both
  // The same seed gives the same split; another seed another one.
  EXPECT_EQ(indices_of(hold_out(base, 10, 0).second), b);
  EXPECT_NE(indices_of(hold_out(base, 10, 1).second), b);
  // Almost everything held out: each class keeps one training image.
  auto [t2, v2] = hold_out(base, 97, 0);
  EXPECT_EQ(per_class(*t2), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(v2->size(), 97);
}

TEST(Splits, ValSizeDefaultsAndRange) {
  EXPECT_EQ(resolve_val_size(-1, 60000), 5000);  // 10%, at most 5000
  EXPECT_EQ(resolve_val_size(-1, 300), 30);
  EXPECT_EQ(resolve_val_size(-1, 5), 1);
  EXPECT_EQ(resolve_val_size(7, 300), 7);
  EXPECT_INPUT_ERROR_MENTIONS(resolve_val_size(0, 300), "--val-size");
  EXPECT_INPUT_ERROR_MENTIONS(resolve_val_size(300, 300), "[1, 299]");
  EXPECT_INPUT_ERROR_MENTIONS(resolve_val_size(-1, 1), "too few");
}

TEST(Splits, ViewsReportAnUnusableItemOnceAndCountIt) {
  TempDir dir;
  for (int k = 0; k < 6; ++k)
    write_image(dir.path() / "a" / (std::to_string(k) + ".png"), make_image(8, 8, 3, k));
  for (int k = 0; k < 6; ++k)
    write_image(dir.path() / "b" / (std::to_string(k) + ".png"), make_image(8, 8, 3, k));
  write_text(dir.path() / "a" / "bad.png", "not a png\n");
  auto base = open_image_folder(dir.path().string(), 8);
  std::vector<int64_t> all(static_cast<size_t>(base->size()));
  for (int64_t i = 0; i < base->size(); ++i) all[i] = i;
  auto view = std::make_shared<SubsetDataset>(base, all);
  auto cat = std::make_shared<ConcatDataset>(std::vector<std::shared_ptr<const Dataset>>{view, base});
  testing::internal::CaptureStderr();
  Image img;
  int ok = 0;
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t i = 0; i < cat->size(); ++i) ok += cat->load(i, &img);
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(ok, 2 * 2 * 12);
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;  // once, by the data set that owns the file
  EXPECT_NE(log.find("bad.png"), std::string::npos) << log;
  EXPECT_EQ(base->bad_item_count(), 1);
  EXPECT_EQ(view->bad_item_count(), 1);
  EXPECT_EQ(cat->bad_item_count(), 2);  // the same file twice in the concatenation
}

// ---------------------------------------------------------------- Tiny ImageNet

// A Tiny-ImageNet-layout tree: wnids.txt listed out of order, words.txt for two
// of the three classes, <wnid>_boxes.txt files, 64x64 JPEGs, and planted bad
// files: a corrupt JPEG, a truncated JPEG, a text file named .JPEG, a .txt file
// in an images folder, and a 32x32 validation image.
struct TinyTree {
  TempDir dir;
  std::map<std::string, int> counts = {{"n01", 5}, {"n02", 4}, {"n03", 6}};
  std::vector<std::string> bad_train, bad_val;
  std::vector<std::pair<std::string, std::string>> val;  // file, wnid

  TinyTree() {
    fs::path root = dir.path();
    write_text(root / "wnids.txt", "n03\nn01\nn02\n");
    write_text(root / "words.txt", "n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\tsalamander\n");
    int seed = 0;
    for (auto& [wnid, n] : counts) {
      write_text(root / "train" / wnid / (wnid + "_boxes.txt"), "box lines\n");
      for (int k = 0; k < n; ++k)
        write_image(
            root / "train" / wnid / "images" / (wnid + "_" + std::to_string(k) + ".JPEG"),
            make_image(64, 64, k % 3 == 2 ? 1 : 3, ++seed));  // some grayscale JPEGs, as in the real set
    }
    Generator g(11);
    std::vector<uint8_t> noise(2000);
    for (auto& b : noise) b = static_cast<uint8_t>(g.below(256));
    fs::path corrupt = root / "train" / "n02" / "images" / "n02_corrupt.JPEG";
    write_bytes(corrupt, noise);
    std::vector<uint8_t> jpg = encode_image(make_image(64, 64, 3, 99), "jpg", 90);
    fs::path cut = root / "train" / "n01" / "images" / "n01_cut.JPEG";
    write_bytes(cut, {jpg.begin(), jpg.begin() + jpg.size() * 2 / 3});
    fs::path text = root / "train" / "n03" / "images" / "n03_text.JPEG";
    write_text(text, "not an image\n");
    write_text(root / "train" / "n03" / "images" / "notes.txt", "stray notes\n");
    bad_train = {corrupt.string(), cut.string(), text.string()};

    std::string ann;
    const char* wnids[] = {"n02", "n01", "n03", "n02", "n01", "n03"};
    for (int k = 0; k < 6; ++k) {
      std::string file = "val_" + std::to_string(k) + ".JPEG";
      write_image(root / "val" / "images" / file, make_image(k == 4 ? 32 : 64, k == 4 ? 32 : 64, 3, 50 + k));
      ann += file + "\t" + wnids[k] + "\t0\t0\t63\t63\n";
      val.push_back({file, wnids[k]});
    }
    write_text(root / "val" / "val_annotations.txt", ann);
    bad_val = {(root / "val" / "images" / "val_4.JPEG").string()};
  }
  std::string root() const { return dir.path().string(); }
};

TEST(TinyImageNet, ClassesLabelsCountsAndAnnotations) {
  TinyTree t;
  testing::internal::CaptureStderr();
  Splits s = open_tiny_imagenet(t.root());
  std::string open_log = testing::internal::GetCapturedStderr();
  EXPECT_NE(open_log.find("notes.txt"), std::string::npos) << open_log;

  EXPECT_EQ(s.train->class_names(), (std::vector<std::string>{"n01", "n02", "n03"}));
  EXPECT_EQ(s.train->class_descriptions(),
            (std::vector<std::string>{"goldfish, Carassius auratus", "salamander", "n03"}));
  EXPECT_EQ(s.train->channels(), 3);
  EXPECT_EQ(s.train->image_size(), 64);
  // Every file with an image extension is listed (the bad ones are found on decoding).
  // Validation is held out of train/ (10% of 18: one image); the official val/ is the test split.
  ASSERT_EQ(s.train->size() + s.val->size(), 5 + 1 + 4 + 1 + 6 + 1);
  ASSERT_EQ(s.val->size(), 1);
  ASSERT_EQ(s.all->size(), 18 + 6);
  std::map<int64_t, int> per_label;
  for (const auto& d : {s.train, s.val}) {
    for (int64_t i = 0; i < d->size(); ++i) {
      std::string path = d->item_name(i);
      std::string wnid = fs::path(path).parent_path().parent_path().filename().string();
      EXPECT_EQ(d->class_names()[d->label(i)], wnid) << path;
      per_label[d->label(i)]++;
    }
  }
  EXPECT_EQ(per_label[0], 6);
  EXPECT_EQ(per_label[1], 5);
  EXPECT_EQ(per_label[2], 7);

  ASSERT_EQ(s.test->size(), 6);
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(fs::path(s.test->item_name(i)).filename().string(), t.val[i].first);
    EXPECT_EQ(s.test->class_names()[s.test->label(i)], t.val[i].second);
  }

  // Loading every item twice: the bad ones fail and are reported once each.
  testing::internal::CaptureStderr();
  int ok = 0;
  Image img;
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& d : {s.train, s.val, s.test})
      for (int64_t i = 0; i < d->size(); ++i) ok += d->load(i, &img);
  }
  std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(ok, 2 * (15 + 5));
  EXPECT_EQ(s.train->bad_item_count() + s.val->bad_item_count(), 3);
  EXPECT_EQ(s.test->bad_item_count(), 1);
  for (const std::string& p : t.bad_train) {
    EXPECT_NE(log.find("skipping " + p + ": "), std::string::npos) << p << "\n" << log;
    size_t at = log.find(p);
    EXPECT_EQ(log.find(p, at + 1), std::string::npos) << "reported twice: " << p;
  }
  EXPECT_NE(log.find(t.bad_val[0] + ": image is 32x32, expected 64x64"), std::string::npos) << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 4) << log;
}

TEST(TinyImageNet, StructuralErrorsNameThePath) {
  {
    TinyTree t;
    EXPECT_INPUT_ERROR_MENTIONS(open_tiny_imagenet(t.root() + "/nope"), t.root() + "/nope");
  }
  {
    TinyTree t;  // an empty class
    for (const auto& e : fs::directory_iterator(t.dir.path() / "train" / "n02" / "images"))
      fs::remove(e.path());
    EXPECT_INPUT_ERROR_MENTIONS(open_tiny_imagenet(t.root()),
                                (t.dir.path() / "train" / "n02" / "images").string());
  }
  {
    TinyTree t;  // a class listed in wnids.txt without its folder
    fs::remove_all(t.dir.path() / "train" / "n03");
    EXPECT_INPUT_ERROR_MENTIONS(open_tiny_imagenet(t.root()), "n03");
  }
  {
    TinyTree t;  // a training folder that is not a listed class
    write_image(t.dir.path() / "train" / "n09" / "images" / "x.JPEG", make_image(64, 64, 3, 1));
    EXPECT_INPUT_ERROR_MENTIONS(open_tiny_imagenet(t.root()), "n09: class folder not in wnids.txt");
  }
  {
    TinyTree t;  // an annotation naming an unknown class: the label would be out of range
    write_text(t.dir.path() / "val" / "val_annotations.txt", "val_0.JPEG\tn01\nval_1.JPEG\tn77\n");
    EXPECT_INPUT_ERROR_MENTIONS(open_tiny_imagenet(t.root()), "val_annotations.txt:2: unknown class 'n77'");
  }
  {
    TinyTree t;
    fs::remove(t.dir.path() / "val" / "val_annotations.txt");
    EXPECT_INPUT_ERROR_MENTIONS(open_tiny_imagenet(t.root()), "val_annotations.txt: missing");
  }
  {
    TinyTree t;  // one class: every prediction would be right
    write_text(t.dir.path() / "wnids.txt", "n01\n");
    EXPECT_INPUT_ERROR_MENTIONS(open_tiny_imagenet(t.root()), "wnids.txt: only one class ('n01')");
  }
}

// ---------------------------------------------------------------- image folders

TEST(ImageFolder, TrainValSplitsResizeAndErrors) {
  TempDir dir;
  fs::path root = dir.path();
  write_image(root / "train" / "dog" / "a.png", make_image(100, 80, 3, 1));
  write_image(root / "train" / "dog" / "sub" / "b.jpg", make_image(64, 64, 3, 2));
  write_image(root / "train" / "cat" / "c.bmp", make_image(30, 50, 1, 3));
  write_image(root / "val" / "dog" / "d.jpeg", make_image(64, 64, 3, 4));
  Splits s = open_data(parse_data_spec("folder:" + root.string()));
  EXPECT_EQ(s.train->class_names(), (std::vector<std::string>{"cat", "dog"}));
  ASSERT_EQ(s.train->size(), 3);
  EXPECT_EQ(s.train->label(0), 0);
  EXPECT_EQ(s.train->label(1), 1);
  ASSERT_EQ(s.val->size(), 1);
  EXPECT_EQ(s.val->label(0), 1);  // labels follow the training classes
  EXPECT_EQ(s.val_size, 0);       // the folder's own validation split
  EXPECT_EQ(s.test, nullptr);     // no test/ folder, no test split
  EXPECT_EQ(s.all->size(), 4);
  Image img;
  for (int64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(s.train->load(i, &img));
    EXPECT_EQ(img.width, 64);
    EXPECT_EQ(img.height, 64);
    EXPECT_EQ(img.channels, 3);
  }
  // A test/ folder is the test split; all is every image under the folder.
  write_image(root / "test" / "cat" / "t.png", make_image(64, 64, 3, 6));
  s = open_data(parse_data_spec("folder:" + root.string()));
  ASSERT_NE(s.test, nullptr);
  ASSERT_EQ(s.test->size(), 1);
  EXPECT_EQ(s.test->label(0), 0);
  EXPECT_EQ(s.all->size(), 5);
  // Without val/, validation is held out of train/ (and train/ loses it).
  fs::rename(root / "val", root / "elsewhere");
  s = open_data(parse_data_spec("folder:" + root.string()));
  EXPECT_EQ(s.val_size, 1);
  EXPECT_EQ(s.val->size(), 1);
  EXPECT_EQ(s.train->size(), 2);
  EXPECT_EQ(s.all->size(), 4);
  fs::rename(root / "elsewhere", root / "val");
  fs::remove_all(root / "test");
  write_image(root / "val" / "bird" / "e.png", make_image(64, 64, 3, 5));
  EXPECT_INPUT_ERROR_MENTIONS(open_folder_splits(root.string()),
                              "bird: class not among the training classes");
  fs::create_directories(root / "train" / "empty");
  EXPECT_INPUT_ERROR_MENTIONS(open_folder_splits(root.string()), "empty: no images");
  EXPECT_INPUT_ERROR_MENTIONS(open_folder_splits((root / "none").string()), (root / "none").string());
  // One class folder is not a classification data set (a validation split with one
  // of the training classes is fine).
  TempDir one;
  write_image(one.path() / "only" / "a.png", make_image(64, 64, 3, 6));
  EXPECT_INPUT_ERROR_MENTIONS(open_folder_splits(one.path().string()),
                              one.path().string() + ": only one class ('only')");
  EXPECT_INPUT_ERROR_MENTIONS(class_names_for(parse_data_spec("folder:" + one.path().string())),
                              "only one class");
  fs::remove_all(root / "train" / "empty");
  fs::remove_all(root / "val" / "bird");
  EXPECT_EQ(open_folder_splits(root.string()).val->size(), 1);
}

TEST(ImageFolder, HoldoutWithoutTrainFolder) {
  TempDir dir;
  for (int k = 0; k < 25; ++k) {
    char name[32];
    std::snprintf(name, sizeof name, "%02d.png", k);
    write_image(dir.path() / "a" / name, make_image(8, 8, 3, k));
  }
  for (int k = 0; k < 4; ++k)
    write_image(dir.path() / "b" / (std::to_string(k) + ".png"), make_image(8, 8, 3, k));
  Splits s = open_folder_splits(dir.path().string(), 16);
  // 10% of 29 is 2, shared by class size: both from class a.
  EXPECT_EQ(s.val_size, 2);
  EXPECT_EQ(per_class(*s.val), (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(per_class(*s.train), (std::vector<int64_t>{23, 4}));
  EXPECT_EQ(s.test, nullptr);
  EXPECT_EQ(s.all->size(), 29);
  EXPECT_EQ(s.train->image_size(), 16);
  // An explicit size, and the same split from a second opening.
  SplitOptions so;
  so.val_size = 6;
  Splits s6 = open_folder_splits(dir.path().string(), 16, so);
  EXPECT_EQ(per_class(*s6.val), (std::vector<int64_t>{5, 1}));
  EXPECT_EQ(indices_of(s6.val), indices_of(open_folder_splits(dir.path().string(), 16, so).val));
  so.val_size = 29;
  EXPECT_INPUT_ERROR_MENTIONS(open_folder_splits(dir.path().string(), 16, so), "--val-size");
}

// ---------------------------------------------------------------- specs

TEST(DataSpecs, ParseAndClassNames) {
  DataSpec d = parse_data_spec("fashion-mnist");
  EXPECT_EQ(d.kind, DataSpec::Kind::FashionMnist);
  EXPECT_EQ(d.dir, kFashionMnistDir);
  EXPECT_EQ(parse_data_spec("fashion-mnist:/x/y").dir, "/x/y");
  EXPECT_EQ(parse_data_spec("mnist:/m").kind, DataSpec::Kind::Mnist);
  EXPECT_EQ(parse_data_spec("tiny-imagenet:/t").kind, DataSpec::Kind::TinyImageNet);
  EXPECT_EQ(parse_data_spec("folder:/f").dir, "/f");
  EXPECT_INPUT_ERROR_MENTIONS(parse_data_spec("imagenet:/x"), "imagenet:/x");
  EXPECT_INPUT_ERROR_MENTIONS(parse_data_spec("tiny-imagenet"), "missing folder");
  EXPECT_INPUT_ERROR_MENTIONS(parse_data_spec("folder:"), "missing folder");
  EXPECT_EQ(preprocess_for(d).channels, 1);
  EXPECT_EQ(preprocess_for(parse_data_spec("folder:/f")).crop, 56);

  ClassNames f = class_names_for(d);
  ASSERT_EQ(f.names.size(), 10u);
  EXPECT_EQ(f.names[0], "T-shirt/top");
  TinyTree t;
  ClassNames c = class_names_for(parse_data_spec("tiny-imagenet:" + t.root()));
  EXPECT_EQ(c.names, (std::vector<std::string>{"n01", "n02", "n03"}));
  EXPECT_EQ(c.descriptions[1], "salamander");
}

// ---------------------------------------------------------------- loader

// 40 distinct 64x64 RGB images in a folder dataset (PNG: exact pixels).
struct FolderSet {
  TempDir dir;
  std::shared_ptr<const Dataset> ds;
  explicit FolderSet(int n = 40) {
    for (int k = 0; k < n; ++k) {
      char name[32];  // (snprintf: GCC 12 warns falsely on string concatenation here)
      std::snprintf(name, sizeof name, "c%d/%d.png", k % 3, 100 + k);
      write_image(dir.path() / name, make_image(64, 64, 3, k));
    }
    ds = open_image_folder(dir.path().string());
  }
};

std::vector<Batch> run_epoch(Loader& loader, int64_t epoch, int64_t first = 0) {
  loader.start_epoch(epoch, first);
  std::vector<Batch> out;
  while (auto b = loader.next()) out.push_back(std::move(*b));
  return out;
}

void expect_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].index, b[i].index) << what;
    EXPECT_EQ(a[i].samples, b[i].samples) << what << " batch " << i;
    EXPECT_EQ(a[i].labels.to_vector<int64_t>(), b[i].labels.to_vector<int64_t>()) << what;
    EXPECT_EQ(a[i].images.to_vector<float>(), b[i].images.to_vector<float>()) << what << " batch " << i;
  }
}

TEST(Loader, SameBatchesWithOneTwoAndThreeWorkers) {
  FolderSet set;
  LoaderOptions o;
  o.batch_size = 8;
  o.seed = 1234;
  o.workers = 1;
  Loader l1(set.ds, Preprocess::seed_rgb(), o);
  o.workers = 2;
  o.prefetch = 2;
  Loader l2(set.ds, Preprocess::seed_rgb(), o);
  o.workers = 3;
  o.prefetch = 5;
  Loader l3(set.ds, Preprocess::seed_rgb(), o);
  for (int64_t epoch : {0, 1}) {
    auto a = run_epoch(l1, epoch), b = run_epoch(l2, epoch), c = run_epoch(l3, epoch);
    ASSERT_EQ(a.size(), 5u);
    expect_same_batches(a, b, "1 vs 2 workers");
    expect_same_batches(a, c, "1 vs 3 workers");
  }
}

TEST(Loader, EpochContentShuffleAndAugmentation) {
  FolderSet set;
  LoaderOptions o;
  o.batch_size = 16;
  o.seed = 7;
  Loader loader(set.ds, Preprocess::seed_rgb(), o);
  EXPECT_EQ(loader.batches_per_epoch(), 3);
  auto e0 = run_epoch(loader, 0), e1 = run_epoch(loader, 1);
  ASSERT_EQ(e0.size(), 3u);
  EXPECT_EQ(e0[2].size(), 8);  // 40 = 16 + 16 + 8
  std::vector<int64_t> all0, all1;
  for (const Batch& b : e0) {
    EXPECT_EQ(b.images.shape(), (Shape{b.size(), 3, 56, 56}));
    EXPECT_EQ(b.labels.dtype(), DType::I64);
    EXPECT_EQ(b.samples, loader.batch_samples(0, b.index));
    auto labels = b.labels.to_vector<int64_t>();
    for (int64_t i = 0; i < b.size(); ++i) EXPECT_EQ(labels[i], set.ds->label(b.samples[i]));
    EXPECT_TRUE(test::all_finite(b.images));
    all0.insert(all0.end(), b.samples.begin(), b.samples.end());
  }
  for (const Batch& b : e1) all1.insert(all1.end(), b.samples.begin(), b.samples.end());
  EXPECT_NE(all0, all1);  // a new order each epoch
  std::sort(all0.begin(), all0.end());
  std::sort(all1.begin(), all1.end());
  std::vector<int64_t> every(40);
  std::iota(every.begin(), every.end(), 0);
  EXPECT_EQ(all0, every);
  EXPECT_EQ(all1, every);

  // Each sample is exactly what preprocess() gives with its own key.
  const Batch& b = e1[1];
  Image img;
  ASSERT_TRUE(set.ds->load(b.samples[3], &img));
  std::vector<float> want(3 * 56 * 56);
  preprocess(img, Preprocess::seed_rgb(), true, sample_key(7, 1, uint64_t(b.samples[3])), want.data());
  std::vector<float> got = b.images.select(0, 3).contiguous().to_vector<float>();
  EXPECT_EQ(got, want);
  // Without augmentation: centre crops in dataset order.
  o.augment = false;
  o.shuffle = false;
  Loader val(set.ds, Preprocess::seed_rgb(), o);
  auto v = run_epoch(val, 0);
  ASSERT_TRUE(set.ds->load(0, &img));
  preprocess(img, Preprocess::seed_rgb(), false, 0, want.data());
  EXPECT_EQ(v[0].samples[0], 0);
  EXPECT_EQ(v[0].images.select(0, 0).contiguous().to_vector<float>(), want);
}

TEST(Loader, ResumeMidEpochGivesTheRemainingBatches) {
  FolderSet set;
  LoaderOptions o;
  o.batch_size = 6;
  o.seed = 99;
  Loader full(set.ds, Preprocess::seed_rgb(), o);
  auto all = run_epoch(full, 3);
  ASSERT_EQ(all.size(), 7u);
  for (int64_t first : {1, 4, 6, 7}) {
    Loader resumed(set.ds, Preprocess::seed_rgb(), o);
    auto rest = run_epoch(resumed, 3, first);
    expect_same_batches(std::vector<Batch>(all.begin() + first, all.end()), rest,
                        "resume at " + std::to_string(first));
  }
  // Restarting while batches are in flight discards them.
  Loader l(set.ds, Preprocess::seed_rgb(), o);
  l.start_epoch(5);
  ASSERT_TRUE(l.next().has_value());
  EXPECT_EQ(l.position(), 1);
  auto again = run_epoch(l, 3, 2);
  expect_same_batches(std::vector<Batch>(all.begin() + 2, all.end()), again, "restart");
  EXPECT_EQ(l.epoch(), 3);
}

TEST(Loader, DropLastAndGrayData) {
  TempDir dir;
  std::vector<uint8_t> px(23 * 28 * 28), lab(23);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 31);
  for (size_t i = 0; i < lab.size(); ++i) lab[i] = static_cast<uint8_t>(i % 10);
  write_idx(dir / "img.gz", {23, 28, 28}, px, true);
  write_idx(dir / "lab.gz", {23}, lab, true);
  auto ds = std::make_shared<IdxDataset>(dir / "img.gz", dir / "lab.gz", fashion_mnist_classes());
  LoaderOptions o;
  o.batch_size = 5;
  o.drop_last = true;
  Loader l(ds, Preprocess::gray(), o);
  EXPECT_EQ(l.batches_per_epoch(), 4);
  auto e = run_epoch(l, 0);
  ASSERT_EQ(e.size(), 4u);
  for (const Batch& b : e) EXPECT_EQ(b.images.shape(), (Shape{5, 1, 28, 28}));
  o.drop_last = false;
  Loader l2(ds, Preprocess::gray(), o);
  EXPECT_EQ(run_epoch(l2, 0).back().size(), 3);
  // Data of another size or channel count is fitted to the preprocessing (gray 28 -> RGB 64, crop 56).
  Loader l3(ds, Preprocess::seed_rgb(), o);
  EXPECT_EQ(run_epoch(l3, 0).front().images.shape(), (Shape{5, 3, 56, 56}));
}

// Data parallelism: the shards of every batch, in rank order, are the batch
// (samples, labels and augmented pixels), and a last batch smaller than
// min_batch is left out on every shard alike.
TEST(Loader, ShardsOfEveryBatchTileIt) {
  TempDir dir;
  std::vector<uint8_t> px(23 * 28 * 28), lab(23);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 37 + i / 700);
  for (size_t i = 0; i < lab.size(); ++i) lab[i] = static_cast<uint8_t>(i % 10);
  write_idx(dir / "img", {23, 28, 28}, px, false);
  write_idx(dir / "lab", {23}, lab, false);
  auto ds = std::make_shared<IdxDataset>(dir / "img", dir / "lab", fashion_mnist_classes());
  for (int shards : {2, 3}) {
    SCOPED_TRACE("shards " + std::to_string(shards));
    LoaderOptions o;
    o.batch_size = 10;  // 23 = 10 + 10 + 3
    o.seed = 5;
    Loader whole(ds, Preprocess::gray(), o);
    const auto all = run_epoch(whole, 1);
    ASSERT_EQ(all.size(), 3u);
    std::vector<std::vector<Batch>> parts;
    for (int r = 0; r < shards; ++r) {
      LoaderOptions so = o;
      so.shard_rank = r;
      so.shard_count = shards;
      so.min_batch = shards;
      Loader l(ds, Preprocess::gray(), so);
      EXPECT_EQ(l.batches_per_epoch(), 3);  // the last batch (3) has a sample for each of 2 or 3 shards
      parts.push_back(run_epoch(l, 1));
      ASSERT_EQ(parts.back().size(), 3u);
    }
    for (size_t k = 0; k < all.size(); ++k) {
      std::vector<int64_t> samples, labels;
      std::vector<float> pixels;
      for (int r = 0; r < shards; ++r) {
        const Batch& b = parts[static_cast<size_t>(r)][k];
        EXPECT_EQ(b.index, static_cast<int64_t>(k));
        // Sizes differ by at most one, the first shards larger.
        const int64_t n = all[k].size(), expect = n / shards + (r < n % shards ? 1 : 0);
        EXPECT_EQ(b.size(), expect) << "batch " << k << " rank " << r;
        samples.insert(samples.end(), b.samples.begin(), b.samples.end());
        for (int64_t v : b.labels.to_vector<int64_t>()) labels.push_back(v);
        for (float v : b.images.to_vector<float>()) pixels.push_back(v);
      }
      EXPECT_EQ(samples, all[k].samples) << "batch " << k;
      EXPECT_EQ(labels, all[k].labels.to_vector<int64_t>()) << "batch " << k;
      EXPECT_EQ(pixels, all[k].images.to_vector<float>()) << "batch " << k;
    }
  }
  // 4 shards: the last batch of 3 cannot give each a sample and is left out.
  LoaderOptions o;
  o.batch_size = 10;
  o.shard_count = 4;
  o.shard_rank = 3;
  o.min_batch = 4;
  Loader l(ds, Preprocess::gray(), o);
  EXPECT_EQ(l.batches_per_epoch(), 2);
  EXPECT_EQ(run_epoch(l, 0).size(), 2u);
}

TEST(Loader, BadFilesAreSkippedCountedAndReportedOnce) {
  TinyTree t;
  testing::internal::CaptureStderr();
  Splits s = open_tiny_imagenet(t.root());
  LoaderOptions o;
  o.batch_size = 4;
  o.seed = 3;
  auto full_train =
      std::make_shared<ConcatDataset>(std::vector<std::shared_ptr<const Dataset>>{s.train, s.val});
  Loader loader(full_train, Preprocess::seed_rgb(), o);
  std::vector<std::string> skipped;
  for (int64_t epoch : {0, 1}) {
    auto e = run_epoch(loader, epoch);
    int64_t n = 0, sk = 0;
    for (const Batch& b : e) {
      n += b.size();
      sk += b.skipped;
      if (epoch == 0) skipped.insert(skipped.end(), b.skipped_items.begin(), b.skipped_items.end());
      EXPECT_EQ(b.images.size(0), b.size());
    }
    EXPECT_EQ(n, 15) << "epoch " << epoch;
    EXPECT_EQ(sk, 3);
    EXPECT_EQ(loader.skipped_in_epoch(), 3) << "epoch " << epoch;
  }
  std::string log = testing::internal::GetCapturedStderr();
  std::sort(skipped.begin(), skipped.end());
  std::vector<std::string> want = t.bad_train;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(skipped, want);
  for (const std::string& p : t.bad_train) {
    size_t at = log.find(p);
    ASSERT_NE(at, std::string::npos) << p;
    EXPECT_EQ(log.find(p, at + 1), std::string::npos) << "reported twice: " << p;
  }
}

// Entries of an image folder that are not image files: everything named like an
// image is an item (a folder x.png, a FIFO, a link to /dev/zero, a broken link, a
// text file) that fails its decode, is reported once and counted in every epoch
// that meets it, exactly, also when a whole batch is bad (the loader passes over
// such a batch, but counts it); other entries are reported once when listing.
TEST(ImageFolder, NonFilesAreItemsThatAreSkippedAndCountedExactly) {
  TempDir dir;
  fs::path a = dir.path() / "a";
  fs::create_directories(a / "0folder.png");
  write_image(a / "0folder.png" / "inside.png", make_image(64, 64, 3, 1));  // not entered
  ASSERT_EQ(::mkfifo((a / "1fifo.png").c_str(), 0600), 0);
  fs::create_symlink(dir / "nowhere", a / "2gone.jpg");
  fs::create_symlink("/dev/zero", a / "3zero.png");
  write_text(a / "4text.png", "not an image\n");
  ASSERT_EQ(::mkfifo((a / "pipe").c_str(), 0600), 0);
  write_text(a / "notes.txt", "notes\n");
  TempDir elsewhere;
  fs::create_directory_symlink(elsewhere.path(), a / "link_to_folder");
  for (int k = 0; k < 3; ++k)
    write_image(a / std::string("g").append(std::to_string(k)).append(".png"), make_image(64, 64, 3, k));
  write_image(a / "sub" / "s.png", make_image(64, 64, 3, 7));  // a real sub-folder is entered
  for (int k = 0; k < 4; ++k)
    write_image(dir.path() / "b" / std::string("g").append(std::to_string(k)).append(".png"),
                make_image(64, 64, 3, k));

  testing::internal::CaptureStderr();
  auto ds = open_image_folder(dir.path().string());
  std::string log = testing::internal::GetCapturedStderr();
  const std::vector<std::string> bad = {(a / "0folder.png").string(), (a / "1fifo.png").string(),
                                        (a / "2gone.jpg").string(), (a / "3zero.png").string(),
                                        (a / "4text.png").string()};
  ASSERT_EQ(ds->size(), 5 + 4 + 4);
  for (size_t k = 0; k < bad.size(); ++k) EXPECT_EQ(ds->item_name(static_cast<int64_t>(k)), bad[k]);
  EXPECT_EQ(test::count_lines(log), 3) << log;
  EXPECT_NE(log.find("skipping " + (a / "pipe").string() + ": not a regular file (a FIFO)"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("skipping " + (a / "notes.txt").string() + ": not an image file (extension)"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("link_to_folder: not an image file (a link to a folder, not followed)"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("inside.png"), std::string::npos) << log;

  LoaderOptions o;
  o.batch_size = 5;  // batch 0 holds the five bad items and nothing else
  o.shuffle = false;
  Loader loader(ds, Preprocess::seed_rgb(), o);
  testing::internal::CaptureStderr();
  for (int64_t epoch : {0, 1}) {
    auto e = run_epoch(loader, epoch);
    int64_t n = 0;
    for (const Batch& b : e) n += b.size();
    EXPECT_EQ(n, 8) << "epoch " << epoch;
    EXPECT_EQ(e.size(), 2u) << "the all-bad batch is passed over";
    EXPECT_EQ(loader.skipped_in_epoch(), 5) << "epoch " << epoch;
  }
  log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(test::count_lines(log), 5) << log;
  const std::vector<std::string> reasons = {"not a regular file (a directory)", "not a regular file (a FIFO)",
                                            "broken symbolic link", "not a regular file (a character device)",
                                            "cannot decode"};
  for (size_t k = 0; k < bad.size(); ++k)
    EXPECT_NE(log.find("skipping " + bad[k] + ": " + reasons[k]), std::string::npos) << log;
  EXPECT_EQ(ds->bad_item_count(), 5);
}

// A file name holding a newline is reported on one line.
TEST(ImageFolder, SkipLinesStayOneLine) {
  TempDir dir;
  write_text(dir.path() / "a" / "bad\nname.png", "x");
  write_image(dir.path() / "a" / "good.png", make_image(64, 64, 3, 1));
  write_image(dir.path() / "b" / "good.png", make_image(64, 64, 3, 2));
  testing::internal::CaptureStderr();
  auto ds = open_image_folder(dir.path().string());
  Image img;
  for (int64_t i = 0; i < ds->size(); ++i) ds->load(i, &img);
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(test::count_lines(log), 1) << log;
  EXPECT_NE(log.find("bad\\x0aname.png: cannot decode"), std::string::npos) << log;
}

// A dataset whose item 5 throws: the loader hands the error to the consumer.
class ThrowingDataset : public Dataset {
 public:
  ThrowingDataset() {
    m_class_names = {"a", "b"};
    m_class_descriptions = m_class_names;
    m_channels = 1;
    m_image_size = 28;
  }
  int64_t size() const override { return 12; }
  int64_t label(int64_t i) const override { return i % 2; }
  std::string item_name(int64_t i) const override { return "item" + std::to_string(i); }

 protected:
  DecodeResult decode(int64_t i, Image* out) const override {
    if (i == 5) TTQ_THROW() << "boom at 5";
    *out = Image(28, 28, 1);
    return {true, ""};
  }
};

TEST(Loader, WorkerErrorsReachTheConsumer) {
  LoaderOptions o;
  o.batch_size = 4;
  o.shuffle = false;
  Loader l(std::make_shared<ThrowingDataset>(), Preprocess::gray(), o);
  l.start_epoch(0);
  EXPECT_TRUE(l.next().has_value());
  try {
    l.next();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("boom at 5"), std::string::npos);
  }
  EXPECT_TRUE(l.next().has_value());  // the epoch goes on after the failed batch
  EXPECT_FALSE(l.next().has_value());
}

// ---------------------------------------------------------------- inference inputs

TEST(Inference, ImageFileToInputTensor) {
  TempDir dir;
  Image img = make_image(64, 64, 3, 21);
  save_image(dir / "x.png", img);
  Preprocess p = Preprocess::for_input(3, 56);
  Tensor t = load_image_tensor(dir / "x.png", p);
  EXPECT_EQ(t.shape(), (Shape{1, 3, 56, 56}));
  std::vector<float> want(3 * 56 * 56);
  preprocess(img, p, false, 0, want.data());
  EXPECT_EQ(t.to_vector<float>(), want);
  // Another size is resized first; a gray model gets one channel.
  save_image(dir / "wide.jpg", make_image(120, 90, 3, 22));
  EXPECT_EQ(load_image_tensor(dir / "wide.jpg", p).shape(), (Shape{1, 3, 56, 56}));
  EXPECT_EQ(load_image_tensor(dir / "wide.jpg", Preprocess::for_input(1, 28)).shape(), (Shape{1, 1, 28, 28}));
  write_text(dir.path() / "notes.png", "text");
  EXPECT_INPUT_ERROR_MENTIONS(load_image_tensor(dir / "notes.png", p), dir / "notes.png");
}

}  // namespace
}  // namespace ttq::data
