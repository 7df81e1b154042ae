// The tools' flags and exit codes, shared by tools/*.cpp. Numbers are parsed
// whole and checked against their ranges (engine/flags.h): "12abc", "1e999",
// "nan", "" and values outside the range are one line naming the flag and the
// range. A text flag given an empty value is refused (leave it out instead).
// --help states every range and default. Exit codes: 0 done, 2 bad input (one
// line on stderr), 1 internal error (a bug). Tests: tests/test_tool_flags.cpp.
#pragma once

#include <CLI/CLI.hpp>
#include <deque>
#include <functional>
#include <iostream>
#include <limits>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "engine/error.h"
#include "engine/flags.h"

namespace ttq::tools {

class Flags {
 public:
  explicit Flags(CLI::App& app) : m_app(app) {}

  // An integer flag; `target` keeps its value unless the flag is given.
  template <class T>
  CLI::Option* integer(const std::string& name, T& target, IntRange r, const std::string& help,
                       const std::string& default_text) {
    TTQ_CHECK(r.lo >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
              r.hi <= static_cast<int64_t>(std::numeric_limits<T>::max()))
        << name << ": range wider than its type";
    return add(
        name, help + " (" + range_text(r) + "; default " + default_text + ")", "INT",
        [&target, name, r](const std::string& v) { target = static_cast<T>(parse_int_flag(name, v, r)); });
  }

  CLI::Option* real(const std::string& name, double& target, RealRange r, const std::string& help,
                    const std::string& default_text) {
    return add(name, help + " (" + range_text(r) + "; default " + default_text + ")", "FLOAT",
               [&target, name, r](const std::string& v) { target = parse_real_flag(name, v, r); });
  }

  CLI::Option* seed(const std::string& name, uint64_t& target, const std::string& help,
                    const std::string& default_text) {
    return add(name,
               help + " (0.." + std::to_string(std::numeric_limits<uint64_t>::max()) + "; default " +
                   default_text + ")",
               "INT", [&target, name](const std::string& v) { target = parse_uint64_flag(name, v); });
  }

  // A text flag; an empty value is refused. `default_text` "" leaves the help as is.
  CLI::Option* text(const std::string& name, std::string& target, const std::string& help,
                    const std::string& default_text = "") {
    return add(name, default_text.empty() ? help : help + " (default " + default_text + ")", "TEXT",
               [&target, name](const std::string& v) {
                 TTQ_INPUT_CHECK(!v.empty()) << name << ": empty value (leave the flag out instead)";
                 target = v;
               });
  }

  // Converts and checks every flag given. Throws ttq::InputError naming the flag.
  void apply() const {
    for (const auto& [opt, convert] : m_apply) convert();
  }

 private:
  CLI::Option* add(const std::string& name, const std::string& help, const char* type,
                   std::function<void(const std::string&)> convert) {
    std::string& raw = m_values.emplace_back();
    CLI::Option* opt = m_app.add_option(name, raw, help)->type_name(type);
    m_apply.emplace_back(opt, [opt, &raw, convert = std::move(convert)] {
      if (opt->count() > 0) convert(raw);
    });
    return opt;
  }

  CLI::App& m_app;
  std::deque<std::string> m_values;  // raw texts; a deque keeps references valid
  std::vector<std::pair<CLI::Option*, std::function<void()>>> m_apply;
};

// Parses the command line. Returns -1 to go on; otherwise the exit code: 0
// after --help, 2 after one line on stderr for a bad flag or value.
inline int parse(CLI::App& app, const Flags& flags, int argc, char** argv, const char* tool) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);                         // --help
    std::cerr << tool << ": " << printable(e.what()) << " (see --help)\n";  // argv may hold anything
    return 2;
  }
  try {
    flags.apply();
  } catch (const InputError& e) {
    std::cerr << tool << ": " << e.what() << "\n";
    return 2;
  }
  return -1;
}

// Runs a tool's work under the exit-code policy: a ttq::InputError (bad input,
// one line) and running out of memory exit 2; anything else is a bug, exit 1.
inline int run(const char* tool, const std::function<int()>& body) {
  try {
    return body();
  } catch (const InputError& e) {
    std::cerr << tool << ": " << e.what() << "\n";
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << tool << ": out of memory (smaller inputs or batches may fit)\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << tool << ": internal error: " << printable(e.what()) << "\n";
    return 1;
  }
}

}  // namespace ttq::tools
