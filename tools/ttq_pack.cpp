// ttq_pack: turns a TTQ checkpoint (or any weights whose quantized layers hold at
// most three distinct values, such as the seed's TTQ files) into a packed 2-bit
// model (docs/formats.md) and prints per-layer sparsity, Wp, Wn and the sizes
// before and after. Flags only: the logic is in models/pack.cpp.
// Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
#include <CLI/CLI.hpp>
#include <iostream>

#include "engine/process.h"
#include "models/packed.h"
#include "tools/flags.h"

int main(int argc, char** argv) {
  ttq::configure_openmp_wait(argv, ttq::OpenMpWait::ShortSpin);
  CLI::App app{"Pack a TTQ model's ternary weights into 2-bit codes (format ttq-packed-2bit)."};
  std::string in, out, arch;
  bool quiet = false;
  std::string known;
  for (const auto& n : ttq::models::names()) known += (known.empty() ? "" : ", ") + n;
  ttq::tools::Flags f(app);
  f.text("--in", in, "TTQ checkpoint or ternary weights (.safetensors)")->required();
  f.text("--out", out, "Packed model to write (.safetensors; replaced atomically; not the --in file)")
      ->required();
  f.text("--arch", arch, "Architecture when the input's metadata has no \"model\" (" + known + ")");
  app.add_flag("--quiet", quiet, "Print only the totals");
  if (int rc = ttq::tools::parse(app, f, argc, argv, "ttq_pack"); rc >= 0) return rc;
  return ttq::tools::run("ttq_pack", [&] {
    const ttq::models::PackReport report = ttq::models::pack_model_file(in, out, arch);
    std::string text = ttq::models::format_pack_report(report);
    if (quiet) text = text.substr(text.find(report.arch + ": "));
    std::cout << text << "wrote " << out << "\n";
    return 0;
  });
}
