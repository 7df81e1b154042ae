// Library side of ttq_infer (see models/infer.h).
#include "models/infer.h"

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "models/packed.h"

namespace ttq::models {

Device pick_device(const std::string& flag, std::ostream& log) {
  if (flag.empty()) {
    if (cuda::available()) return Device::cuda(0);
    log << "no CUDA device available: running on the CPU\n";
    return Device::cpu();
  }
  Device d = Device::parse(flag);
  if (d.is_cuda()) {
    TTQ_INPUT_CHECK(cuda::available()) << "--device " << flag << ": no CUDA device available";
    TTQ_INPUT_CHECK(d.index < cuda::device_count())
        << "--device " << flag << ": only " << cuda::device_count() << " CUDA device(s)";
  }
  return d;
}

ModelPtr load_model_file(const std::string& path, const std::string& arch_flag, Device device) {
  io::SafeTensors st = io::read_safetensors(path);
  TTQ_INPUT_CHECK(st.meta("format") != "ttq-packed-2bit")
      << path << ": a packed model (format ttq-packed-2bit) has no float layers to build";
  const std::string from_file = st.meta("model");
  std::string arch = from_file.empty() ? arch_flag : from_file;
  TTQ_INPUT_CHECK(!arch.empty()) << path
                                 << ": no \"model\" in the metadata; name the architecture with --arch";
  TTQ_INPUT_CHECK(arch_flag.empty() || from_file.empty() || arch_flag == from_file)
      << path << ": the metadata says model '" << from_file << "' but --arch is '" << arch_flag << "'";
  bool known = false;
  for (const auto& n : names()) known = known || n == arch;
  TTQ_INPUT_CHECK(known) << path << ": unknown model '" << arch << "'";
  ModelConfig config = config_from_weights(arch, st.tensors(), path);
  Generator gen(0);
  ModelPtr model = create(arch, config, gen);
  LoadOptions options;
  options.ignore_ttq_state = true;
  options.ignore_optimizer_state = true;
  load_weights(*model, st.tensors(), path, options);
  model->eval();
  model->to(device);
  return model;
}

Tensor run_tensor_inference(const TensorInferOptions& o, std::ostream& log) {
  TTQ_INPUT_CHECK(!o.input_name.empty()) << "--input-name is required with --input-tensors";
  TTQ_INPUT_CHECK(!o.logits_out.empty()) << "--logits-out is required with --input-tensors";
  if (is_packed_file(o.model_path)) return run_packed_tensor_inference(o, log);
  // Everything the user supplied is validated before the device line is printed,
  // so that a bad input gives exactly one line.
  ModelPtr model = load_model_file(o.model_path, o.arch, Device::cpu());
  io::SafeTensors in = io::read_safetensors(o.input_path);
  TTQ_INPUT_CHECK(in.contains(o.input_name))
      << o.input_path << ": no tensor named " << io::quoted_name(o.input_name);
  Tensor x = in.at(o.input_name);
  TTQ_INPUT_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64)
      << o.input_path << ": tensor " << io::quoted_name(o.input_name) << " is " << dtype_name(x.dtype())
      << ", expected F32";
  model->check_input(x.shape(), o.input_path + ": tensor " + io::quoted_name(o.input_name));
  const Device device = pick_device(o.device, log);
  model->to(device);
  Tensor logits;
  {
    autograd::NoGradGuard no_grad;
    logits = model->forward(x.to(DType::F32).to(device)).to(Device::cpu());
  }
  io::write_safetensors(o.logits_out, {{"logits", logits}},
                        {{"model", model->arch()},
                         {"weights", o.model_path},
                         {"input", o.input_path},
                         {"input_name", o.input_name},
                         {"device", device.str()}});
  return logits;
}

}  // namespace ttq::models
