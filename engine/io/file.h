// Opening input files: only regular files (after symbolic links) are read. A
// FIFO would block the reader until a writer comes, /dev/zero or /dev/urandom
// never end, a directory reads as nothing or as an error; each is refused up
// front with a one-line reason, before anything is read. Used by every reader of
// user files (safetensors, images, IDX). Tests: tests/test_safetensors.cpp,
// tests/test_data.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ttq::io {

// Why `path` cannot be read as a regular file ("no such file", "not a regular
// file (a FIFO)", "broken symbolic link", "permission denied", ...), or "" when
// it can. Looks at the file only (stat); opens nothing.
std::string regular_file_problem(const std::string& path);

// Opens `path` read-only when it is a regular file: stat first, then open with
// O_NONBLOCK (so that a FIFO swapped in meanwhile cannot block) and fstat the
// open descriptor. Returns the descriptor and sets *size, or returns -1 and sets
// *error to a one-line reason as regular_file_problem gives.
int open_regular_file(const std::string& path, uint64_t* size, std::string* error);

// Reads a whole regular file of at most `max_bytes` bytes. Returns false with
// *error set (a reason as above, "larger than N bytes", "read error: ...") when
// it cannot; never blocks on a FIFO and never reads an endless device.
bool read_regular_file(const std::string& path, uint64_t max_bytes, std::vector<uint8_t>* out,
                       std::string* error);

}  // namespace ttq::io
