// Numeric command-line values: the whole text must be one number inside the
// flag's range, or the parse throws one ttq::InputError line naming the flag and
// the range ("--batch: expected an integer in 1..4096, got '12abc'"). The tools
// parse with these (tools/flags.h binds them to CLI11) and the libraries check
// option structs against the same ranges. Tests: tests/test_flags.cpp.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

namespace ttq {

// Integers lo..hi, both included.
struct IntRange {
  int64_t lo = 0;
  int64_t hi = std::numeric_limits<int64_t>::max();
};

// Reals between lo and hi; each end included unless open. An infinite end means
// "no bound" on that side; NaN and infinities are never in range.
struct RealRange {
  double lo = 0;
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
  bool hi_open = false;
};

// "1..4096"; "0 or more" when hi is the int64 maximum.
std::string range_text(IntRange r);
// "[0, 1)", "> 0" (no upper bound), ...
std::string range_text(RealRange r);

bool in_range(int64_t v, IntRange r);
bool in_range(double v, RealRange r);

// Decimal integer (optional leading '-', no spaces, no '+', no fraction or
// exponent) within r. Throws InputError "<flag>: expected an integer in <range>, got '<text>'".
int64_t parse_int_flag(const std::string& flag, const std::string& text, IntRange r);

// Decimal integer 0..18446744073709551615 (a seed); no sign.
uint64_t parse_uint64_flag(const std::string& flag, const std::string& text);

// A finite decimal number ("0.1", "1e-3", "-2") within r; "nan", "inf", hex
// floats and values that overflow a double are refused.
double parse_real_flag(const std::string& flag, const std::string& text, RealRange r);

// For option structs filled by code: throws the same message as the parsers
// when v is outside r.
void check_flag_range(const std::string& flag, int64_t v, IntRange r);
void check_flag_range(const std::string& flag, double v, RealRange r);

}  // namespace ttq
