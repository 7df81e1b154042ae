// IDX reading and writing through zlib (gzopen reads plain files unchanged,
// so one path serves both). Tested in tests/test_data.cpp.
#include "data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <memory>

#include "engine/error.h"

namespace ttq::data {

namespace {

struct GzCloser {
  void operator()(gzFile_s* f) const {
    if (f != nullptr) gzclose(f);
  }
};
using GzHandle = std::unique_ptr<gzFile_s, GzCloser>;

// Reads the whole (decompressed) stream; throws InputError naming the path.
std::vector<uint8_t> read_all(const std::string& path) {
  GzHandle f(gzopen(path.c_str(), "rb"));
  TTQ_INPUT_CHECK(f != nullptr) << path << ": cannot open";
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 20);
  for (;;) {
    int n = gzread(f.get(), chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int errnum = 0;
      const char* msg = gzerror(f.get(), &errnum);
      TTQ_INPUT_ERROR() << path << ": corrupt gzip stream (" << (msg ? msg : "unknown") << ")";
    }
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  // A gzip stream cut short reads as a clean end of file on some zlib versions; gzerror tells.
  int errnum = 0;
  const char* msg = gzerror(f.get(), &errnum);
  TTQ_INPUT_CHECK(errnum == Z_OK || errnum == Z_STREAM_END)
      << path << ": corrupt gzip stream (" << (msg ? msg : "unknown") << ")";
  return out;
}

}  // namespace

IdxArray read_idx(const std::string& path, int expected_dims) {
  std::vector<uint8_t> bytes = read_all(path);
  TTQ_INPUT_CHECK(bytes.size() >= 4) << path << ": not an IDX file (" << bytes.size() << " bytes)";
  TTQ_INPUT_CHECK(bytes[0] == 0 && bytes[1] == 0) << path << ": not an IDX file (bad magic)";
  TTQ_INPUT_CHECK(bytes[2] == 0x08) << path << ": unsupported IDX element type 0x" << std::hex
                                    << int(bytes[2]) << " (only unsigned bytes, 0x08)";
  int ndims = bytes[3];
  TTQ_INPUT_CHECK(ndims >= 1) << path << ": IDX header has no dimensions";
  TTQ_INPUT_CHECK(expected_dims == 0 || ndims == expected_dims)
      << path << ": IDX file has " << ndims << " dimensions, expected " << expected_dims;
  size_t header = 4 + 4 * size_t(ndims);
  TTQ_INPUT_CHECK(bytes.size() >= header) << path << ": IDX header cut short";
  IdxArray out;
  uint64_t total = 1;
  for (int i = 0; i < ndims; ++i) {
    const uint8_t* p = &bytes[4 + 4 * i];
    uint64_t d = (uint64_t(p[0]) << 24) | (uint64_t(p[1]) << 16) | (uint64_t(p[2]) << 8) | uint64_t(p[3]);
    TTQ_INPUT_CHECK(d > 0) << path << ": IDX dimension " << i << " is 0";
    total *= d;
    TTQ_INPUT_CHECK(total <= (uint64_t(1) << 40)) << path << ": IDX sizes overflow";
    out.dims.push_back(static_cast<int64_t>(d));
  }
  TTQ_INPUT_CHECK(bytes.size() - header == total)
      << path << ": IDX data is " << (bytes.size() - header) << " bytes, header says " << total;
  out.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return out;
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
