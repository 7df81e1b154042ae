// TensorBoard event files (train/tensorboard.h). The protobuf wire format is
// written field by field: a key byte (field number << 3 | wire type: 0 varint,
// 1 64-bit, 2 length-delimited, 5 32-bit), then the value, little-endian. The
// field numbers are tensorflow/core/util/event.proto's and summary.proto's.
// Tests: tests/test_tensorboard.cpp, tests/peer_tensorboard.py.
#include "train/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <ctime>
#include <iostream>

#include "engine/error.h"
#include "engine/io/write_file.h"

namespace ttq::train::tb {

namespace {

constexpr std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrcTable = make_crc_table();

// ---- protobuf wire format ----

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, int field, int wire) {
  put_varint(out, static_cast<uint64_t>(field << 3 | wire));
}
template <typename T>
void put_le(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // the engine requires a little-endian host
  out.append(b, sizeof(T));
}
void put_double(std::string& out, int field, double v) {
  put_key(out, field, 1);
  put_le(out, v);
}
void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}
void put_packed_doubles(std::string& out, int field, const std::vector<double>& v) {
  std::string body;
  for (double d : v) put_le(body, d);
  put_bytes(out, field, body);
}

// Event: wall_time = 1 (double), step = 2 (int64), then one of file_version = 3,
// summary = 5, session_log = 6.
std::string event_head(double wall_time, int64_t step) {
  std::string e;
  put_double(e, 1, wall_time);
  if (step != 0) {
    put_key(e, 2, 0);
    put_varint(e, static_cast<uint64_t>(step));
  }
  return e;
}

// Summary { repeated Value value = 1 } holding one Value { tag = 1, ... }.
std::string summary_event(double wall_time, int64_t step, const std::string& value) {
  std::string summary;
  put_bytes(summary, 1, value);
  std::string e = event_head(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

double now_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = kCrcTable[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

std::string tfrecord(std::string_view payload) {
  std::string r;
  put_le(r, static_cast<uint64_t>(payload.size()));
  put_le(r, masked_crc32c(r.data(), 8));
  r.append(payload);
  put_le(r, masked_crc32c(payload.data(), payload.size()));
  return r;
}

Histogram make_histogram(const float* values, int64_t n, int bins) {
  TTQ_CHECK(bins >= 1 && n >= 0) << "make_histogram: bins " << bins << ", n " << n;
  Histogram h;
  h.min = INFINITY;
  h.max = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    const double v = values[i];
    if (!std::isfinite(v)) continue;
    h.min = std::min(h.min, v);
    h.max = std::max(h.max, v);
    h.num += 1;
    h.sum += v;
    h.sum_squares += v * v;
  }
  if (h.num == 0) {
    h.min = h.max = 0;
    return h;
  }
  const int nb = h.max > h.min ? bins : 1;
  const double width = (h.max - h.min) / nb;
  h.counts.assign(static_cast<size_t>(nb), 0.0);
  for (int b = 0; b < nb; ++b) h.limits.push_back(b + 1 == nb ? h.max : h.min + width * (b + 1));
  for (int64_t i = 0; i < n; ++i) {
    const double v = values[i];
    if (!std::isfinite(v)) continue;
    // The first bucket whose right edge is >= v (buckets are (left, right]).
    const auto it = std::lower_bound(h.limits.begin(), h.limits.end(), v);
    h.counts[static_cast<size_t>(std::min<std::ptrdiff_t>(it - h.limits.begin(), nb - 1))] += 1;
  }
  return h;
}

std::string file_version_event(double wall_time, std::string_view version) {
  std::string e = event_head(wall_time, 0);
  put_bytes(e, 3, version);
  return e;
}

std::string scalar_event(double wall_time, int64_t step, std::string_view tag, float value) {
  // Value: tag = 1, simple_value = 2 (float).
  std::string v;
  put_bytes(v, 1, tag);
  put_key(v, 2, 5);
  put_le(v, value);
  return summary_event(wall_time, step, v);
}

std::string histogram_event(double wall_time, int64_t step, std::string_view tag, const Histogram& h) {
  // HistogramProto: min 1, max 2, num 3, sum 4, sum_squares 5, bucket_limit 6, bucket 7 (packed doubles).
  std::string hp;
  put_double(hp, 1, h.min);
  put_double(hp, 2, h.max);
  put_double(hp, 3, h.num);
  put_double(hp, 4, h.sum);
  put_double(hp, 5, h.sum_squares);
  put_packed_doubles(hp, 6, h.limits);
  put_packed_doubles(hp, 7, h.counts);
  // Value: tag = 1, histo = 5.
  std::string v;
  put_bytes(v, 1, tag);
  put_bytes(v, 5, hp);
  return summary_event(wall_time, step, v);
}

std::string session_start_event(double wall_time, int64_t step) {
  // SessionLog: status = 1 (enum; START = 1).
  std::string sl;
  put_key(sl, 1, 0);
  put_varint(sl, 1);
  std::string e = event_head(wall_time, step);
  put_bytes(e, 6, sl);
  return e;
}

// ---- the writer ----

namespace {
constexpr size_t kFlushBytes = 64 * 1024;
constexpr double kFlushSeconds = 5;
}  // namespace

EventWriter::EventWriter(const std::string& dir) {
  char host[256] = "localhost";
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  host[sizeof host - 1] = 0;
  std::string h(host);
  std::replace(h.begin(), h.end(), '/', '_');
  const std::string base = dir + "/events.out.tfevents." +
                           std::to_string(static_cast<int64_t>(std::time(nullptr))) + "." + h + "." +
                           std::to_string(::getpid()) + ".ttq";
  // A second writer of this process within the same second gets a file of its own.
  m_path = base;
  for (int k = 1; ::access(m_path.c_str(), F_OK) == 0; ++k) m_path = base + "." + std::to_string(k);
  io::append_bytes(m_path, tfrecord(file_version_event(now_seconds())), /*sync=*/true);
  m_last_write = std::chrono::steady_clock::now();
}

EventWriter::~EventWriter() {
  try {
    flush();
  } catch (const std::exception& e) {
    std::cerr << "ttq: " << e.what() << "\n";
  }
}

void EventWriter::add(const std::string& event) {
  m_pending += tfrecord(event);
  const double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - m_last_write).count();
  if (m_pending.size() >= kFlushBytes || since >= kFlushSeconds) flush();
}

void EventWriter::scalar(std::string_view tag, int64_t step, double value) {
  add(scalar_event(now_seconds(), step, tag, static_cast<float>(value)));
}

void EventWriter::histogram(std::string_view tag, int64_t step, const float* values, int64_t n) {
  add(histogram_event(now_seconds(), step, tag, make_histogram(values, n)));
}

void EventWriter::session_start(int64_t step) { add(session_start_event(now_seconds(), step)); }

void EventWriter::flush(bool sync) {
  m_last_write = std::chrono::steady_clock::now();
  if (m_pending.empty() && !sync) return;
  std::string bytes;
  bytes.swap(m_pending);
  io::append_bytes(m_path, bytes, sync);
}

bool is_event_file(const std::string& name) { return name.find("tfevents") != std::string::npos; }

}  // namespace ttq::train::tb
