// IDX files (the MNIST / Fashion-MNIST format), plain or gzipped, read through
// zlib. Layout: 2 zero bytes, a type byte (0x08 = unsigned byte, the only type
// these datasets use), a dimension count, that many big-endian u32 sizes, then
// the data. Tested in tests/test_data.cpp on generated files (good and bad
// headers) and on the real Fashion-MNIST when installed; fuzz target:
// fuzz/fuzz_idx.cpp.
//
// A gzipped file is never inflated blindly: the header is inflated and checked
// first, then exactly the bytes it promises, which must be at most kMaxIdxBytes
// and no more than the compressed size allows (deflate cannot expand data more
// than 1032 : 1), so a small file cannot make the reader allocate gigabytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ttq::data {

// Most data an IDX file may hold (after decompression): 2 GiB, four times
// EMNIST's largest file.
inline constexpr uint64_t kMaxIdxBytes = uint64_t(2) << 30;

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // row-major, product(dims) bytes
};

// Reads an IDX file of unsigned bytes; gzip is detected by its magic bytes.
// requires: expected_dims == 0 or the file has exactly that many dimensions.
// ensures: data.size() == product(dims) <= kMaxIdxBytes, every dim > 0.
// Throws ttq::InputError naming the path on: a missing or non-regular file (a
// FIFO, a device or a directory is refused without being read), a bad gzip
// stream (corrupt, cut short, trailing bytes), wrong magic, unsupported element
// type, wrong dimension count, zero size, a size above the limits, or a data
// size that differs from the header's (short or with trailing bytes).
IdxArray read_idx(const std::string& path, int expected_dims = 0);

// The same on the bytes of a file held in memory; `label` names it in messages.
IdxArray parse_idx(const uint8_t* bytes, size_t size, const std::string& label, int expected_dims = 0);

// Writes an IDX file of unsigned bytes, gzipped when `gzip` (for tests and
// for exporting data). Throws ttq::InputError naming the path on failure.
void write_idx(const std::string& path, const std::vector<int64_t>& dims, const std::vector<uint8_t>& data,
               bool gzip);

}  // namespace ttq::data
