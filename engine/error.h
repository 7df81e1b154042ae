// One error family for the whole engine: ttq::Error and the TTQ_CHECK macro.
// TTQ_CHECK(cond) << "message" throws ttq::Error carrying the condition, file and line.
// CUDA / cuDNN / cuBLAS checks live in engine/cuda/check.h and throw the same type.
// printable() and the one-line rule: engine/error.cpp; tests in tests/test_safetensors.cpp.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ttq {

// `s` made safe to print on one line of a terminal: C0 control characters
// (newline, carriage return, escape, ...), DEL, the C1 controls U+0080..U+009F and
// bytes that are not valid UTF-8 are written as \xNN; everything else is kept.
// For text from files (names in metadata, file names, class names) that reaches
// stdout or stderr.
std::string printable(std::string_view s);

// Every failure the engine reports is a ttq::Error. `what()` is one line: the
// message passes through printable(), so a file name or a metadata value holding
// a newline cannot split an error into several lines or inject one.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(printable(msg)) {}
};

// Bad user input (a corrupt file, a wrong flag): tools map it to exit code 2.
class InputError : public Error {
 public:
  explicit InputError(const std::string& msg) : Error(msg) {}
};

namespace detail {

// Collects the streamed message and throws from its destructor's caller via
// the `throw_now` call of TTQ_CHECK; never throws from a destructor.
template <class E>
class ErrorBuilder {
 public:
  ErrorBuilder(const char* cond, const char* file, int line) {
    if (cond != nullptr) m_os << "check failed: " << cond << " (" << file << ":" << line << "): ";
  }
  template <class T>
  ErrorBuilder& operator<<(const T& v) {
    m_os << v;
    return *this;
  }
  [[noreturn]] void throw_now() const { throw E(m_os.str()); }

 private:
  std::ostringstream m_os;
};

struct Thrower {
  template <class E>
  [[noreturn]] void operator&(const ErrorBuilder<E>& b) const {
    b.throw_now();
  }
};

}  // namespace detail
}  // namespace ttq

// TTQ_CHECK(cond) << "details";   throws ttq::Error when cond is false.
#define TTQ_CHECK(cond)                \
  if (__builtin_expect(!!(cond), 1)) { \
  } else                               \
    ::ttq::detail::Thrower{} & ::ttq::detail::ErrorBuilder<::ttq::Error>(#cond, __FILE__, __LINE__)

// TTQ_INPUT_CHECK(cond) << "file.safetensors: header length past end of file";
// throws ttq::InputError with exactly the streamed message (no file/line: it is for users).
#define TTQ_INPUT_CHECK(cond)          \
  if (__builtin_expect(!!(cond), 1)) { \
  } else                               \
    ::ttq::detail::Thrower{} & ::ttq::detail::ErrorBuilder<::ttq::InputError>(nullptr, nullptr, 0)

// TTQ_THROW() << "msg"; / TTQ_INPUT_ERROR() << "msg"; unconditional.
#define TTQ_THROW() ::ttq::detail::Thrower{} & ::ttq::detail::ErrorBuilder<::ttq::Error>(nullptr, nullptr, 0)
#define TTQ_INPUT_ERROR() \
  ::ttq::detail::Thrower{} & ::ttq::detail::ErrorBuilder<::ttq::InputError>(nullptr, nullptr, 0)
