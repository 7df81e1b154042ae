// ttq_infer: runs a model file. Tensor mode (--input-tensors) feeds a tensor
// from a safetensors file and writes the logits as safetensors (parity checks);
// --summary prints the layers, output shapes, parameters and FLOPs of an
// architecture. Flags only: the logic is in models/infer.cpp and models/summary.cpp.
// Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
#include <CLI/CLI.hpp>
#include <iostream>

#include "engine/process.h"
#include "models/infer.h"
#include "models/summary.h"

int main(int argc, char** argv) {
  ttq::configure_openmp_wait(argv, ttq::OpenMpWait::ShortSpin);
  CLI::App app{
      "Run a ttq model: a checkpoint, a PyTorch import or a packed 2-bit model (safetensors).\n"
      "  image mode:  ttq_infer --model FILE IMAGE...   (top-5 classes of each image)\n"
      "  tensor mode: ttq_infer --model FILE --input-tensors F --input-name N --logits-out OUT\n"
      "  summary:     ttq_infer --summary --arch NAME [--input CxHxW] [--classes N]"};
  ttq::models::TensorInferOptions o;
  bool summary = false;
  std::string input_chw = "3x56x56";
  int64_t classes = 200;
  std::string known;
  for (const auto& n : ttq::models::names()) known += (known.empty() ? "" : ", ") + n;
  app.add_option("--model", o.model_path, "Weights file (.safetensors): a checkpoint, a PyTorch import or a packed 2-bit model");
  app.add_option("--arch", o.arch, "Architecture when the file's metadata has no \"model\" (" + known + ")");
  app.add_option("--device", o.device, "cpu, cuda or cuda:N (default: cuda when available, else cpu)");
  app.add_option("--input-tensors", o.input_path, "Tensor mode: safetensors file holding the input batch");
  app.add_option("--input-name", o.input_name, "Tensor mode: name of the input tensor [N, C, H, W]");
  app.add_option("--logits-out", o.logits_out, "Tensor mode: output safetensors file (tensor \"logits\")");
  app.add_flag("--summary", summary, "Print layers, output shapes, parameter count and FLOPs");
  app.add_option("--input", input_chw, "Summary: input size CxHxW (default 3x56x56)");
  std::vector<std::string> images;
  std::string data_spec;
  int top_k = 5;
  app.add_option("images", images, "Image mode: image files (JPEG, PNG, BMP)");
  app.add_option("--data", data_spec,
                 "Image mode: data spec naming the classes when the file does not (e.g. tiny-imagenet:DIR)");
  app.add_option("--top-k", top_k, "Image mode: classes printed per image (default 5)");
  app.add_option("--classes", classes, "Summary: number of classes (default 200)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "ttq_infer: " << ttq::printable(e.what()) << " (see --help)\n";
    return 2;
  }
  try {
    if (summary) {
      ttq::Shape chw = ttq::models::parse_chw(input_chw, "--input");
      ttq::models::ModelPtr model;
      if (!o.model_path.empty()) {
        model = ttq::models::load_model_file(o.model_path, o.arch, ttq::Device::cpu());
        TTQ_INPUT_CHECK(chw[0] == model->config().in_channels)
            << "--input " << input_chw << ": " << o.model_path << " takes " << model->config().in_channels
            << " channels";
      } else {
        TTQ_INPUT_CHECK(!o.arch.empty()) << "--summary needs --arch NAME or --model FILE";
        TTQ_INPUT_CHECK(classes >= 1) << "--classes must be positive, got " << classes;
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
      ttq::models::ImageInferOptions io{o.model_path, o.arch, o.device, data_spec, images, top_k};
      std::cout << ttq::models::format_predictions(ttq::models::run_image_inference(io, std::cerr));
      return 0;
    }
    TTQ_INPUT_CHECK(!o.input_path.empty())
        << "nothing to do: give image files, --input-tensors FILE (with --model, --input-name, --logits-out) or "
           "--summary";
    TTQ_INPUT_CHECK(!o.model_path.empty()) << "--model FILE is required";
    ttq::Tensor logits = ttq::models::run_tensor_inference(o, std::cerr);
    std::cout << "wrote " << o.logits_out << ": logits " << ttq::shape_str(logits.shape()) << "\n";
    return 0;
  } catch (const ttq::InputError& e) {
    std::cerr << "ttq_infer: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ttq_infer: internal error: " << ttq::printable(e.what()) << "\n";
    return 1;
  }
}
