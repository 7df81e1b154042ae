// Tests of the safetensors reader / writer (engine/io/safetensors.h): round
// trips, the seed files, every hostile-header case of docs/formats.md (one
// line naming the file and the problem), non-files (FIFOs, devices, folders,
// broken links) refused without being read, printable() (engine/error.h), and
// atomic writes. Built and run under ASan/UBSan with -DTTQ_SANITIZE=ON.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <optional>
#include <string>
#include <vector>

#include "engine/io/safetensors.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using io::Metadata;
using io::NamedTensors;

// A fresh folder per test, removed with its files at the end.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = testing::TempDir() + "ttq_st_XXXXXX";
    TTQ_CHECK(::mkdtemp(tmpl.data()) != nullptr) << "mkdtemp failed";
    m_path = tmpl;
  }
  ~TempDir() {
    for (const auto& f : files()) ::unlink((m_path + "/" + f).c_str());
    ::rmdir(m_path.c_str());
  }
  const std::string& path() const { return m_path; }
  std::string file(const std::string& name) const { return m_path + "/" + name; }
  std::vector<std::string> files() const {
    std::vector<std::string> out;
    if (DIR* d = ::opendir(m_path.c_str())) {
      while (dirent* e = ::readdir(d))
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) out.push_back(e->d_name);
      ::closedir(d);
    }
    return out;
  }

 private:
  std::string m_path;
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// A raw file: an explicit header length (default: the JSON's size), the JSON, the data.
std::vector<uint8_t> raw_file(const std::string& json, size_t data_bytes,
                              std::optional<uint64_t> header_len = std::nullopt) {
  uint64_t n = header_len ? *header_len : json.size();
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
  bytes += json;
  for (size_t i = 0; i < data_bytes; ++i) bytes.push_back(static_cast<char>(i * 7 + 1));
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

// Reading `bytes` as a file and parsing them in memory both fail with one line
// that starts with the file's name and contains `expect`.
void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& expect) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  write_bytes(path, bytes);
  for (int mode = 0; mode < 3; ++mode) {
    const std::string label = mode == 2 ? std::string("mem.safetensors") : path;
    try {
      if (mode == 0) io::read_safetensors(path);
      if (mode == 1) io::read_safetensors_header(path);
      if (mode == 2) io::parse_safetensors(bytes.data(), bytes.size(), label);
      ADD_FAILURE() << "accepted a file that should fail with '" << expect << "' (mode " << mode << ")";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(label + ": ", 0), 0u) << msg;
      EXPECT_NE(msg.find(expect), std::string::npos) << "expected '" << expect << "' in: " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      EXPECT_LT(msg.size(), 400u) << msg;
    }
  }
}

TEST(Safetensors, RoundTripKeepsOrderBytesAndMetadata) {
  TempDir dir;
  Generator g(11);
  Tensor a = Tensor::randn({3, 5, 7}, g);
  Tensor b = Tensor::randn({4, 6}, g, DType::F64).transpose(0, 1);  // non-contiguous source
  Tensor c = Tensor::from_vector<uint8_t>({0, 1, 2, 255, 7}, {5});
  Tensor d = Tensor::from_vector<int64_t>({-5, 1ll << 40}, {2});
  Tensor e = Tensor::from_vector<int32_t>({-1, 2, -3}, {1, 3});
  Tensor s = Tensor::scalar(2.5);    // 0-d
  Tensor z = Tensor::zeros({0, 3});  // empty
  NamedTensors in = {{"zeta.weight", a}, {"alpha", b},  {"codes", c}, {"i64", d},
                     {"i32", e},         {"scalar", s}, {"empty", z}};
  Metadata meta = {{"model", "small_densenet"}, {"phase", "ttq"}, {"note", "quote\" backslash\\ \xc3\xa9"}};
  const std::string path = dir.file("rt.safetensors");
  io::write_safetensors(path, in, meta);

  io::SafeTensors st = io::read_safetensors(path);
  ASSERT_EQ(st.tensors().size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(st.tensors()[i].first, in[i].first) << "file order must be write order";
    EXPECT_TRUE(same_bytes(st.tensors()[i].second, in[i].second)) << in[i].first;
  }
  EXPECT_EQ(st.metadata(), meta);
  EXPECT_EQ(st.meta("model"), "small_densenet");
  EXPECT_EQ(st.meta("absent", "x"), "x");
  EXPECT_TRUE(st.contains("alpha"));
  EXPECT_FALSE(st.contains("beta"));
  EXPECT_THROW(st.at("beta"), InputError);

  // Layout: 8-byte length, JSON padded to a multiple of 8, data back to back.
  std::vector<uint8_t> bytes = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  size_t data = 0;
  for (const auto& [name, t] : in) data += t.nbytes();
  EXPECT_EQ(bytes.size(), 8 + n + data);
  EXPECT_EQ(bytes, io::serialize_safetensors(in, meta));
  // In-memory parsing agrees with the file reader.
  io::SafeTensors mem = io::parse_safetensors(bytes.data(), bytes.size(), "mem");
  ASSERT_EQ(mem.tensors().size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) EXPECT_TRUE(same_bytes(mem.tensors()[i].second, in[i].second));
  // Only the target file is left (no temporary).
  EXPECT_EQ(dir.files(), std::vector<std::string>{"rt.safetensors"});
}

TEST(Safetensors, ReadsHandWrittenFileWithPaddingAndShuffledOffsets) {
  // Tensors listed out of data order; header padded with spaces as the seed files are.
  std::string json = R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                     R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"k":"v"}})";
  json.append((8 - json.size() % 8) % 8, ' ');
  std::vector<uint8_t> bytes = raw_file(json, 0);
  float one = 1.5f;
  const auto* p = reinterpret_cast<const uint8_t*>(&one);
  bytes.insert(bytes.end(), p, p + 4);
  bytes.push_back(9);
  bytes.push_back(200);
  io::SafeTensors st = io::parse_safetensors(bytes.data(), bytes.size(), "hand");
  ASSERT_EQ(st.tensors().size(), 2u);
  EXPECT_EQ(st.tensors()[0].first, "a");  // data order
  EXPECT_EQ(st.at("a").to_vector<float>(), std::vector<float>{1.5f});
  EXPECT_EQ(st.at("b").to_vector<uint8_t>(), (std::vector<uint8_t>{9, 200}));
  EXPECT_EQ(st.meta("k"), "v");
}

TEST(Safetensors, ReadsSeedFiles) {
  const std::string dir = test::seed_dir();
  io::SafeTensors sd = io::read_safetensors(dir + "/small_densenet_fp.safetensors");
  EXPECT_EQ(sd.tensors().size(), 321u);
  EXPECT_EQ(sd.tensors().front().first, "features.conv0.weight");
  EXPECT_EQ(sd.at("features.conv0.weight").shape(), (Shape{48, 3, 3, 3}));
  EXPECT_EQ(sd.at("classifier.weight").shape(), (Shape{200, 228}));
  EXPECT_FALSE(sd.metadata().empty());
  io::SafeTensors sq = io::read_safetensors(dir + "/squeezenet_ttq.safetensors");
  EXPECT_EQ(sq.tensors().size(), 127u);
  EXPECT_EQ(sq.at("classifier.1.weight").shape(), (Shape{200, 512, 1, 1}));
  io::SafeTensors ref = io::read_safetensors(dir + "/reference_io.safetensors");
  EXPECT_EQ(ref.at("input").shape(), (Shape{4, 3, 56, 56}));
  // The first input value is numpy RandomState(1234).standard_normal's first draw.
  EXPECT_NEAR(ref.at("input").to_vector<float>()[0], 0.47143516f, 1e-7);
  // Rewriting a seed file reproduces its tensors bit for bit.
  std::vector<uint8_t> again = io::serialize_safetensors(sq.tensors(), sq.metadata());
  io::SafeTensors back = io::parse_safetensors(again.data(), again.size(), "again");
  ASSERT_EQ(back.tensors().size(), sq.tensors().size());
  for (size_t i = 0; i < back.tensors().size(); ++i)
    EXPECT_TRUE(same_bytes(back.tensors()[i].second, sq.tensors()[i].second)) << sq.tensors()[i].first;
}

const char* kGood = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";

TEST(SafetensorsHostile, TruncatedFiles) {
  expect_rejected({}, "truncated");
  expect_rejected({1, 0, 0}, "truncated");
  // The seed-sized good file cut in the data, then cut in the header.
  std::vector<uint8_t> good = raw_file(kGood, 16);
  std::vector<uint8_t> cut(good.begin(), good.end() - 3);
  expect_rejected(cut, "past the end of the data section");
  std::vector<uint8_t> cut_header(good.begin(), good.begin() + 20);
  expect_rejected(cut_header, "runs past the end of the file");
}

TEST(SafetensorsHostile, HeaderLengthBounds) {
  expect_rejected(raw_file("{}", 0, 0), "too small");
  expect_rejected(raw_file("{}", 0, 1), "too small");
  expect_rejected(raw_file(kGood, 16, 1ull << 40), "runs past the end of the file");
  expect_rejected(raw_file(kGood, 16, ~uint64_t{1}), "runs past the end of the file");
  // A header of gigabytes in a file that is that large (sparse): refused by the cap,
  // before any allocation.
  TempDir dir;
  const std::string path = dir.file("huge.safetensors");
  std::vector<uint8_t> head = raw_file("{", 0, 3ull << 30);
  write_bytes(path, head);
  ASSERT_EQ(::truncate(path.c_str(), (3ll << 30) + 64), 0);
  try {
    io::read_safetensors(path);
    ADD_FAILURE() << "accepted a 3 GiB header";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the limit"), std::string::npos) << e.what();
  }
}

TEST(SafetensorsHostile, InvalidJson) {
  expect_rejected(raw_file(R"({"w": )", 0), "invalid JSON");
  expect_rejected(raw_file("{\"w\":\n{\"dtype\" 1}}", 0), "invalid JSON");
  expect_rejected(raw_file(std::string("{\"a\x01\":\xff}"), 0), "invalid JSON");
  expect_rejected(raw_file("[1, 2]", 0), "not an object");
  expect_rejected(raw_file("  ", 0), "invalid JSON");
  expect_rejected(raw_file(R"({"w":{"dtype":"F32"}} trailing)", 0), "invalid JSON");
  std::string deep(200, '[');
  expect_rejected(raw_file("{\"a\":" + deep, 0), "nests deeper");
}

TEST(SafetensorsHostile, BadEntries) {
  expect_rejected(raw_file(R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2),
                  "unknown dtype 'Q4'");
  expect_rejected(raw_file(R"({"w":{"dtype":7,"shape":[2],"data_offsets":[0,2]}})", 2),
                  "dtype is not a string");
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", 16),
                  "shape [2, 3] x F32 = 24 bytes but data_offsets [0, 16] hold 16");
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "non-negative");
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4), "non-negative");
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":"4","data_offsets":[0,4]}})", 4), "not an array");
  expect_rejected(
      raw_file(
          R"({"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],"data_offsets":[0,0]}})",
          0),
      "too large");
  expect_rejected(raw_file(R"({"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}})", 0),
                  "too large");
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[1]}})", 4), "needs the fields");
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4),
                  "unknown field 'x'");
  expect_rejected(raw_file(R"({"w":[1,2]})", 0), "not a JSON object");
  expect_rejected(raw_file(R"({"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1), "empty name");
  expect_rejected(raw_file(R"({"__metadata__":{"a":1}})", 0), "is not a string");
  expect_rejected(raw_file(R"({"__metadata__":[1]})", 0), "not a JSON object");
  // A name with a newline is reported on one line.
  expect_rejected(raw_file("{\"a\\nb\":{\"dtype\":\"Q\",\"shape\":[],\"data_offsets\":[0,0]}}", 0),
                  "tensor 'a\\x0ab'");
}

TEST(SafetensorsHostile, BadRanges) {
  expect_rejected(raw_file(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 3),
                  "past the end of the data section (3 bytes)");
  expect_rejected(raw_file(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}})", 8),
                  "end before begin");
  expect_rejected(raw_file(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0]}})", 8), "two non-negative");
  expect_rejected(raw_file(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[-4,0]}})", 8),
                  "two non-negative");
  expect_rejected(raw_file(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[99,99]}})", 8), "past the end");
  expect_rejected(raw_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                           8),
                  "tensors 'a' [0, 4) and 'b' [2, 6) overlap");
  expect_rejected(raw_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
                           8),
                  "overlap");
}

TEST(SafetensorsHostile, DuplicateNames) {
  expect_rejected(raw_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                           R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                           2),
                  "duplicate key 'a'");
  expect_rejected(raw_file(R"({"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
                  "duplicate key 'dtype'");
}

TEST(SafetensorsHostile, MissingFileAndDirectory) {
  TempDir dir;
  try {
    io::read_safetensors(dir.file("absent.safetensors"));
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("absent.safetensors: cannot open"), std::string::npos) << e.what();
  }
  try {
    io::read_safetensors(dir.path());
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
}

// Non-files are refused by type before anything is read: a FIFO must not block
// the reader (if it does, the test unblocks it by opening the write end, and fails).
TEST(SafetensorsHostile, FifoDeviceAndBrokenLinkAreRefusedWithoutReading) {
  TempDir dir;
  const std::string fifo = dir.file("pipe.safetensors"), link = dir.file("gone.safetensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ASSERT_EQ(::symlink(dir.file("nowhere").c_str(), link.c_str()), 0);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {fifo, "not a regular file (a FIFO)"},
      {"/dev/zero", "not a regular file (a character device)"},
      {"/dev/urandom", "not a regular file (a character device)"},
      {dir.path(), "not a regular file (a directory)"},
      {link, "broken symbolic link"},
  };
  for (const auto& [path, reason] : cases) {
    for (int mode = 0; mode < 2; ++mode) {
      auto result = std::async(std::launch::async, [&, mode] {
        try {
          if (mode == 0) io::read_safetensors(path);
          if (mode == 1) io::read_safetensors_header(path);
        } catch (const InputError& e) {
          return std::string(e.what());
        }
        return std::string("accepted");
      });
      if (result.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
        const int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);  // gives the blocked reader an end of file
        if (w >= 0) ::close(w);
        ADD_FAILURE() << path << ": the reader blocked";
      }
      EXPECT_EQ(result.get(), path + ": " + reason) << "mode " << mode;
    }
  }
  ::unlink(fifo.c_str());
  ::unlink(link.c_str());
}

// printable(): the one-line rule for text from files, and ttq::Error applying it.
TEST(ErrorText, ControlCharactersAreEscapedAndUtf8IsKept) {
  EXPECT_EQ(printable("plain text: caf\xc3\xa9 \xe2\x82\xac"), "plain text: caf\xc3\xa9 \xe2\x82\xac");
  EXPECT_EQ(printable("a\nb\rc\td\x1b[31m\x7f"), "a\\x0ab\\x0dc\\x09d\\x1b[31m\\x7f");
  EXPECT_EQ(printable(std::string("nul\0end", 7)), "nul\\x00end");
  EXPECT_EQ(printable("c1 \xc2\x9b csi"), "c1 \\xc2\\x9b csi");  // U+009B, a C1 control
  EXPECT_EQ(printable("stray \x9b byte"), "stray \\x9b byte");   // not UTF-8
  EXPECT_EQ(printable("cut \xe2\x82"), "cut \\xe2\\x82");        // a sequence cut short
  EXPECT_EQ(printable("overlong \xc0\xaf"), "overlong \\xc0\\xaf");
  const InputError e("file\nname: bad");
  EXPECT_EQ(std::string(e.what()), "file\\x0aname: bad");
  try {
    TTQ_INPUT_ERROR() << "x.safetensors: tensor " << std::string("a\nb");
  } catch (const InputError& err) {
    EXPECT_EQ(std::string(err.what()), "x.safetensors: tensor a\\x0ab");
  }
}

TEST(Safetensors, AtomicWriteKeepsOldFileWhenTheWriteFails) {
  TempDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  Generator g(3);
  NamedTensors old_content = {{"w", Tensor::randn({16}, g)}};
  io::write_safetensors(path, old_content, {{"epoch", "1"}});
  const std::vector<uint8_t> before = read_bytes(path);

  // A file size limit below the new file's size makes write() fail with EFBIG
  // part-way through, as a full disk would.
  struct sigaction ignore {
  }, previous{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGXFSZ, &ignore, &previous), 0);
  rlimit old_limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  rlimit small = old_limit;
  small.rlim_cur = 64 * 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string error;
  try {
    io::write_safetensors(path, {{"w", Tensor::randn({1 << 20}, g)}}, {{"epoch", "2"}});
  } catch (const InputError& e) {
    error = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  ::sigaction(SIGXFSZ, &previous, nullptr);

  EXPECT_EQ(error.rfind(path + ": write failed", 0), 0u) << error;
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(dir.files(), std::vector<std::string>{"ckpt.safetensors"}) << "temporary file left behind";
  io::SafeTensors st = io::read_safetensors(path);
  EXPECT_EQ(st.meta("epoch"), "1");
  EXPECT_TRUE(same_bytes(st.at("w"), old_content[0].second));

  // A successful rewrite replaces it.
  io::write_safetensors(path, {{"v", Tensor::ones({2})}}, {{"epoch", "3"}});
  EXPECT_EQ(io::read_safetensors(path).meta("epoch"), "3");
}

TEST(Safetensors, WriteIntoMissingFolderIsOneLine) {
  try {
    io::write_safetensors("/nonexistent-folder-ttq/x.safetensors", {{"a", Tensor::ones({1})}});
    ADD_FAILURE();
  } catch (const InputError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind("/nonexistent-folder-ttq/x.safetensors: cannot create a temporary file", 0), 0u)
        << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
}

TEST(Safetensors, WriterRejectsBadNames) {
  EXPECT_THROW(io::serialize_safetensors({{"a", Tensor::ones({1})}, {"a", Tensor::ones({1})}}), Error);
  EXPECT_THROW(io::serialize_safetensors({{"__metadata__", Tensor::ones({1})}}), Error);
  EXPECT_THROW(io::serialize_safetensors({{"", Tensor::ones({1})}}), Error);
  EXPECT_THROW(io::serialize_safetensors({{"x", Tensor()}}), Error);
}

}  // namespace
}  // namespace ttq
