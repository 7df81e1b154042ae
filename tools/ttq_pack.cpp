// ttq_pack: turns a TTQ checkpoint (or any weights whose quantized layers hold at
// most three distinct values, such as the seed's TTQ files) into a packed 2-bit
// model (docs/formats.md) and prints per-layer sparsity, Wp, Wn and the sizes
// before and after. Flags only: the logic is in models/packed.cpp.
// Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
#include <CLI/CLI.hpp>
#include <iostream>

#include "engine/process.h"
#include "models/packed.h"

int main(int argc, char** argv) {
  ttq::configure_openmp_wait(argv, ttq::OpenMpWait::ShortSpin);
  CLI::App app{"Pack a TTQ model's ternary weights into 2-bit codes (format ttq-packed-2bit)."};
  std::string in, out, arch;
  bool quiet = false;
  std::string known;
  for (const auto& n : ttq::models::names()) known += (known.empty() ? "" : ", ") + n;
  app.add_option("--in", in, "TTQ checkpoint or ternary weights (.safetensors)")->required();
  app.add_option("--out", out, "Packed model to write (.safetensors)")->required();
  app.add_option("--arch", arch, "Architecture when the input's metadata has no \"model\" (" + known + ")");
  app.add_flag("--quiet", quiet, "Print only the totals");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "ttq_pack: " << ttq::printable(e.what()) << " (see --help)\n";
    return 2;
  }
  try {
    const ttq::models::PackReport report = ttq::models::pack_model_file(in, out, arch);
    std::string text = ttq::models::format_pack_report(report);
    if (quiet) text = text.substr(text.find(report.arch + ": "));
    std::cout << text << "wrote " << out << "\n";
    return 0;
  } catch (const ttq::InputError& e) {
    std::cerr << "ttq_pack: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ttq_pack: internal error: " << ttq::printable(e.what()) << "\n";
    return 1;
  }
}
