// Checked, atomic file writes (engine/io/write_file.h). Tests: tests/test_file_write.cpp.
#include "engine/io/write_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "engine/error.h"

namespace ttq::io {

namespace {

// Writes all n bytes; false with errno set otherwise (a write of 0 bytes with
// bytes left, which POSIX allows for no regular file, counts as EIO).
bool write_all(int fd, const void* src, size_t n) {
  const auto* p = static_cast<const char*>(src);
  while (n > 0) {
    const ssize_t r = ::write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (r == 0) {
      errno = EIO;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

[[noreturn]] void fail(const std::string& path, const char* step, int err) {
  TTQ_INPUT_ERROR() << path << ": " << step << " failed: " << std::strerror(err);
}

// The folder holding `path` ("." for a bare name) and the bare name.
void split_path(const std::string& path, std::string* dir, std::string* base) {
  const size_t slash = path.rfind('/');
  *dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  *base = slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

void write_file_atomic(const std::string& path, const std::vector<Chunk>& chunks) {
  std::string dir, base;
  split_path(path, &dir, &base);
  TTQ_INPUT_CHECK(!base.empty() && base != "." && base != "..") << path << ": not a file name";
  const size_t slash = path.rfind('/');
  std::string tmp =
      (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + "." + base + ".tmp.XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) {
    const int err = errno;
    TTQ_INPUT_ERROR() << path << ": cannot create a temporary file in " << dir << ": " << std::strerror(err);
  }
  auto give_up = [&](const char* step, int err, bool close_fd) {
    if (close_fd) ::close(fd);
    ::unlink(tmp.c_str());
    fail(path, step, err);
  };
  for (const Chunk& c : chunks)
    if (c.size > 0 && !write_all(fd, c.data, c.size)) give_up("write", errno, true);
  if (::fchmod(fd, 0644) != 0) give_up("chmod", errno, true);
  if (::fsync(fd) != 0) give_up("fsync", errno, true);
  if (::close(fd) != 0) give_up("close", errno, false);
  if (::rename(tmp.c_str(), path.c_str()) != 0) give_up("rename", errno, false);
  // Make the rename durable. The new content is in place whatever happens here,
  // but a folder that cannot be synced is a failing disk: say so. (EINVAL: a
  // file system that does not sync folders.)
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) fail(path, "opening the folder to sync it", errno);
  if (::fsync(dfd) != 0 && errno != EINVAL) {
    const int err = errno;
    ::close(dfd);
    fail(path, "fsync of the folder", err);
  }
  ::close(dfd);
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  write_file_atomic(path, std::vector<Chunk>{{bytes.data(), bytes.size()}});
}

void append_bytes(const std::string& path, std::string_view bytes, bool sync) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "open", errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path, "stat", err);
  }
  if (!write_all(fd, bytes.data(), bytes.size()) || (sync && ::fsync(fd) != 0)) {
    const int err = errno;
    // Cut a partial write off again; the file ends where it ended before.
    const bool cut = ::ftruncate(fd, st.st_size) == 0;
    ::close(fd);
    TTQ_INPUT_ERROR() << path << ": append failed: " << std::strerror(err)
                      << (cut ? "" : " (and cutting the partial write off failed too)");
  }
  if (::close(fd) != 0) fail(path, "close", errno);
}

void append_line(const std::string& path, std::string_view line) {
  TTQ_CHECK(line.find('\n') == std::string_view::npos) << "append_line: the line holds a newline";
  std::string text(line);
  text += '\n';
  append_bytes(path, text, /*sync=*/true);
}

bool same_file(const std::string& a, const std::string& b) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) {
    const bool eq = fs::equivalent(a, b, ec);
    if (!ec) return eq;
  }
  const fs::path ca = fs::weakly_canonical(fs::absolute(a, ec), ec);
  if (ec) return false;
  const fs::path cb = fs::weakly_canonical(fs::absolute(b, ec), ec);
  if (ec) return false;
  return ca == cb;
}

}  // namespace ttq::io
