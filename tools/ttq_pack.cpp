// ttq_pack: turns a TTQ checkpoint (or any weights whose quantized layers hold at
// most three distinct values, such as the seed's TTQ files) into a packed 2-bit
// model (docs/formats.md) and prints per-layer sparsity, Wp, Wn and the size of
// the network's float weights against the packed file's; --weights-only writes
// the model's tensors as a plain float safetensors instead. Flags only: the
// logic is in models/pack.cpp.
// Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
#include <CLI/CLI.hpp>
#include <iostream>

#include "app/calibrate.h"
#include "engine/process.h"
#include "models/packed.h"
#include "tools/flags.h"
#include "train/options.h"

int main(int argc, char** argv) {
  ttq::configure_openmp_wait(argv, ttq::OpenMpWait::ShortSpin);
  CLI::App app{
      "Pack a TTQ model's ternary weights into 2-bit codes (format ttq-packed-2bit); the size report "
      "compares "
      "the network's float weights (every model tensor as F32) with the packed file. --weights-only writes "
      "the plain float weights instead."};
  std::string in, out, arch;
  bool quiet = false, weights_only = false;
  std::string known;
  for (const auto& n : ttq::models::names()) known += (known.empty() ? "" : ", ") + n;
  ttq::tools::Flags f(app);
  f.text("--in", in, "TTQ checkpoint or ternary weights (.safetensors)")->required();
  f.text("--out", out, "Packed model to write (.safetensors; replaced atomically; not the --in file)")
      ->required();
  f.text("--arch", arch, "Architecture when the input's metadata has no \"model\" (" + known + ")");
  app.add_flag("--quiet", quiet, "Print only the totals");
  app.add_flag(
      "--weights-only", weights_only,
      "Instead of packing: write the model's tensors as a plain safetensors file under their PyTorch "
      "names, F32 (a TTQ checkpoint's ternary values), with the model, model_config, classes and "
      "preprocess metadata, without optimiser state or TTQ latent weights and scales; ttq_eval and "
      "ttq_infer take it");
  // Int8 activations (docs/int8.md): scales calibrated on training images.
  int64_t act_bits = 0;
  ttq::app::CalibrationOptions calib;
  std::string calib_method = ttq::models::calib_method_name(calib.method);
  f.integer("--act-bits", act_bits, {0, 8},
            "8: also store int8 activation scales (needs --calibrate), so that ttq_eval / ttq_infer run the "
            "ternary x int8 kernels; 0: float activations only",
            "0");
  f.text("--calibrate", calib.data,
         "Data spec whose training split calibrates the int8 activation scales (with --act-bits 8; the "
         "validation images the weights' metadata records stay unseen)");
  f.integer("--calib-images", calib.images, ttq::train::limits::kLimit,
            "Calibration images, a seeded random subset of the training split", "512");
  f.text("--calib-method", calib_method,
         "Clipping range of each activation: max, percentile (0.01% / 99.99%) or mse", calib_method);
  if (int rc = ttq::tools::parse(app, f, argc, argv, "ttq_pack"); rc >= 0) return rc;
  return ttq::tools::run("ttq_pack", [&] {
    TTQ_INPUT_CHECK(act_bits == 0 || act_bits == 8) << "--act-bits: expected 0 or 8, got " << act_bits;
    TTQ_INPUT_CHECK(act_bits == 0 || !weights_only) << "--act-bits 8 packs; --weights-only does not";
    TTQ_INPUT_CHECK(act_bits == 8 || calib.data.empty()) << "--calibrate needs --act-bits 8";
    TTQ_INPUT_CHECK(act_bits == 0 || !calib.data.empty())
        << "--act-bits 8 needs --calibrate DATA (training images to calibrate the activation scales)";
    calib.method = ttq::models::parse_calib_method(calib_method, "--calib-method");
    if (act_bits == 8) {
      const ttq::app::Int8PackResult r = ttq::app::pack_int8_file(in, out, arch, calib, std::cerr);
      std::string text = ttq::models::format_pack_report(r.report);
      if (quiet) text = text.substr(text.find(r.report.arch + ": "));
      std::cout << (quiet ? "" : ttq::models::format_calibration(r.calibration)) << text << "wrote " << out
                << "\n";
      return 0;
    }
    if (weights_only) {
      const ttq::models::WeightsReport r = ttq::models::write_weights_file(in, out, arch);
      std::cout << r.arch << ": " << r.tensors << " tensors, " << r.float_bytes
                << " bytes as F32; input file " << r.input_file_bytes << " bytes, output file "
                << r.output_file_bytes << " bytes\nwrote " << out << "\n";
      return 0;
    }
    const ttq::models::PackReport report = ttq::models::pack_model_file(in, out, arch);
    std::string text = ttq::models::format_pack_report(report);
    if (quiet) text = text.substr(text.find(report.arch + ": "));
    std::cout << text << "wrote " << out << "\n";
    return 0;
  });
}
