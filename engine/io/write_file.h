// Checked file writes for every file the tools make (run folders, checkpoints,
// packed models, logits, JSON reports): each write, fsync, close and rename is
// checked, and a failure (a full disk, a file size limit, a vanished folder)
// leaves the previous content in place and throws one ttq::InputError line
// naming the file. Tests: tests/test_file_write.cpp.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace ttq::io {

// A span of bytes to write.
struct Chunk {
  const void* data = nullptr;
  size_t size = 0;
};

// Replaces `path` by `chunks` (in order) atomically: a temporary file beside it
// (.NAME.tmp.XXXXXX), every write checked, fsync, close, mode 0644, rename over
// `path`, fsync of the folder.
// ensures: on success `path` holds exactly the bytes; on failure `path` is as it
// was, the temporary file is gone and ttq::InputError "<path>: <step> failed:
// <reason>" is thrown.
void write_file_atomic(const std::string& path, const std::vector<Chunk>& chunks);
void write_file_atomic(const std::string& path, std::string_view bytes);

// Appends `bytes` to `path` (created 0644 if absent), then fsync when `sync`.
// ensures: on failure the file is cut back to its previous length (never a
// partial record) and ttq::InputError "<path>: <step> failed: <reason>" is thrown.
void append_bytes(const std::string& path, std::string_view bytes, bool sync);

// Appends `line` and a newline to `path` (created 0644 if absent), then fsync.
// ensures: on failure the file is cut back to its previous length (never a half
// line) and ttq::InputError "<path>: <step> failed: <reason>" is thrown.
// requires: `line` holds no newline.
void append_line(const std::string& path, std::string_view line);

// Whether `a` and `b` name the same file: the same inode when both exist (so
// ./x, x, symlinks and hard links count), else the same weakly canonical path.
bool same_file(const std::string& a, const std::string& b);

}  // namespace ttq::io
