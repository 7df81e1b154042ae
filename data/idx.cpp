// IDX reading (header first, then exactly the promised bytes, inflated with
// zlib's stream API when gzipped) and writing through zlib's gz* API.
// Tested in tests/test_data.cpp; fuzz target: fuzz/fuzz_idx.cpp.
#include "data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>

#include "engine/error.h"
#include "engine/io/file.h"

namespace ttq::data {

namespace {

struct GzCloser {
  void operator()(gzFile_s* f) const {
    if (f != nullptr) gzclose(f);
  }
};
using GzHandle = std::unique_ptr<gzFile_s, GzCloser>;

// Deflate's best case is 1032 : 1 (RFC 1951 blocks); with gzip's framing a
// stream of n bytes cannot inflate to more than this.
constexpr uint64_t kMaxDeflateRatio = 1032;

bool is_gzip(const uint8_t* p, size_t n) { return n >= 2 && p[0] == 0x1f && p[1] == 0x8b; }

// Sequential reads from a file's bytes: copied when plain, inflated when gzipped.
// Every defect of the gzip stream is an InputError naming `label`.
class Source {
 public:
  Source(const uint8_t* data, size_t size, const std::string& label)
      : m_data(data), m_size(size), m_label(label), m_gzip(is_gzip(data, size)) {
    if (!m_gzip) return;
    TTQ_INPUT_CHECK(size <= UINT_MAX) << label << ": gzip file too large";
    std::memset(&m_zs, 0, sizeof m_zs);
    m_zs.next_in = const_cast<Bytef*>(data);
    m_zs.avail_in = static_cast<uInt>(size);
    TTQ_CHECK(inflateInit2(&m_zs, 15 + 16) == Z_OK) << "inflateInit2 failed";  // 15 + 16: gzip only
    m_zs_open = true;
  }
  ~Source() {
    if (m_zs_open) inflateEnd(&m_zs);
  }
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;

  bool gzip() const { return m_gzip; }
  uint64_t input_size() const { return m_size; }

  // Reads up to n bytes into dst; fewer only at the end of the data.
  size_t read(uint8_t* dst, size_t n) {
    if (!m_gzip) {
      const size_t k = std::min(n, m_size - m_pos);
      std::memcpy(dst, m_data + m_pos, k);
      m_pos += k;
      return k;
    }
    size_t done = 0;
    while (done < n && !m_ended) {
      m_zs.next_out = dst + done;
      m_zs.avail_out = static_cast<uInt>(std::min<size_t>(n - done, UINT_MAX));
      const uInt before = m_zs.avail_out;
      const int rc = inflate(&m_zs, Z_NO_FLUSH);
      done += before - m_zs.avail_out;
      if (rc == Z_STREAM_END) {  // one member complete (its CRC and length checked by zlib)
        if (m_zs.avail_in == 0) {
          m_ended = true;
        } else {
          TTQ_INPUT_CHECK(is_gzip(m_zs.next_in, m_zs.avail_in))
              << m_label << ": " << m_zs.avail_in << " trailing bytes after the gzip stream";
          TTQ_CHECK(inflateReset(&m_zs) == Z_OK) << "inflateReset failed";  // a concatenated member
        }
        continue;
      }
      if (rc == Z_BUF_ERROR && m_zs.avail_in == 0) {
        TTQ_INPUT_ERROR() << m_label << ": corrupt gzip stream (cut short)";
      }
      TTQ_INPUT_CHECK(rc == Z_OK) << m_label << ": corrupt gzip stream ("
                                  << (m_zs.msg != nullptr ? std::string(m_zs.msg)
                                                          : "error " + std::to_string(rc))
                                  << ")";
    }
    return done;
  }

  // Whether bytes remain after what was read (inflating one more byte to know).
  bool more() {
    if (!m_gzip) return m_pos < m_size;
    uint8_t b = 0;
    return read(&b, 1) == 1;
  }
  uint64_t plain_remaining() const { return m_size - m_pos; }

 private:
  const uint8_t* m_data;
  size_t m_size;
  size_t m_pos = 0;
  std::string m_label;
  bool m_gzip;
  z_stream m_zs{};
  bool m_zs_open = false;
  bool m_ended = false;
};

}  // namespace

IdxArray parse_idx(const uint8_t* bytes, size_t size, const std::string& label, int expected_dims) {
  Source src(bytes, size, label);
  uint8_t head[4] = {};
  const size_t got = src.read(head, 4);
  TTQ_INPUT_CHECK(got == 4) << label << ": not an IDX file (" << got << " bytes)";
  TTQ_INPUT_CHECK(head[0] == 0 && head[1] == 0) << label << ": not an IDX file (bad magic)";
  TTQ_INPUT_CHECK(head[2] == 0x08) << label << ": unsupported IDX element type 0x" << std::hex << int(head[2])
                                   << " (only unsigned bytes, 0x08)";
  const int ndims = head[3];
  TTQ_INPUT_CHECK(ndims >= 1) << label << ": IDX header has no dimensions";
  TTQ_INPUT_CHECK(expected_dims == 0 || ndims == expected_dims)
      << label << ": IDX file has " << ndims << " dimensions, expected " << expected_dims;
  std::vector<uint8_t> sizes(4 * size_t(ndims));
  TTQ_INPUT_CHECK(src.read(sizes.data(), sizes.size()) == sizes.size()) << label << ": IDX header cut short";
  IdxArray out;
  uint64_t total = 1;
  for (int i = 0; i < ndims; ++i) {
    const uint8_t* p = &sizes[4 * size_t(i)];
    const uint64_t d =
        (uint64_t(p[0]) << 24) | (uint64_t(p[1]) << 16) | (uint64_t(p[2]) << 8) | uint64_t(p[3]);
    TTQ_INPUT_CHECK(d > 0) << label << ": IDX dimension " << i << " is 0";
    // total <= kMaxIdxBytes < 2^32 and d < 2^32: the product cannot overflow.
    total *= d;
    TTQ_INPUT_CHECK(total <= kMaxIdxBytes)
        << label << ": IDX header promises more than " << kMaxIdxBytes << " bytes of data (the limit)";
    out.dims.push_back(static_cast<int64_t>(d));
  }
  if (src.gzip()) {
    TTQ_INPUT_CHECK(total <= kMaxDeflateRatio * src.input_size())
        << label << ": IDX header promises " << total << " bytes, more than a gzip stream of "
        << src.input_size() << " bytes can hold";
  } else {
    TTQ_INPUT_CHECK(src.plain_remaining() == total)
        << label << ": IDX data is " << src.plain_remaining() << " bytes, header says " << total;
  }
  out.data.resize(static_cast<size_t>(total));
  const size_t n = src.read(out.data.data(), out.data.size());
  TTQ_INPUT_CHECK(n == total) << label << ": IDX data is " << n << " bytes, header says " << total;
  TTQ_INPUT_CHECK(!src.more()) << label << ": IDX data is longer than the " << total
                               << " bytes its header says";
  return out;
}

IdxArray read_idx(const std::string& path, int expected_dims) {
  std::vector<uint8_t> bytes;
  std::string error;
  // The largest header is 4 + 4 * 255 bytes.
  TTQ_INPUT_CHECK(io::read_regular_file(path, kMaxIdxBytes + 1024, &bytes, &error)) << path << ": " << error;
  return parse_idx(bytes.data(), bytes.size(), path, expected_dims);
}

void write_idx(const std::string& path, const std::vector<int64_t>& dims, const std::vector<uint8_t>& data,
               bool gzip) {
  TTQ_CHECK(!dims.empty() && dims.size() < 256) << "write_idx: bad dimension count " << dims.size();
  std::vector<uint8_t> bytes = {0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  int64_t total = 1;
  for (int64_t d : dims) {
    TTQ_CHECK(d > 0 && d <= int64_t(UINT32_MAX)) << "write_idx: bad dimension " << d;
    total *= d;
    for (int s = 24; s >= 0; s -= 8) bytes.push_back(static_cast<uint8_t>((uint64_t(d) >> s) & 0xFF));
  }
  TTQ_CHECK(total == int64_t(data.size()))
      << "write_idx: " << data.size() << " bytes for " << total << " elements";
  bytes.insert(bytes.end(), data.begin(), data.end());
  GzHandle f(gzopen(path.c_str(), gzip ? "wb6" : "wbT"));  // T: plain, no gzip wrapper
  TTQ_INPUT_CHECK(f != nullptr) << path << ": cannot open for writing";
  size_t done = 0;
  while (done < bytes.size()) {
    unsigned n = static_cast<unsigned>(std::min<size_t>(bytes.size() - done, 1u << 30));
    int w = gzwrite(f.get(), bytes.data() + done, n);
    TTQ_INPUT_CHECK(w > 0) << path << ": write failed";
    done += size_t(w);
  }
  TTQ_INPUT_CHECK(gzclose(f.release()) == Z_OK) << path << ": write failed";
}

}  // namespace ttq::data
