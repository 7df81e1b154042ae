// safetensors reader and writer (docs/formats.md): 8-byte little-endian
// header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, ...,
// "__metadata__": {string: string}}, then the raw little-endian data.
// The reader validates every field before it touches the data; the writer is
// atomic. Tests: tests/test_safetensors.cpp; fuzz target: fuzz/fuzz_safetensors.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace ttq::io {

using Metadata = std::map<std::string, std::string>;
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Hard cap on the JSON header: a real header is a few hundred bytes per tensor.
inline constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

// One tensor entry of a validated header. Offsets are relative to the data
// section, which starts at byte 8 + header_bytes of the file.
struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct Header {
  uint64_t header_bytes = 0;         // N
  std::vector<TensorEntry> entries;  // in data order (increasing begin)
  Metadata metadata;
};

// The content of a safetensors file: CPU tensors in the file's data order.
class SafeTensors {
 public:
  const NamedTensors& tensors() const { return m_tensors; }
  const Metadata& metadata() const { return m_metadata; }
  bool contains(const std::string& name) const;
  // requires contains(name); throws ttq::InputError naming `source` otherwise.
  const Tensor& at(const std::string& name) const;
  // The metadata value for `key`, or `fallback` when absent.
  std::string meta(const std::string& key, const std::string& fallback = "") const;
  const std::string& source() const { return m_source; }

 private:
  friend SafeTensors parse_safetensors(const uint8_t*, size_t, const std::string&);
  friend SafeTensors read_safetensors(const std::string&);
  NamedTensors m_tensors;
  Metadata m_metadata;
  std::string m_source;
};

// Validates the 8-byte length and the JSON header of a file of `file_size` bytes
// whose first bytes are `prefix` (at least min(file_size, 8 + N) bytes are needed;
// pass what you have, a short prefix is reported as truncation).
// ensures: every entry has a known dtype, a non-negative shape whose byte size
// does not overflow and equals end - begin, lies inside the data section and
// overlaps no other; names are unique and non-empty; metadata is string->string.
// Throws ttq::InputError "<label>: <problem>" (one line) otherwise.
Header parse_header(const uint8_t* prefix, size_t prefix_size, uint64_t file_size, const std::string& label);

// Parses a whole file held in memory. Same checks and errors as read_safetensors.
SafeTensors parse_safetensors(const uint8_t* data, size_t size, const std::string& label);

// Reads and validates `path`. Tensor data is read straight into each tensor's
// storage, so a hostile header never makes the reader allocate more than the
// file holds. Throws ttq::InputError "<path>: <problem>" on any defect.
SafeTensors read_safetensors(const std::string& path);

// Reads only the header (no tensor data).
Header read_safetensors_header(const std::string& path);

// Writes `tensors` (in the given order, any device / strides) and `metadata` to
// `path` atomically: a temporary file in the same folder, fsync, rename, fsync
// of the folder. requires unique non-empty names other than "__metadata__" and
// defined tensors. On failure the previous content of `path` is left untouched,
// the temporary file is removed and ttq::InputError "<path>: <problem>" is thrown.
void write_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {});

// The bytes write_safetensors would write (for tests and in-memory use).
std::vector<uint8_t> serialize_safetensors(const NamedTensors& tensors, const Metadata& metadata = {});

// A name made safe for a one-line message: control characters escaped, quotes
// added, long names shortened.
std::string quoted_name(const std::string& name);

}  // namespace ttq::io
