// The TensorBoard event writer (train/tensorboard.h): CRC-32C against published
// vectors, the TFRecord framing and the Event / Summary / HistogramProto
// encodings against bytes worked out by hand from the .proto field numbers, and
// a file written by EventWriter read back record by record. TensorBoard's own
// reader checks a real run's file in tests/peer_tensorboard.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "engine/error.h"
#include "tests/test_util.h"
#include "train/tensorboard.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using namespace ttq::train::tb;

namespace {

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int v : b) s.push_back(static_cast<char>(v));
  return s;
}
std::string le64(double d) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &d, 8);
  return s;
}
std::string le32(uint32_t v) {
  std::string s(4, '\0');
  std::memcpy(s.data(), &v, 4);
  return s;
}

}  // namespace

TEST(TensorBoard, Crc32cKnownVectors) {
  // RFC 3720 (iSCSI) B.4 and the common check value.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  std::string zeros(32, '\0'), ones(32, '\xff'), inc(32, '\0'), dec(32, '\0');
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<char>(i);
    dec[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(crc32c(inc.data(), 32), 0x46DD794Eu);
  EXPECT_EQ(crc32c(dec.data(), 32), 0x113FDB5Cu);
  EXPECT_EQ(crc32c("", 0), 0u);
  // Continuing a CRC over a split buffer gives the whole buffer's.
  EXPECT_EQ(crc32c("6789", 4, crc32c("12345", 5)), 0xE3069283u);
}

TEST(TensorBoard, MaskedCrcIsTheTfRecordRotation) {
  const uint32_t c = 0xE3069283u;
  const uint32_t want = ((c >> 15) | (c << 17)) + 0xA282EAD8u;
  EXPECT_EQ(masked_crc32c("123456789", 9), want);
}

TEST(TensorBoard, TfRecordFraming) {
  const std::string payload = "abc";
  const std::string r = tfrecord(payload);
  ASSERT_EQ(r.size(), 8u + 4 + 3 + 4);
  const std::string len = bytes({3, 0, 0, 0, 0, 0, 0, 0});
  EXPECT_EQ(r.substr(0, 8), len);
  EXPECT_EQ(r.substr(8, 4), le32(masked_crc32c(len.data(), 8)));
  EXPECT_EQ(r.substr(12, 3), payload);
  EXPECT_EQ(r.substr(15, 4), le32(masked_crc32c("abc", 3)));
}

TEST(TensorBoard, FileVersionEventBytes) {
  // Event { wall_time (1, fixed64) = 2.0, file_version (3, bytes) = "brain.Event:2" }
  const std::string want = bytes({0x09}) + le64(2.0) + bytes({0x1a, 13}) + "brain.Event:2";
  EXPECT_EQ(file_version_event(2.0), want);
}

TEST(TensorBoard, ScalarEventBytes) {
  // Value { tag (1) = "a", simple_value (2, fixed32) = 2.0f } = 0a 01 61 15 00 00 00 40 (8 bytes)
  // Summary { value (1) = Value } = 0a 08 + 8 bytes
  // Event { wall_time (1) = 1.5, step (2, varint) = 300 = ac 02, summary (5) = 2a 0a + 10 bytes }
  const std::string want = bytes({0x09}) + le64(1.5) + bytes({0x10, 0xac, 0x02}) +
                           bytes({0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, 'a', 0x15, 0x00, 0x00, 0x00, 0x40});
  EXPECT_EQ(scalar_event(1.5, 300, "a", 2.0f), want);
}

TEST(TensorBoard, HistogramEventBytes) {
  Histogram h;
  h.min = -1;
  h.max = 2;
  h.num = 3;
  h.sum = 1;
  h.sum_squares = 5;
  h.limits = {0.5, 2};
  h.counts = {1, 2};
  // HistogramProto: min 09, max 11, num 19, sum 21, sum_squares 29 (fixed64 each),
  // bucket_limit 32 + len 16 + 2 doubles, bucket 3a + len 16 + 2 doubles: 5 * 9 + 2 * 18 = 81 bytes.
  std::string hp = bytes({0x09}) + le64(-1) + bytes({0x11}) + le64(2) + bytes({0x19}) + le64(3) +
                   bytes({0x21}) + le64(1) + bytes({0x29}) + le64(5) + bytes({0x32, 16}) + le64(0.5) +
                   le64(2) + bytes({0x3a, 16}) + le64(1) + le64(2);
  ASSERT_EQ(hp.size(), 81u);
  // Value { tag = "w" (0a 01 77), histo (5) = 2a 51 + 81 } = 86 bytes; Summary 0a 56 + 86 = 88.
  const std::string value = bytes({0x0a, 0x01, 'w', 0x2a, 81}) + hp;
  const std::string summary = bytes({0x0a, 86}) + value;
  const std::string want = bytes({0x09}) + le64(0.25) + bytes({0x10, 7, 0x2a, 88}) + summary;
  EXPECT_EQ(histogram_event(0.25, 7, "w", h), want);
}

TEST(TensorBoard, SessionStartEventBytes) {
  // Event { wall_time, step = 5, session_log (6) = SessionLog { status (1) = START (1) } }
  const std::string want = bytes({0x09}) + le64(3.0) + bytes({0x10, 5, 0x32, 2, 0x08, 1});
  EXPECT_EQ(session_start_event(3.0, 5), want);
}

TEST(TensorBoard, HistogramCountsEveryFiniteValueOnce) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> v(1001);
  for (float& x : v) x = nd(rng);
  v[7] = NAN;
  v[9] = INFINITY;
  const Histogram h = make_histogram(v.data(), static_cast<int64_t>(v.size()), 17);
  ASSERT_EQ(h.limits.size(), 17u);
  ASSERT_EQ(h.counts.size(), 17u);
  EXPECT_EQ(h.num, 999);
  double mn = INFINITY, mx = -INFINITY, sum = 0, sq = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) continue;
    mn = std::min<double>(mn, v[i]);
    mx = std::max<double>(mx, v[i]);
    sum += v[i];
    sq += double(v[i]) * v[i];
  }
  EXPECT_EQ(h.min, mn);
  EXPECT_EQ(h.max, mx);
  EXPECT_EQ(h.limits.back(), mx);
  EXPECT_NEAR(h.sum, sum, 1e-9);
  EXPECT_NEAR(h.sum_squares, sq, 1e-9);
  // Each bucket holds exactly the values in (limit[i-1], limit[i]], counted naively.
  for (size_t b = 0; b < h.limits.size(); ++b) {
    const double lo = b == 0 ? -INFINITY : h.limits[b - 1];
    double n = 0;
    for (float x : v)
      if (std::isfinite(x) && x > lo && x <= h.limits[b]) n += 1;
    EXPECT_EQ(h.counts[b], n) << "bucket " << b;
  }
  // All equal: one bucket; none finite: none.
  std::vector<float> same(5, 0.5f);
  const Histogram one = make_histogram(same.data(), 5, 30);
  ASSERT_EQ(one.counts.size(), 1u);
  EXPECT_EQ(one.counts[0], 5);
  float nan = NAN;
  EXPECT_TRUE(make_histogram(&nan, 1, 30).counts.empty());
}

TEST(TensorBoard, WriterFileReadsBackRecordByRecord) {
  const fs::path dir = fs::temp_directory_path() / ("ttq_tb_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string path;
  {
    EventWriter w(dir.string());
    path = w.path();
    EXPECT_TRUE(is_event_file(fs::path(path).filename().string()));
    w.scalar("train/loss", 1, 0.5);
    w.scalar("train/loss", 2, 0.25);
    const float vals[4] = {1, 2, 3, 4};
    w.histogram("w", 2, vals, 4);
    w.session_start(3);
  }  // the destructor flushes
  std::ifstream f(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> events;
  size_t pos = 0;
  while (pos < data.size()) {
    ASSERT_LE(pos + 12, data.size());
    uint64_t len;
    std::memcpy(&len, data.data() + pos, 8);
    uint32_t lcrc, dcrc;
    std::memcpy(&lcrc, data.data() + pos + 8, 4);
    EXPECT_EQ(lcrc, masked_crc32c(data.data() + pos, 8));
    ASSERT_LE(pos + 12 + len + 4, data.size());
    std::memcpy(&dcrc, data.data() + pos + 12 + len, 4);
    EXPECT_EQ(dcrc, masked_crc32c(data.data() + pos + 12, len));
    events.push_back(data.substr(pos + 12, len));
    pos += 12 + len + 4;
  }
  ASSERT_EQ(events.size(), 5u);
  EXPECT_NE(events[0].find("brain.Event:2"), std::string::npos);  // the file version comes first
  EXPECT_EQ(events[1].substr(9), scalar_event(0, 1, "train/loss", 0.5f).substr(9));  // all but wall_time
  EXPECT_EQ(events[2].substr(9), scalar_event(0, 2, "train/loss", 0.25f).substr(9));
  EXPECT_EQ(events[4].substr(9), session_start_event(0, 3).substr(9));
  fs::remove_all(dir);
}

TEST(TensorBoard, WriterInAMissingFolderIsOneLineNamingTheFile) {
  try {
    EventWriter w("/nonexistent-ttq-folder/run");
    FAIL() << "no error";
  } catch (const ttq::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-ttq-folder/run/events.out.tfevents."),
              std::string::npos)
        << e.what();
  }
}

// ---- the trainer's event files ----

namespace {

// The tags of a file's scalar and histogram events and the steps of the SessionLog
// STARTs, decoded with the few wire-format rules the writer uses.
struct FileEvents {
  std::map<std::string, std::vector<int64_t>> steps;  // tag -> steps
  std::vector<int64_t> session_starts;
};

uint64_t varint(const std::string& s, size_t& p) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    const auto b = static_cast<uint8_t>(s.at(p++));
    v |= uint64_t(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
}

FileEvents read_events(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  const std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  FileEvents out;
  for (size_t pos = 0; pos < data.size();) {
    uint64_t len;
    std::memcpy(&len, data.data() + pos, 8);
    const std::string e = data.substr(pos + 12, len);
    pos += 12 + len + 4;
    int64_t step = 0;
    for (size_t p = 0; p < e.size();) {
      const uint64_t key = varint(e, p);
      const int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
      if (wire == 1) {
        p += 8;
      } else if (wire == 0) {
        const uint64_t v = varint(e, p);
        if (field == 2) step = static_cast<int64_t>(v);
      } else if (wire == 2) {
        const uint64_t n = varint(e, p);
        const std::string body = e.substr(p, n);
        p += n;
        if (field == 6) out.session_starts.push_back(step);
        if (field == 5) {  // Summary { value { tag ... } }: the tag is the first field of the value
          size_t q = 0;
          varint(body, q);  // value key
          varint(body, q);  // value length
          varint(body, q);  // tag key
          const uint64_t tl = varint(body, q);
          out.steps[body.substr(q, tl)].push_back(step);
        }
      } else {
        ADD_FAILURE() << "unexpected wire type " << wire;
        return out;
      }
    }
  }
  return out;
}

std::vector<std::string> event_files(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (is_event_file(e.path().filename().string())) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

ttq::train::TrainOptions tiny_run(const std::string& data, const std::string& out) {
  ttq::train::TrainOptions o;
  o.model = "small_densenet";
  o.data = "mnist:" + data;
  o.out = out;
  o.device = "cpu";
  o.epochs = 2;
  o.batch = 16;
  o.lr = 0.05;
  o.seed = std::random_device{}() % 1000;
  o.workers = 1;
  o.val_size = 10;
  o.progress = false;
  return o;
}

}  // namespace

TEST(TensorBoard, TrainerWritesResumesOverwritesAndOptsOut) {
  const fs::path dir = fs::temp_directory_path() / ("ttq_tb_run_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string data = ttq::test::make_tiny_idx((dir / "data").string(), 42, 8);
  std::ostringstream log;
  // 32 training images in batches of 16: 2 steps per epoch; stopped after step 3, resumed.
  ttq::train::TrainOptions o = tiny_run(data, (dir / "run").string());
  o.stop_after_steps = 3;
  EXPECT_EQ(ttq::train::run_training(o, log).exit_code, 130);
  ttq::train::clear_stop_request();
  std::vector<std::string> files = event_files(dir / "run");
  ASSERT_EQ(files.size(), 1u);
  const std::string files_first = files[0];
  FileEvents first = read_events(files[0]);
  EXPECT_EQ(first.steps["train/loss"], (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(first.steps["epoch/val_top1"], (std::vector<int64_t>{2}));
  ttq::train::TrainOptions resume = tiny_run(data, (dir / "run").string());
  resume.seed = o.seed;
  resume.resume = true;
  EXPECT_EQ(ttq::train::run_training(resume, log).exit_code, 0);
  files = event_files(dir / "run");
  ASSERT_EQ(files.size(), 2u);
  // The newer file: the other one (a file name already taken gets a .N suffix).
  FileEvents second = read_events(files[0] == files_first ? files[1] : files[0]);
  EXPECT_EQ(second.session_starts, (std::vector<int64_t>{4}));  // the checkpoint had step 3
  EXPECT_EQ(second.steps["train/loss"], (std::vector<int64_t>{4}));
  EXPECT_EQ(second.steps["epoch/val_top1"], (std::vector<int64_t>{4}));
  EXPECT_EQ(second.steps["test/top1"], (std::vector<int64_t>{4}));

  // --overwrite: the old run's event files go, one new one comes.
  ttq::train::TrainOptions again = tiny_run(data, (dir / "run").string());
  again.overwrite = true;
  again.epochs = 1;
  ttq::train::run_training(again, log);
  files = event_files(dir / "run");
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(read_events(files[0]).steps["train/loss"], (std::vector<int64_t>{1, 2}));

  // --no-tensorboard: none.
  ttq::train::TrainOptions none = tiny_run(data, (dir / "none").string());
  none.epochs = 1;
  none.tensorboard = false;
  ttq::train::run_training(none, log);
  EXPECT_TRUE(event_files(dir / "none").empty());
  fs::remove_all(dir);
}
