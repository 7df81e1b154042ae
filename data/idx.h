// IDX files (the MNIST / Fashion-MNIST format), plain or gzipped, read through
// zlib. Layout: 2 zero bytes, a type byte (0x08 = unsigned byte, the only type
// these datasets use), a dimension count, that many big-endian u32 sizes, then
// the data. Tested in tests/test_data.cpp on generated files (good and bad
// headers) and on the real Fashion-MNIST when installed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ttq::data {

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // row-major, product(dims) bytes
};

// Reads an IDX file of unsigned bytes; gzip is detected by its magic bytes.
// requires: expected_dims == 0 or the file has exactly that many dimensions.
// ensures: data.size() == product(dims), every dim > 0.
// Throws ttq::InputError naming the path on: unreadable file, bad gzip stream,
// wrong magic, unsupported element type, wrong dimension count, zero size, or
// a data size that differs from the header's (short or with trailing bytes).
IdxArray read_idx(const std::string& path, int expected_dims = 0);

// Writes an IDX file of unsigned bytes, gzipped when `gzip` (for tests and
// for exporting data). Throws ttq::InputError naming the path on failure.
void write_idx(const std::string& path, const std::vector<int64_t>& dims, const std::vector<uint8_t>& data,
               bool gzip);

}  // namespace ttq::data
