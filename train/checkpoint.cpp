#include "train/checkpoint.h"

#include <nlohmann/json.hpp>

#include "models/graph_io.h"

namespace ttq::train {

namespace {

constexpr const char* kOptTensor = "optimizer.";
constexpr const char* kOptScalar = "optimizer_scalar.";
constexpr const char* kSchedScalar = "scheduler.";

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

Tensor scalar_tensor(double v) { return Tensor::from_vector<double>({v}, {1}); }

std::string run_state_json(const RunState& s) {
  nlohmann::json j;
  j["epoch"] = s.epoch;
  j["batch"] = s.batch;
  j["global_step"] = s.global_step;
  j["best_val_top1"] = s.best_val_top1;
  j["val_top1_history"] = s.val_top1_history;
  j["part_loss_sum"] = s.part_loss_sum;
  j["part_correct"] = s.part_correct;
  j["part_count"] = s.part_count;
  j["part_seconds"] = s.part_seconds;
  j["part_skipped"] = s.part_skipped;
  // 64-bit integers as strings: JSON readers elsewhere may hold numbers as doubles.
  j["rng_seed"] = std::to_string(s.rng_seed);
  j["rng_offset"] = std::to_string(s.rng_offset);
  return j.dump();
}

RunState run_state_from_json(const std::string& text, const std::string& source) {
  RunState s;
  try {
    auto j = nlohmann::json::parse(text);
    s.epoch = j.at("epoch").get<int64_t>();
    s.batch = j.at("batch").get<int64_t>();
    s.global_step = j.at("global_step").get<int64_t>();
    s.best_val_top1 = j.at("best_val_top1").get<double>();
    s.val_top1_history = j.at("val_top1_history").get<std::vector<double>>();
    s.part_loss_sum = j.at("part_loss_sum").get<double>();
    s.part_correct = j.at("part_correct").get<double>();
    s.part_count = j.at("part_count").get<double>();
    s.part_seconds = j.at("part_seconds").get<double>();
    s.part_skipped = j.value("part_skipped", int64_t{0});  // absent in older checkpoints
    s.rng_seed = std::stoull(j.at("rng_seed").get<std::string>());
    s.rng_offset = std::stoull(j.at("rng_offset").get<std::string>());
  } catch (const std::exception& e) {
    TTQ_INPUT_ERROR() << source << ": bad run state in metadata: " << e.what();
  }
  TTQ_INPUT_CHECK(s.epoch >= 0 && s.batch >= 0) << source << ": bad run state in metadata";
  return s;
}

}  // namespace

std::string model_config_json(const models::ModelConfig& c) {
  nlohmann::json j;
  j["in_channels"] = c.in_channels;
  j["input_size"] = c.input_size;
  j["num_classes"] = c.num_classes;
  j["dropout"] = c.dropout;
  j["memory_efficient"] = c.memory_efficient;
  return j.dump();
}

models::ModelConfig model_config_from_json(const std::string& s, const std::string& source) {
  models::ModelConfig c;
  try {
    auto j = nlohmann::json::parse(s);
    c.in_channels = j.at("in_channels").get<int64_t>();
    c.input_size = j.at("input_size").get<int64_t>();
    c.num_classes = j.at("num_classes").get<int64_t>();
    c.dropout = j.value("dropout", -1.0);
    c.memory_efficient = j.value("memory_efficient", true);
  } catch (const std::exception& e) {
    TTQ_INPUT_ERROR() << source << ": bad model_config in metadata: " << e.what();
  }
  models::check_config(c, source + ": model_config in metadata");
  return c;
}

void save_checkpoint(const std::string& path, models::Model& model, const models::TtqModel* ttq,
                     const optim::Optimizer& opt, const optim::ReduceLROnPlateau& sched,
                     const RunState& state, const io::Metadata& extra) {
  io::NamedTensors tensors = ttq ? models::ttq_checkpoint_view(model, *ttq) : model.state_dict();
  for (auto& [name, t] : opt.state_tensors()) tensors.emplace_back(kOptTensor + name, t);
  for (auto& [name, v] : opt.state_scalars()) tensors.emplace_back(kOptScalar + name, scalar_tensor(v));
  for (auto& [name, v] : sched.state_scalars()) tensors.emplace_back(kSchedScalar + name, scalar_tensor(v));

  io::Metadata meta = extra;
  meta["format"] = "ttq-checkpoint";
  models::describe_arch(meta, model.arch());
  meta["model_config"] = model_config_json(model.config());
  meta["phase"] = ttq ? "ttq" : "fp";
  if (ttq) {
    for (auto& [k, v] : models::ttq_metadata(ttq->options)) meta[k] = v;
  }
  meta["epoch"] = std::to_string(state.epoch);
  meta["optimizer"] = opt.name();
  meta["run_state"] = run_state_json(state);
  io::write_safetensors(path, tensors, meta);
}

CheckpointContent read_checkpoint(const std::string& path) {
  io::SafeTensors st = io::read_safetensors(path);
  CheckpointContent c;
  c.metadata = st.metadata();
  TTQ_INPUT_CHECK(st.meta("format") == "ttq-checkpoint")
      << path << ": not a training checkpoint (metadata format is '" << st.meta("format", "none") << "')";
  c.arch = models::adopt_arch(st.metadata(), path);
  TTQ_INPUT_CHECK(!c.arch.empty()) << path << ": checkpoint metadata has no model name";
  c.config = model_config_from_json(st.meta("model_config"), path);
  c.phase = st.meta("phase");
  TTQ_INPUT_CHECK(c.phase == "fp" || c.phase == "ttq") << path << ": unknown phase '" << c.phase << "'";
  if (c.phase == "ttq") c.ttq = models::ttq_options_from_metadata(st.metadata(), {}, path);
  c.state = run_state_from_json(st.meta("run_state"), path);
  for (const auto& [name, t] : st.tensors()) {
    if (starts_with(name, kOptTensor)) {
      c.optimizer_tensors[name.substr(std::string(kOptTensor).size())] = t;
    } else if (starts_with(name, kOptScalar) || starts_with(name, kSchedScalar)) {
      TTQ_INPUT_CHECK(t.numel() == 1)
          << path << ": state scalar " << name << " has " << t.numel() << " elements";
      auto& dst = starts_with(name, kOptScalar) ? c.optimizer_scalars : c.scheduler_scalars;
      const size_t plen = std::string(starts_with(name, kOptScalar) ? kOptScalar : kSchedScalar).size();
      dst[name.substr(plen)] = t.item();
    } else {
      c.model_tensors.emplace_back(name, t);
    }
  }
  // The metadata's config builds the model: it must be the one the weights have
  // (so that a forged num_classes cannot allocate more than the file holds).
  bool known = false;
  for (const auto& n : models::names()) known = known || n == c.arch;
  TTQ_INPUT_CHECK(known) << path << ": unknown model '" << c.arch << "' in the metadata";
  const models::ModelConfig w = models::config_from_weights(c.arch, c.model_tensors, path, c.config);
  TTQ_INPUT_CHECK(w.in_channels == c.config.in_channels && w.num_classes == c.config.num_classes)
      << path << ": model_config in metadata (in_channels " << c.config.in_channels << ", num_classes "
      << c.config.num_classes << ") does not match the weights (" << w.in_channels << ", " << w.num_classes
      << ")";
  return c;
}

}  // namespace ttq::train
