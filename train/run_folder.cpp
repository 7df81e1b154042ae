// ttq_train's run folder: locking, the checks before a run starts, resume
// compatibility and the run's files (train/run_folder.h).
// Tests: tests/test_train_loop.cpp.
#include "train/run_folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <tuple>
#include <type_traits>

#include "data/dataset.h"
#include "data/pipeline.h"
#include "engine/error.h"
#include "engine/io/write_file.h"
#include "train/tensorboard.h"

namespace fs = std::filesystem;

namespace ttq::train {

namespace {

// The files that make a folder hold a run.
constexpr const char* kRunFiles[] = {"config.json", "metrics.jsonl", "last.safetensors", "best.safetensors"};
constexpr const char* kLockFile = ".lock";

std::string number_text(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

}  // namespace

RunFolder::RunFolder(const TrainOptions& o, bool writer)
    : m_dir(o.out), m_flag_text(o.out), m_resume(o.resume), m_overwrite(o.overwrite), m_writer(writer) {
  TTQ_INPUT_CHECK(!o.out.empty()) << "--out: a run folder is required";
  if (!writer) {  // another rank of a data-parallel job: reads the run's config.json, never checks or writes
    if (o.resume) read_config();
    return;
  }
  std::error_code ec;
  const fs::file_status st = fs::status(m_dir, ec);
  const bool exists = fs::exists(st);
  TTQ_INPUT_CHECK(!exists || fs::is_directory(st)) << "--out " << o.out << ": exists and is not a folder";
  if (!o.resume && !o.init.empty()) {
    for (const char* name : kRunFiles) {
      TTQ_INPUT_CHECK(!io::same_file(o.init, path(name)))
          << "--init " << o.init << " is " << path(name)
          << ", which this run would replace: copy it out of --out " << o.out << " or choose another --out";
    }
  }
  if (o.resume) {
    TTQ_INPUT_CHECK(exists) << "--resume: " << o.out << " does not exist (nothing to resume)";
    lock();
    read_config();
  } else if (exists && holds_run()) {
    std::string which;
    for (const char* name : kRunFiles)
      if (fs::exists(m_dir / name, ec)) which += (which.empty() ? "" : ", ") + std::string(name);
    TTQ_INPUT_CHECK(o.overwrite) << "--out " << o.out << " already holds a run (" << which
                                 << "): continue it with --resume or replace it with --overwrite";
    lock();
  }
}

void RunFolder::read_config() {
  TTQ_INPUT_CHECK(fs::exists(last_path())) << "--resume: " << last_path() << " does not exist";
  TTQ_INPUT_CHECK(fs::exists(config_path())) << "--resume: " << config_path() << " does not exist";
  std::ifstream f(config_path());
  try {
    m_config = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception&) {
    TTQ_INPUT_ERROR() << config_path() << ": not valid JSON (the run's options cannot be checked)";
  }
  TTQ_INPUT_CHECK(m_config.is_object()) << config_path() << ": not a JSON object";
}

RunFolder::~RunFolder() {
  if (m_lock_fd >= 0) ::close(m_lock_fd);  // releases the flock
}

bool RunFolder::holds_run() const {
  std::error_code ec;
  for (const char* name : kRunFiles)
    if (fs::exists(m_dir / name, ec)) return true;
  return false;
}

void RunFolder::lock() {
  if (m_lock_fd >= 0) return;
  const std::string p = path(kLockFile);
  // The lock file is never removed: removing it would let two trainers lock two
  // different files of the same name.
  const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    TTQ_INPUT_ERROR() << "--out " << m_flag_text << ": cannot open the lock file " << p << ": "
                      << std::strerror(err);
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    TTQ_INPUT_CHECK(err != EWOULDBLOCK)
        << "--out " << m_flag_text << ": in use by another ttq_train (it holds " << p
        << "); wait for it to finish or stop it";
    TTQ_INPUT_ERROR() << "--out " << m_flag_text << ": cannot lock " << p << ": " << std::strerror(err);
  }
  m_lock_fd = fd;
}

void RunFolder::open_for_writing() {
  if (!m_writer) return;
  std::error_code ec;
  if (!fs::exists(m_dir, ec)) {
    fs::create_directories(m_dir, ec);
    TTQ_INPUT_CHECK(!ec && fs::is_directory(m_dir))
        << "--out: cannot create folder " << m_flag_text << ": " << ec.message();
  }
  const bool had_lock = m_lock_fd >= 0;
  lock();
  // Another trainer may have started a run here between the first look and the lock.
  TTQ_INPUT_CHECK(had_lock || m_resume || m_overwrite || !holds_run())
      << "--out " << m_flag_text << ": another run started in this folder meanwhile";
  if (m_overwrite) {
    // The previous run's checkpoints go first, so that a failure below never
    // leaves them beside the new run's config.json.
    for (const char* name : {"best.safetensors", "last.safetensors"}) {
      fs::remove(m_dir / name, ec);
      TTQ_INPUT_CHECK(!ec) << path(name) << ": cannot remove the previous run's checkpoint: " << ec.message();
    }
    // And its TensorBoard event files, which would otherwise show beside the new run's.
    for (const auto& entry : fs::directory_iterator(m_dir, ec)) {
      if (!tb::is_event_file(entry.path().filename().string())) continue;
      fs::remove(entry.path(), ec);
      TTQ_INPUT_CHECK(!ec) << entry.path().string()
                           << ": cannot remove the previous run's event file: " << ec.message();
    }
  }
}

void RunFolder::write_config(const std::string& text) {
  if (m_writer) io::write_file_atomic(config_path(), text);
}

void RunFolder::start_metrics(int64_t completed_epochs) {
  if (!m_writer) return;
  std::string keep;
  if (m_resume) {
    std::ifstream in(metrics_path());
    std::string line;
    for (int64_t n = 0; n < completed_epochs && std::getline(in, line); ++n) keep += line + "\n";
  }
  io::write_file_atomic(metrics_path(), keep);
}

void RunFolder::append_metrics(const std::string& line) {
  if (m_writer) io::append_line(metrics_path(), line);
}

namespace {

// Compares one option of a resumed run with the run's config.json.
class RunOptions {
 public:
  RunOptions(const nlohmann::json& config, const std::string& path) : m_config(config), m_path(path) {}

  // The run's value, or nullopt when config.json does not record it.
  template <class T>
  std::optional<T> get(const char* key) const {
    auto it = m_config.find(key);
    if (it == m_config.end() || it->is_null()) return std::nullopt;
    try {
      return it->get<T>();
    } catch (const nlohmann::json::exception&) {
      TTQ_INPUT_ERROR() << m_path << ": \"" << key << "\" has the wrong type";
    }
  }

  // `value` unset: takes the run's; given: must equal it. A run that left the
  // option unset recorded `unset_value`, said as `unset_text`.
  template <class T>
  void adopt(const char* flag, const char* key, T& value, bool unset,
             std::optional<T> unset_value = std::nullopt, const char* unset_text = "") const {
    const std::optional<T> run = get<T>(key);
    if (!run) return;
    const bool run_unset = unset_value && *run == *unset_value;
    if (unset) {
      value = *run;
    } else if (run_unset || value != *run) {
      refuse(flag, run_unset ? std::string(unset_text) : text(*run), text(value));
    }
  }

  [[noreturn]] void refuse(const char* flag, const std::string& run, const std::string& given) const {
    TTQ_INPUT_ERROR() << flag << " " << given << ": the run being resumed has " << flag << " " << run << " ("
                      << m_path << "); --resume keeps the options that shape the data order and the model";
  }

 private:
  static std::string text(const std::string& s) { return s.empty() ? "''" : s; }
  static std::string text(double v) { return number_text(v); }
  static std::string text(int64_t v) { return std::to_string(v); }
  static std::string text(uint64_t v) { return std::to_string(v); }

  const nlohmann::json& m_config;
  std::string m_path;
};

// "0.2860,0.3530": per-channel values as --mean / --std take them (exactly: %.9g).
std::string values_text(const std::vector<float>& v) {
  std::string s;
  for (float x : v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(x));
    if (!s.empty()) s.push_back(',');
    s.append(buf);
  }
  return s;
}

// The input pipeline of a run being resumed: its config.json's, or, for a run
// from before the pipeline options, the preprocessing runs had then.
void adopt_pipeline(TrainOptions& o, const nlohmann::json& config, const std::string& config_path) {
  nlohmann::json pj = config;
  if (!config.contains("image_size")) {
    const data::Preprocess legacy = data::preprocess_for(data::parse_data_spec(o.data));
    pj = nlohmann::json::parse(data::preprocess_json(legacy));
  }
  const RunOptions run(pj, config_path);
  run.adopt("--channels", "channels", o.channels, o.channels == kUnset);
  run.adopt("--image-size", "image_size", o.image_size, o.image_size == kUnset);
  run.adopt("--crop", "crop", o.crop, o.crop == kUnset);
  run.adopt("--augment", "augment", o.augment, o.augment.empty());
  const bool run_auto = config.value("mean_std_from", std::string()).rfind("auto", 0) == 0;
  for (auto [flag, key, value] :
       {std::tuple{"--mean", "mean", &o.mean}, std::tuple{"--std", "std", &o.std}}) {
    const auto v = run.get<std::vector<float>>(key);
    if (!v) continue;
    const std::string recorded = values_text(*v);
    if (value->empty() || (*value == "auto" && run_auto)) {
      *value = recorded;
    } else if (*value == "auto" ||
               data::parse_channel_values(flag, *value, static_cast<int>(v->size()), false) != *v) {
      run.refuse(flag, recorded, *value);
    }
  }
}

}  // namespace

TrainOptions adopt_run_options(const TrainOptions& raw, const nlohmann::json& config,
                               const std::string& config_path) {
  TrainOptions o = raw;
  const RunOptions run(config, config_path);
  // Texts with a default of their own are always compared.
  run.adopt("--model", "model", o.model, false);
  run.adopt("--phase", "phase", o.phase, false);
  if (auto data = run.get<std::string>("data")) {
    const std::string given = data::parse_data_spec(o.data).str();
    if (given != *data) run.refuse("--data", *data, o.data);
  }
  run.adopt("--seed", "seed", o.seed, false);
  run.adopt("--batch", "batch", o.batch, o.batch == kUnset);
  run.adopt("--limit-train", "limit_train", o.limit_train, o.limit_train == 0, std::optional<int64_t>(0),
            "unset (all images)");
  run.adopt("--limit-val", "limit_val", o.limit_val, o.limit_val == 0, std::optional<int64_t>(0),
            "unset (all images)");
  // The held-out validation split shapes the training images too; the run
  // records 0 when the data set has a validation split of its own.
  if (auto v = run.get<int64_t>("val_size"); v && *v > 0) {
    if (o.val_size == kUnset) {
      o.val_size = *v;
    } else if (o.val_size != *v) {
      run.refuse("--val-size", std::to_string(*v), std::to_string(o.val_size));
    }
  }
  // Only the final test: a new value is taken, an unset one keeps the run's.
  if (o.limit_test == 0) o.limit_test = run.get<int64_t>("limit_test").value_or(0);
  run.adopt("--lr", "lr", o.lr, o.lr == kUnset);
  run.adopt("--weight-decay", "weight_decay", o.weight_decay, o.weight_decay == kUnset);
  run.adopt("--momentum", "momentum", o.momentum, o.momentum == kUnset);
  // The run records -1 when it left the dropout to the architecture.
  run.adopt("--dropout", "dropout", o.dropout, o.dropout == kUnset, std::optional<double>(kUnset),
            "unset (the architecture's)");
  run.adopt("--t", "t", o.t, o.t == kUnset);
  run.adopt("--scales-init", "scales_init", o.scales_init, o.scales_init.empty());
  run.adopt("--wn-grad", "wn_grad", o.wn_grad, o.wn_grad.empty());
  run.adopt("--schedule", "schedule", o.schedule, o.schedule.empty());
  // --init only matters when a run starts; a resumed run keeps its record.
  const std::string init = run.get<std::string>("init").value_or("");
  if (o.init.empty()) {
    o.init = init;
  } else if (init != o.init && (init.empty() || !io::same_file(init, o.init))) {
    run.refuse("--init", init, o.init);
  }
  adopt_pipeline(o, config, config_path);
  // More (or fewer) epochs continue a run under the plateau schedule; a cosine
  // schedule spans the run's --epochs, so there they must stay.
  if (o.epochs == kUnset) {
    if (auto e = run.get<int64_t>("epochs")) o.epochs = *e;
  } else if (o.schedule == "cosine") {
    run.adopt("--epochs", "epochs", o.epochs, false);
  }
  return o;
}

TrainOptions options_from_config(const TrainOptions& options, const std::string& path,
                                 const std::function<bool(const std::string& flag)>& given) {
  TTQ_INPUT_CHECK(std::filesystem::is_regular_file(path)) << "--config " << path << ": not a file";
  std::ifstream f(path, std::ios::binary);
  TTQ_INPUT_CHECK(f) << "--config " << path << ": cannot be read";
  std::stringstream text;
  text << f.rdbuf();
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception&) {
    TTQ_INPUT_ERROR() << "--config " << path << ": not JSON (a run's config.json)";
  }
  TTQ_INPUT_CHECK(config.is_object()) << "--config " << path << ": not a JSON object (a run's config.json)";
  const RunOptions run(config, path);
  TrainOptions o = options;
  auto take = [&](const char* flag, const char* key, auto& value) {
    using T = std::decay_t<decltype(value)>;
    if (given(flag)) return;
    if (auto v = run.get<T>(key)) value = *v;
  };
  take("--model", "model", o.model);
  take("--data", "data", o.data);
  take("--phase", "phase", o.phase);
  take("--init", "init", o.init);
  take("--reset-classifier", "reset_classifier", o.reset_classifier);
  take("--epochs", "epochs", o.epochs);
  take("--batch", "batch", o.batch);
  take("--lr", "lr", o.lr);
  take("--weight-decay", "weight_decay", o.weight_decay);
  take("--momentum", "momentum", o.momentum);
  take("--dropout", "dropout", o.dropout);
  take("--t", "t", o.t);
  take("--scales-init", "scales_init", o.scales_init);
  take("--wn-grad", "wn_grad", o.wn_grad);
  take("--seed", "seed", o.seed);
  take("--workers", "workers", o.workers);
  take("--limit-train", "limit_train", o.limit_train);
  take("--limit-val", "limit_val", o.limit_val);
  take("--limit-test", "limit_test", o.limit_test);
  // 0: the data set has a validation split of its own (nothing held out).
  if (!given("--val-size"))
    if (auto v = run.get<int64_t>("val_size"); v && *v > 0) o.val_size = *v;
  take("--early-stop-patience", "early_stop_patience", o.early_stop_patience);
  take("--plateau-patience", "plateau_patience", o.plateau_patience);
  take("--schedule", "schedule", o.schedule);
  take("--channels", "channels", o.channels);
  take("--image-size", "image_size", o.image_size);
  take("--crop", "crop", o.crop);
  take("--augment", "augment", o.augment);
  // The numbers the run used (also when it computed them: auto).
  for (auto [flag, key, value] : {std::tuple{"--mean", "mean", &o.mean}, std::tuple{"--std", "std", &o.std}})
    if (!given(flag))
      if (auto v = run.get<std::vector<float>>(key)) *value = values_text(*v);
  return o;
}

void check_run_data(const nlohmann::json& config, int64_t train_images, int64_t val_images,
                    const std::string& config_path) {
  const RunOptions run(config, config_path);
  if (auto n = run.get<int64_t>("train_images")) {
    TTQ_INPUT_CHECK(*n == train_images)
        << "--data: the data now has " << train_images << " training images, the run being resumed had " << *n
        << " (" << config_path << "); the data order would differ";
  }
  if (auto n = run.get<int64_t>("val_images")) {
    TTQ_INPUT_CHECK(*n == val_images)
        << "--data: the data now has " << val_images << " validation images, the run being resumed had " << *n
        << " (" << config_path << ")";
  }
}

}  // namespace ttq::train
