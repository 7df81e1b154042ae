// Numeric command-line values checked against their ranges (engine/flags.h).
// Tests: tests/test_flags.cpp.
#include "engine/flags.h"

#include <charconv>
#include <cmath>
#include <sstream>

#include "engine/error.h"

namespace ttq {

namespace {

std::string number_text(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// The text as the user gave it, kept to one short line.
std::string shown(const std::string& text) {
  std::string s;
  for (char c : text.substr(0, 40)) s += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  if (text.size() > 40) s += "...";
  return "'" + s + "'";
}

[[noreturn]] void int_error(const std::string& flag, const std::string& got, IntRange r) {
  TTQ_INPUT_ERROR() << flag << ": expected an integer in " << range_text(r) << ", got " << got;
}

[[noreturn]] void real_error(const std::string& flag, const std::string& got, RealRange r) {
  TTQ_INPUT_ERROR() << flag << ": expected a number " << (std::isinf(r.lo) || std::isinf(r.hi) ? "" : "in ")
                    << range_text(r) << ", got " << got;
}

}  // namespace

std::string range_text(IntRange r) {
  if (r.hi == std::numeric_limits<int64_t>::max()) return std::to_string(r.lo) + " or more";
  return std::to_string(r.lo) + ".." + std::to_string(r.hi);
}

std::string range_text(RealRange r) {
  const bool lo_inf = std::isinf(r.lo), hi_inf = std::isinf(r.hi);
  if (lo_inf && hi_inf) return "(any finite value)";  // "a number (any finite value)"
  if (hi_inf) return std::string(r.lo_open ? "> " : ">= ") + number_text(r.lo);
  if (lo_inf) return std::string(r.hi_open ? "< " : "<= ") + number_text(r.hi);
  return std::string(r.lo_open ? "(" : "[") + number_text(r.lo) + ", " + number_text(r.hi) +
         (r.hi_open ? ")" : "]");
}

bool in_range(int64_t v, IntRange r) { return v >= r.lo && v <= r.hi; }

bool in_range(double v, RealRange r) {
  if (!std::isfinite(v)) return false;
  if (r.lo_open ? !(v > r.lo) : !(v >= r.lo)) return false;
  if (r.hi_open ? !(v < r.hi) : !(v <= r.hi)) return false;
  return true;
}

int64_t parse_int_flag(const std::string& flag, const std::string& text, IntRange r) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || p != end) int_error(flag, shown(text), r);
  if (!in_range(v, r)) int_error(flag, shown(text), r);
  return v;
}

uint64_t parse_uint64_flag(const std::string& flag, const std::string& text) {
  uint64_t v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || p != end) {
    TTQ_INPUT_ERROR() << flag << ": expected an integer in 0.." << std::numeric_limits<uint64_t>::max()
                      << ", got " << shown(text);
  }
  return v;
}

double parse_real_flag(const std::string& flag, const std::string& text, RealRange r) {
  // Plain decimal text only: digits, one '.', an optional exponent, a leading
  // '-'. This keeps out "nan", "inf", "0x1p3" and stray spaces before strtod.
  bool ok = !text.empty();
  bool digit = false, exp = false, dot = false;
  for (size_t i = 0; ok && i < text.size(); ++i) {
    const char c = text[i];
    if (c >= '0' && c <= '9') {
      digit = true;
    } else if (c == '-' || c == '+') {
      ok = i == 0 ? c == '-' : (text[i - 1] == 'e' || text[i - 1] == 'E');
    } else if (c == '.') {
      ok = !dot && !exp;
      dot = true;
    } else if ((c == 'e' || c == 'E') && digit && !exp) {
      exp = true;
      digit = false;  // the exponent needs digits of its own
    } else {
      ok = false;
    }
  }
  ok = ok && digit;
  double v = 0;
  if (ok) {
    const char* end = text.data() + text.size();
    auto [p, ec] = std::from_chars(text.data(), end, v);
    ok = ec == std::errc() && p == end;  // result_out_of_range: 1e999, 1e-999
  }
  if (!ok || !in_range(v, r)) real_error(flag, shown(text), r);
  return v;
}

void check_flag_range(const std::string& flag, int64_t v, IntRange r) {
  if (!in_range(v, r)) int_error(flag, std::to_string(v), r);
}

void check_flag_range(const std::string& flag, double v, RealRange r) {
  if (!in_range(v, r)) real_error(flag, number_text(v), r);
}

}  // namespace ttq
