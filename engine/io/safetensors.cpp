// safetensors reader / writer. The header is validated completely before any
// tensor is allocated; every defect becomes one ttq::InputError line naming the
// file. Tests: tests/test_safetensors.cpp, fuzz/fuzz_safetensors.cpp.
#include "engine/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "engine/io/file.h"
#include "engine/io/write_file.h"

namespace ttq::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts would need byte swapping");

namespace {

using Json = nlohmann::ordered_json;

// A JSON header has depth 3 at most ({name: {"shape": [..]}}); deeper input is
// hostile, and bounding depth and value count bounds the parser's memory.
constexpr int kMaxJsonDepth = 4;
constexpr uint64_t kMaxJsonValues = 1ull << 24;
constexpr size_t kMaxDims = 64;

// Thrown from the parser callback, turned into one InputError line.
struct HeaderShapeError {
  std::string what;
};

// Control characters replaced by spaces: the library's messages quote input.
std::string one_line(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  return s;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void put_u64_le(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Parses the JSON text, rejecting duplicate keys, deep nesting and absurd sizes.
Json parse_json(std::string_view text, const std::string& label) {
  std::vector<std::set<std::string>> keys;  // one key set per open object
  uint64_t values = 0;
  auto cb = [&](int depth, Json::parse_event_t event, Json& parsed) -> bool {
    if (depth > kMaxJsonDepth) throw HeaderShapeError{"JSON header nests deeper than a safetensors header"};
    if (++values > kMaxJsonValues) throw HeaderShapeError{"JSON header holds too many values"};
    switch (event) {
      case Json::parse_event_t::object_start: keys.emplace_back(); break;
      case Json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second)
          throw HeaderShapeError{"duplicate key " + quoted_name(parsed.get<std::string>()) +
                                 " in JSON header"};
        break;
      default: break;
    }
    return true;
  };
  try {
    return Json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const HeaderShapeError& e) {
    TTQ_INPUT_ERROR() << label << ": " << e.what;
  } catch (const Json::exception& e) {
    std::string what = e.what();
    if (what.rfind("[json.exception.", 0) == 0 && what.find("] ") != std::string::npos)
      what = what.substr(what.find("] ") + 2);  // drop the library's error id
    TTQ_INPUT_ERROR() << label << ": invalid JSON header: " << one_line(what);
  }
}

// A JSON value that is a non-negative integer fitting in int64.
bool as_index(const Json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) {
    // nlohmann stores non-negative literals as unsigned; 0 may also come as integer.
    if (v.is_number_integer() && v.get<int64_t>() >= 0) {
      *out = static_cast<uint64_t>(v.get<int64_t>());
      return true;
    }
    return false;
  }
  *out = v.get<uint64_t>();
  return *out <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
}

TensorEntry parse_entry(const std::string& name, const Json& v, uint64_t data_size,
                        const std::string& label) {
  const std::string where = label + ": tensor " + quoted_name(name);
  TTQ_INPUT_CHECK(v.is_object()) << where << ": entry is not a JSON object";
  for (auto it = v.begin(); it != v.end(); ++it) {
    const std::string& k = it.key();
    TTQ_INPUT_CHECK(k == "dtype" || k == "shape" || k == "data_offsets")
        << where << ": unknown field " << quoted_name(k);
  }
  TTQ_INPUT_CHECK(v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"))
      << where << ": needs the fields dtype, shape and data_offsets";
  TensorEntry e;
  e.name = name;
  const Json& dt = v["dtype"];
  TTQ_INPUT_CHECK(dt.is_string()) << where << ": dtype is not a string";
  TTQ_INPUT_CHECK(dtype_from_name(dt.get<std::string>(), &e.dtype))
      << where << ": unknown dtype " << quoted_name(dt.get<std::string>())
      << " (supported: F32, F64, F16, BF16, U8, I32, I64)";

  const Json& sh = v["shape"];
  TTQ_INPUT_CHECK(sh.is_array()) << where << ": shape is not an array";
  TTQ_INPUT_CHECK(sh.size() <= kMaxDims)
      << where << ": shape has " << sh.size() << " dimensions (at most " << kMaxDims << ")";
  // numel, and the product of max(dim, 1) that stride computations reach, must fit in int64.
  uint64_t numel = 1, span = 1;
  const uint64_t limit = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  for (const Json& d : sh) {
    uint64_t n = 0;
    TTQ_INPUT_CHECK(as_index(d, &n)) << where << ": shape entries must be non-negative integers";
    TTQ_INPUT_CHECK(!__builtin_mul_overflow(span, std::max<uint64_t>(n, 1), &span) && span <= limit)
        << where << ": shape is too large";
    numel *= n;  // <= span, cannot overflow
    e.shape.push_back(static_cast<int64_t>(n));
  }
  uint64_t nbytes = 0;
  TTQ_INPUT_CHECK(!__builtin_mul_overflow(numel, dtype_size(e.dtype), &nbytes) && nbytes <= limit)
      << where << ": shape is too large";

  const Json& off = v["data_offsets"];
  TTQ_INPUT_CHECK(off.is_array() && off.size() == 2 && as_index(off[0], &e.begin) && as_index(off[1], &e.end))
      << where << ": data_offsets must be two non-negative integers";
  TTQ_INPUT_CHECK(e.begin <= e.end) << where << ": data_offsets [" << e.begin << ", " << e.end
                                    << "] end before begin";
  TTQ_INPUT_CHECK(e.end <= data_size) << where << ": data_offsets [" << e.begin << ", " << e.end
                                      << "] past the end of the data section (" << data_size << " bytes)";
  TTQ_INPUT_CHECK(e.end - e.begin == nbytes)
      << where << ": shape " << shape_str(e.shape) << " x " << dtype_name(e.dtype) << " = " << nbytes
      << " bytes but data_offsets [" << e.begin << ", " << e.end << "] hold " << (e.end - e.begin);
  return e;
}

}  // namespace

std::string quoted_name(const std::string& name) {
  constexpr size_t kMax = 120;
  std::string out = "'";
  for (size_t i = 0; i < name.size() && i < kMax; ++i) {
    unsigned char c = static_cast<unsigned char>(name[i]);
    if (c < 0x20 || c == 0x7f || c == '\'' || c == '\\') {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (name.size() > kMax) out += "...";
  out += "'";
  return out;
}

Header parse_header(const uint8_t* prefix, size_t prefix_size, uint64_t file_size, const std::string& label) {
  TTQ_INPUT_CHECK(file_size >= 8 && prefix_size >= 8)
      << label << ": truncated: " << file_size << " bytes, too short for the 8-byte header length";
  Header h;
  h.header_bytes = read_u64_le(prefix);
  const uint64_t n = h.header_bytes;
  TTQ_INPUT_CHECK(n >= 2) << label << ": header length " << n << " is too small for a JSON object";
  TTQ_INPUT_CHECK(n <= file_size - 8)
      << label << ": header length " << n << " runs past the end of the file (" << file_size << " bytes)";
  TTQ_INPUT_CHECK(n <= kMaxHeaderBytes)
      << label << ": header length " << n << " exceeds the limit of " << kMaxHeaderBytes << " bytes";
  TTQ_INPUT_CHECK(prefix_size - 8 >= n) << label << ": truncated inside the header";
  const uint64_t data_size = file_size - 8 - n;

  Json j = parse_json(std::string_view(reinterpret_cast<const char*>(prefix + 8), n), label);
  TTQ_INPUT_CHECK(j.is_object()) << label << ": JSON header is not an object";
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      TTQ_INPUT_CHECK(it->is_object()) << label << ": __metadata__ is not a JSON object";
      for (auto m = it->begin(); m != it->end(); ++m) {
        TTQ_INPUT_CHECK(m->is_string())
            << label << ": __metadata__ value of " << quoted_name(m.key()) << " is not a string";
        h.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    TTQ_INPUT_CHECK(!name.empty()) << label << ": a tensor has an empty name";
    h.entries.push_back(parse_entry(name, *it, data_size, label));
  }
  std::stable_sort(h.entries.begin(), h.entries.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < h.entries.size(); ++i) {
    const TensorEntry& a = h.entries[i - 1];
    const TensorEntry& b = h.entries[i];
    TTQ_INPUT_CHECK(a.end <= b.begin)
        << label << ": tensors " << quoted_name(a.name) << " [" << a.begin << ", " << a.end << ") and "
        << quoted_name(b.name) << " [" << b.begin << ", " << b.end << ") overlap";
  }
  return h;
}

bool SafeTensors::contains(const std::string& name) const {
  for (const auto& [n, t] : m_tensors)
    if (n == name) return true;
  return false;
}

const Tensor& SafeTensors::at(const std::string& name) const {
  for (const auto& [n, t] : m_tensors)
    if (n == name) return t;
  TTQ_INPUT_ERROR() << m_source << ": no tensor named " << quoted_name(name);
}

std::string SafeTensors::meta(const std::string& key, const std::string& fallback) const {
  auto it = m_metadata.find(key);
  return it == m_metadata.end() ? fallback : it->second;
}

SafeTensors parse_safetensors(const uint8_t* data, size_t size, const std::string& label) {
  Header h = parse_header(data, size, size, label);
  const uint8_t* base = data + 8 + h.header_bytes;
  SafeTensors st;
  st.m_source = label;
  st.m_metadata = std::move(h.metadata);
  for (TensorEntry& e : h.entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.raw_data(), base + e.begin, e.end - e.begin);
    st.m_tensors.emplace_back(std::move(e.name), std::move(t));
  }
  return st;
}

namespace {

// An open file descriptor, closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : m_fd(fd) {}
  ~Fd() {
    if (m_fd >= 0) ::close(m_fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return m_fd; }
  int release() {
    int fd = m_fd;
    m_fd = -1;
    return fd;
  }

 private:
  int m_fd;
};

// Reads exactly n bytes at `offset`; false on a short read (the file shrank).
bool pread_all(int fd, void* dst, size_t n, uint64_t offset) {
  auto* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return true;
}

int open_for_read(const std::string& path, uint64_t* size) {
  std::string problem;
  int fd = open_regular_file(path, size, &problem);
  TTQ_INPUT_CHECK(fd >= 0) << path << ": " << problem;
  return fd;
}

Header read_header_fd(int fd, uint64_t file_size, const std::string& path) {
  uint8_t len[8] = {};
  size_t have = static_cast<size_t>(std::min<uint64_t>(file_size, 8));
  TTQ_INPUT_CHECK(pread_all(fd, len, have, 0)) << path << ": read error";
  if (have < 8) parse_header(len, have, file_size, path);  // throws: truncated
  // Validate the length before allocating for the header.
  const uint64_t n = read_u64_le(len);
  if (n < 2 || n > file_size - 8 || n > kMaxHeaderBytes) parse_header(len, 8, file_size, path);  // throws
  std::vector<uint8_t> prefix(8 + n);
  std::memcpy(prefix.data(), len, 8);
  TTQ_INPUT_CHECK(pread_all(fd, prefix.data() + 8, n, 8)) << path << ": truncated inside the header";
  return parse_header(prefix.data(), prefix.size(), file_size, path);
}

}  // namespace

Header read_safetensors_header(const std::string& path) {
  uint64_t size = 0;
  Fd fd(open_for_read(path, &size));
  return read_header_fd(fd.get(), size, path);
}

SafeTensors read_safetensors(const std::string& path) {
  uint64_t size = 0;
  Fd fd(open_for_read(path, &size));
  Header h = read_header_fd(fd.get(), size, path);
  const uint64_t base = 8 + h.header_bytes;
  SafeTensors st;
  st.m_source = path;
  st.m_metadata = std::move(h.metadata);
  for (TensorEntry& e : h.entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    TTQ_INPUT_CHECK(pread_all(fd.get(), t.raw_data(), e.end - e.begin, base + e.begin))
        << path << ": truncated while reading tensor " << quoted_name(e.name);
    st.m_tensors.emplace_back(std::move(e.name), std::move(t));
  }
  return st;
}

namespace {

// Contiguous CPU copies of the tensors and the padded header bytes.
struct Serialized {
  std::string header;  // 8-byte length + padded JSON
  std::vector<Tensor> host;
};

Serialized serialize(const NamedTensors& tensors, const Metadata& metadata, const std::string& label) {
  Json j = Json::object();
  if (!metadata.empty()) {
    Json m = Json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    j["__metadata__"] = std::move(m);
  }
  Serialized s;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    TTQ_CHECK(!name.empty() && name != "__metadata__")
        << label << ": invalid tensor name " << quoted_name(name);
    TTQ_CHECK(seen.insert(name).second) << label << ": duplicate tensor name " << quoted_name(name);
    TTQ_CHECK(t.defined()) << label << ": tensor " << quoted_name(name) << " is undefined";
    Tensor h = t.to(Device::cpu()).contiguous();
    Json e = Json::object();
    e["dtype"] = dtype_name(h.dtype());
    e["shape"] = h.shape();
    e["data_offsets"] = {offset, offset + h.nbytes()};
    offset += h.nbytes();
    j[name] = std::move(e);
    s.host.push_back(std::move(h));
  }
  std::string text;
  try {
    text = j.dump();
  } catch (const Json::exception& e) {  // invalid UTF-8 in a name or metadata
    TTQ_THROW() << label << ": cannot encode header: " << one_line(e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  s.header.resize(8);
  put_u64_le(reinterpret_cast<uint8_t*>(s.header.data()), text.size());
  s.header += text;
  return s;
}

}  // namespace

std::vector<uint8_t> serialize_safetensors(const NamedTensors& tensors, const Metadata& metadata) {
  Serialized s = serialize(tensors, metadata, "serialize_safetensors");
  std::vector<uint8_t> out(s.header.begin(), s.header.end());
  for (const Tensor& t : s.host) {
    const auto* p = static_cast<const uint8_t*>(t.raw_data());
    out.insert(out.end(), p, p + t.nbytes());
  }
  return out;
}

void write_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata) {
  Serialized s = serialize(tensors, metadata, path);
  std::vector<Chunk> chunks{{s.header.data(), s.header.size()}};
  for (const Tensor& t : s.host) chunks.push_back({t.raw_data(), t.nbytes()});
  write_file_atomic(path, chunks);
}

}  // namespace ttq::io
