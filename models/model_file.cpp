// A model from a weights file (models/model_file.h).
#include "models/model_file.h"

#include "engine/io/safetensors.h"

namespace ttq::models {

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

}  // namespace ttq::models
