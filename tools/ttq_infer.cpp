// ttq_infer: runs a model file. Tensor mode (--input-tensors) feeds a tensor
// from a safetensors file and writes the logits as safetensors (parity checks);
// --summary prints the layers, output shapes, parameters and FLOPs of an
// architecture. Flags only: the logic is in app/infer.cpp and models/summary.cpp.
// Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
#include <CLI/CLI.hpp>
#include <iostream>

#include "app/infer.h"
#include "engine/process.h"
#include "models/model_file.h"
#include "models/summary.h"
#include "tools/flags.h"

namespace {

// The ranges of ttq_infer's numeric flags (one place; --help states them).
constexpr ttq::IntRange kTopK{1, 1000};  // then at most the model's classes
constexpr ttq::IntRange kClasses{1, 100000};
constexpr ttq::IntRange kInputChannels{1, 64};  // --input C
constexpr ttq::IntRange kInputSide{1, 1024};    // --input H and W (one forward pass on the CPU)

}  // namespace

int main(int argc, char** argv) {
  ttq::configure_openmp_wait(argv, ttq::OpenMpWait::ShortSpin);
  CLI::App app{
      "Run a ttq model: a checkpoint, a PyTorch import or a packed 2-bit model (safetensors).\n"
      "  image mode:  ttq_infer --model FILE IMAGE...   (top-5 classes of each image)\n"
      "  tensor mode: ttq_infer --model FILE --input-tensors F --input-name N --logits-out OUT\n"
      "  summary:     ttq_infer --summary --arch NAME [--input CxHxW] [--classes N]"};
  ttq::app::TensorInferOptions o;
  bool summary = false;
  std::string input_chw = "3x56x56";
  int64_t classes = 200;
  std::string known;
  for (const auto& n : ttq::models::names()) known += (known.empty() ? "" : ", ") + n;
  std::vector<std::string> images;
  std::string data_spec;
  int top_k = 5;
  ttq::tools::Flags f(app);
  f.text("--model", o.model_path,
         "Weights file (.safetensors): a checkpoint, a PyTorch import or a packed 2-bit model");
  f.text("--arch", o.arch, "Architecture when the file's metadata has no \"model\" (" + known + ")");
  f.text("--device", o.device, "cpu, cuda or cuda:N", "cuda when available, else cpu");
  f.text("--precision", o.precision,
         "Packed files: auto, float (float activations) or int8 (ternary x int8 kernels, CPU only; the file "
         "needs ttq_pack --act-bits 8)",
         "int8 when the file holds activation scales and the device is the CPU, else float");
  f.text("--input-tensors", o.input_path, "Tensor mode: safetensors file holding the input batch");
  f.text("--input-name", o.input_name, "Tensor mode: name of the input tensor [N, C, H, W]");
  f.text("--logits-out", o.logits_out,
         "Tensor mode: output safetensors file (tensor \"logits\"; replaced atomically; not an input file)");
  app.add_flag("--summary", summary, "Print layers, output shapes, parameter count and FLOPs");
  f.text("--input", input_chw,
         "Summary: input size CxHxW, C " + ttq::range_text(kInputChannels) + ", H and W " +
             ttq::range_text(kInputSide),
         input_chw);
  app.add_option("images", images, "Image mode: image files (JPEG, PNG, BMP)");
  f.text("--data", data_spec,
         "Image mode: data spec naming the classes when the file does not (e.g. tiny-imagenet:DIR)");
  f.integer("--top-k", top_k, kTopK, "Image mode: classes printed per image, at most the model's", "5");
  f.integer("--classes", classes, kClasses, "Summary: number of classes", "200");
  if (int rc = ttq::tools::parse(app, f, argc, argv, "ttq_infer"); rc >= 0) return rc;
  return ttq::tools::run("ttq_infer", [&] {
    if (summary) {
      ttq::Shape chw = ttq::models::parse_chw(input_chw, "--input");
      ttq::check_flag_range("--input channels", chw[0], kInputChannels);
      ttq::check_flag_range("--input height", chw[1], kInputSide);
      ttq::check_flag_range("--input width", chw[2], kInputSide);
      ttq::models::ModelPtr model;
      if (!o.model_path.empty()) {
        model = ttq::models::load_model_file(o.model_path, o.arch, ttq::Device::cpu());
        TTQ_INPUT_CHECK(chw[0] == model->config().in_channels)
            << "--input " << input_chw << ": " << o.model_path << " takes " << model->config().in_channels
            << " channels";
      } else {
        TTQ_INPUT_CHECK(!o.arch.empty()) << "--summary needs --arch NAME or --model FILE";
        ttq::models::ModelConfig config;
        config.in_channels = chw[0];
        config.input_size = chw[1];
        config.num_classes = classes;
        model = ttq::models::create(o.arch, config);
      }
      std::cout << ttq::models::summarize(*model, {1, chw[0], chw[1], chw[2]}).text();
      return 0;
    }
    if (!images.empty()) {
      TTQ_INPUT_CHECK(o.input_path.empty()) << "give image files or --input-tensors, not both";
      TTQ_INPUT_CHECK(!o.model_path.empty()) << "--model FILE is required";
      ttq::app::ImageInferOptions io{o.model_path, o.arch, o.device, data_spec, images, top_k, o.precision};
      std::cout << ttq::app::format_predictions(ttq::app::run_image_inference(io, std::cerr));
      return 0;
    }
    TTQ_INPUT_CHECK(!o.input_path.empty()) << "nothing to do: give image files, --input-tensors FILE (with "
                                              "--model, --input-name, --logits-out) or "
                                              "--summary";
    TTQ_INPUT_CHECK(!o.model_path.empty()) << "--model FILE is required";
    ttq::Tensor logits = ttq::app::run_tensor_inference(o, std::cerr);
    std::cout << "wrote " << o.logits_out << ": logits " << ttq::shape_str(logits.shape()) << "\n";
    return 0;
  });
}
