// Checked file writes (engine/io/write_file.h): atomic replacement, appends
// that never leave half a line, and both under a full disk, simulated with
// RLIMIT_FSIZE in a child process (SIGXFSZ ignored, so write() fails with
// EFBIG); same_file. The tools under a full disk: tests/test_tool_outputs.cpp.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "engine/error.h"
#include "engine/io/safetensors.h"
#include "engine/io/write_file.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs `f` in a child whose files may not grow past `limit` bytes. Returns 0
// when f returned, 2 when it threw ttq::InputError, 1 for anything else.
int run_with_file_limit(int64_t limit, const std::function<void()>& f) {
  const pid_t pid = fork();
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl {};
    rl.rlim_cur = rl.rlim_max = static_cast<rlim_t>(limit);
    setrlimit(RLIMIT_FSIZE, &rl);
    int code = 0;
    try {
      f();
    } catch (const InputError&) {
      code = 2;
    } catch (...) {
      code = 1;
    }
    _exit(code);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class WriteFile : public ::testing::Test {
 protected:
  void SetUp() override {
    m_dir = fs::temp_directory_path() / ("ttq_write_file_" + std::to_string(getpid()));
    fs::remove_all(m_dir);
    fs::create_directories(m_dir);
  }
  void TearDown() override { fs::remove_all(m_dir); }
  // Nothing but `names` in the folder (no temporary file left behind).
  void expect_only(std::vector<std::string> names) {
    std::vector<std::string> have;
    for (const auto& e : fs::directory_iterator(m_dir)) have.push_back(e.path().filename().string());
    std::sort(have.begin(), have.end());
    std::sort(names.begin(), names.end());
    EXPECT_EQ(have, names);
  }
  fs::path m_dir;
};

TEST_F(WriteFile, AtomicWriteReplacesTheFile) {
  const std::string p = (m_dir / "a.json").string();
  io::write_file_atomic(p, "first\n");
  EXPECT_EQ(slurp(p), "first\n");
  io::write_file_atomic(p, std::vector<io::Chunk>{{"sec", 3}, {"ond\n", 4}});
  EXPECT_EQ(slurp(p), "second\n");
  io::write_file_atomic(p, "");
  EXPECT_EQ(slurp(p), "");
  EXPECT_EQ(fs::status(p).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read);
  expect_only({"a.json"});
}

TEST_F(WriteFile, AFullDiskLeavesThePreviousContent) {
  const std::string p = (m_dir / "config.json").string();
  io::write_file_atomic(p, "{\"old\": true}\n");
  const std::string big(64 * 1024, 'x');
  EXPECT_EQ(run_with_file_limit(4096, [&] { io::write_file_atomic(p, big); }), 2);
  EXPECT_EQ(slurp(p), "{\"old\": true}\n");
  expect_only({"config.json"});
  // The message names the file and the reason.
  EXPECT_EQ(run_with_file_limit(4096,
                                [&] {
                                  try {
                                    io::write_file_atomic(p, big);
                                  } catch (const InputError& e) {
                                    if (std::string(e.what()) != p + ": write failed: File too large")
                                      _exit(3);
                                    throw;
                                  }
                                }),
            2);
}

TEST_F(WriteFile, AMissingFolderIsAnInputError) {
  EXPECT_THROW(io::write_file_atomic((m_dir / "no" / "x.json").string(), "x"), InputError);
  EXPECT_THROW(io::append_line((m_dir / "no" / "x.jsonl").string(), "x"), InputError);
  EXPECT_THROW(io::write_file_atomic((m_dir / "").string(), "x"), InputError);
}

TEST_F(WriteFile, AppendNeverLeavesHalfALine) {
  const std::string p = (m_dir / "metrics.jsonl").string();
  io::append_line(p, "{\"epoch\": 1}");
  io::append_line(p, "{\"epoch\": 2}");
  EXPECT_EQ(slurp(p), "{\"epoch\": 1}\n{\"epoch\": 2}\n");
  // The file may grow by 10 more bytes: a 40-byte line gets cut back off.
  const int64_t size = static_cast<int64_t>(fs::file_size(p));
  EXPECT_EQ(run_with_file_limit(size + 10, [&] { io::append_line(p, std::string(40, 'y')); }), 2);
  EXPECT_EQ(slurp(p), "{\"epoch\": 1}\n{\"epoch\": 2}\n");
  expect_only({"metrics.jsonl"});
  EXPECT_THROW(io::append_line(p, "two\nlines"), Error);
}

TEST_F(WriteFile, SafetensorsUnderAFullDiskKeepThePreviousFile) {
  const std::string p = (m_dir / "last.safetensors").string();
  io::write_safetensors(p, {{"w", test::rand({4, 4}, 1)}});
  const std::string before = slurp(p);
  EXPECT_EQ(run_with_file_limit(100 * 1024,
                                [&] {
                                  io::write_safetensors(p, {{"w", test::rand({256, 256}, 2)}});
                                }),
            2);
  EXPECT_EQ(slurp(p), before);
  expect_only({"last.safetensors"});
}

TEST_F(WriteFile, SameFileSeesThroughSpellingsAndLinks) {
  const fs::path a = m_dir / "a.safetensors";
  io::write_file_atomic(a.string(), "x");
  fs::create_symlink(a, m_dir / "link");
  fs::create_hard_link(a, m_dir / "hard");
  fs::create_directories(m_dir / "sub");
  EXPECT_TRUE(io::same_file(a.string(), a.string()));
  EXPECT_TRUE(io::same_file(a.string(), (m_dir / "." / "a.safetensors").string()));
  EXPECT_TRUE(io::same_file(a.string(), (m_dir / "sub" / ".." / "a.safetensors").string()));
  EXPECT_TRUE(io::same_file(a.string(), (m_dir / "link").string()));
  EXPECT_TRUE(io::same_file(a.string(), (m_dir / "hard").string()));
  EXPECT_FALSE(io::same_file(a.string(), (m_dir / "b.safetensors").string()));
  EXPECT_TRUE(io::same_file((m_dir / "new").string(), (m_dir / "sub" / ".." / "new").string()));
  // A relative spelling from the working folder.
  const fs::path cwd = fs::current_path();
  fs::current_path(m_dir);
  EXPECT_TRUE(io::same_file("a.safetensors", "./a.safetensors"));
  EXPECT_TRUE(io::same_file("a.safetensors", a.string()));
  fs::current_path(cwd);
}

}  // namespace
}  // namespace ttq
