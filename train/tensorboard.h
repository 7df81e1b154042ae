// TensorBoard event files, written by hand: the TFRecord framing (length,
// masked CRC32C of the length, data, masked CRC32C of the data) around Event
// protobuf messages encoded field by field (file_version first, then scalars as
// simple_value, histograms as HistogramProto, and SessionLog START where a
// resumed run takes over). What TensorBoard, PyTorch's SummaryWriter, Lightning
// and Keras read and write; docs/formats.md, "TensorBoard event file".
// Tests: tests/test_tensorboard.cpp (CRC32C vectors, hand-computed bytes),
// tests/peer_tensorboard.py (TensorBoard's own reader on a real run).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ttq::train::tb {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), continuing from `crc`
// (0 to start). crc32c("123456789") = 0xE3069283.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
// TFRecord's masked CRC: ((c >> 15) | (c << 17)) + 0xA282EAD8, c = crc32c(data).
uint32_t masked_crc32c(const void* data, size_t size);
// One TFRecord: uint64 length (little-endian), masked CRC of those 8 bytes, the
// payload, masked CRC of the payload.
std::string tfrecord(std::string_view payload);

// tensorflow.HistogramProto: bucket i counts the values in (limit[i-1], limit[i]]
// (the first from -inf); limit.back() is max.
struct Histogram {
  double min = 0, max = 0, num = 0, sum = 0, sum_squares = 0;
  std::vector<double> limits, counts;
};
// `bins` equal-width buckets over [min, max] of the finite values (non-finite
// ones are left out); one bucket when they are all equal; nothing when none.
// requires: bins >= 1.
Histogram make_histogram(const float* values, int64_t n, int bins = 30);

// Encoded tensorflow.Event messages (the payload a TFRecord frames).
std::string file_version_event(double wall_time, std::string_view version = "brain.Event:2");
std::string scalar_event(double wall_time, int64_t step, std::string_view tag, float value);
std::string histogram_event(double wall_time, int64_t step, std::string_view tag, const Histogram& h);
// SessionLog START at `step`: TensorBoard then drops what an earlier writer
// logged at this step or later (a run resumed from an older checkpoint).
std::string session_start_event(double wall_time, int64_t step);

// An event file events.out.tfevents.<seconds>.<host>.<pid>.ttq[.N] in a folder (.N
// when that name is taken),
// opened by the constructor (which writes the file_version event). Events are
// buffered and written when ~64 KiB are pending, every few seconds, and on
// flush(); flush(true) also fsyncs. Every write is checked: a failure throws one
// ttq::InputError line naming the file.
class EventWriter {
 public:
  explicit EventWriter(const std::string& dir);
  ~EventWriter();  // flushes; reports a failure on stderr (never throws)
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  void scalar(std::string_view tag, int64_t step, double value);
  void histogram(std::string_view tag, int64_t step, const float* values, int64_t n);
  void session_start(int64_t step);
  void flush(bool sync = false);
  const std::string& path() const { return m_path; }

 private:
  void add(const std::string& event);
  std::string m_path;
  int m_fd = -1;
  std::string m_pending;
  std::chrono::steady_clock::time_point m_last_write;
};

// Whether a file name is a TensorBoard event file (holds "tfevents").
bool is_event_file(const std::string& name);

}  // namespace ttq::train::tb
