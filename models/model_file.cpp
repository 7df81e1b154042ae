// A model from a weights file (models/model_file.h).
#include "models/model_file.h"

#include "engine/io/safetensors.h"
#include "models/packed_internal.h"

namespace ttq::models {

ModelPtr load_model_file(const std::string& path, const std::string& arch_flag, Device device) {
  return load_model_tensors(io::read_safetensors(path), arch_flag, device, path);
}

ModelPtr load_model_tensors(const io::SafeTensors& st, const std::string& arch_flag, Device device,
                            const std::string& path) {
  TTQ_INPUT_CHECK(st.meta("format") != "ttq-packed-2bit")
      << path << ": a packed model (format ttq-packed-2bit) has no float layers to build";
  const std::string arch = detail::resolve_arch(st.meta("model"), arch_flag, path);
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

}  // namespace ttq::models
