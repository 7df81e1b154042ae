// Regular-file checks and whole-file reads (engine/io/file.h).
#include "engine/io/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ttq::io {

namespace {

// "" for a regular file, else what it is.
std::string kind_problem(mode_t mode) {
  if (S_ISREG(mode)) return "";
  if (S_ISDIR(mode)) return "not a regular file (a directory)";
  if (S_ISFIFO(mode)) return "not a regular file (a FIFO)";
  if (S_ISCHR(mode)) return "not a regular file (a character device)";
  if (S_ISBLK(mode)) return "not a regular file (a block device)";
  if (S_ISSOCK(mode)) return "not a regular file (a socket)";
  return "not a regular file";
}

std::string errno_problem(const std::string& path, int err) {
  if (err == ENOENT) {
    struct stat l {};
    if (::lstat(path.c_str(), &l) == 0 && S_ISLNK(l.st_mode)) return "broken symbolic link";
    return "cannot open: no such file";
  }
  if (err == ELOOP) return "cannot open: too many levels of symbolic links";
  return std::string("cannot open: ") + std::strerror(err);
}

}  // namespace

std::string regular_file_problem(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return errno_problem(path, errno);
  return kind_problem(st.st_mode);
}

int open_regular_file(const std::string& path, uint64_t* size, std::string* error) {
  // Refuse by type before opening: opening a device or a FIFO can itself have effects.
  std::string problem = regular_file_problem(path);
  if (!problem.empty()) {
    *error = problem;
    return -1;
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    *error = errno_problem(path, errno);
    return -1;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    *error = std::string("cannot stat: ") + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  problem = kind_problem(st.st_mode);  // the file may have been replaced since the stat
  if (!problem.empty()) {
    *error = problem;
    ::close(fd);
    return -1;
  }
  // A regular file ignores O_NONBLOCK; clear it anyway so reads behave as plain reads.
  int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  *size = static_cast<uint64_t>(st.st_size);
  return fd;
}

bool read_regular_file(const std::string& path, uint64_t max_bytes, std::vector<uint8_t>* out,
                       std::string* error) {
  uint64_t size = 0;
  int fd = open_regular_file(path, &size, error);
  if (fd < 0) return false;
  if (size > max_bytes) {
    ::close(fd);
    *error = "file too large (" + std::to_string(size) + " bytes, at most " + std::to_string(max_bytes) + ")";
    return false;
  }
  out->resize(static_cast<size_t>(size));
  size_t done = 0;
  while (done < out->size()) {
    ssize_t r = ::read(fd, out->data() + done, out->size() - done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      *error = std::string("read error: ") + std::strerror(errno);
      ::close(fd);
      return false;
    }
    if (r == 0) break;  // the file shrank meanwhile: keep what is there
    done += static_cast<size_t>(r);
  }
  ::close(fd);
  out->resize(done);
  return true;
}

}  // namespace ttq::io
