// ttq_train's run folder (--out): config.json, metrics.jsonl, last.safetensors,
// best.safetensors and .lock. One trainer at a time holds the folder (flock on
// .lock for the whole run); a folder that holds a run is only continued
// (--resume, with the options that shape the data order and the model unchanged)
// or replaced (--overwrite); nothing is created, truncated or removed before
// every input has been validated; every file goes through engine/io/write_file.h.
// Tests: tests/test_train_loop.cpp (RunFolder*, Resume*).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "train/trainer.h"

namespace ttq::train {

class RunFolder {
 public:
  // Checks --out before anything is read or written: not a file; --init not one
  // of the files the run would write; a folder holding a run (config.json,
  // metrics.jsonl, last / best.safetensors) only with --resume or --overwrite.
  // With --resume or --overwrite the existing folder is locked now (so that a
  // running trainer is reported before any work), and --resume reads config.json
  // and requires last.safetensors. Creates nothing else. Throws ttq::InputError.
  // `writer` false (the ranks of a data-parallel job but rank 0): no checks, no
  // lock, and every write below does nothing; --resume still reads config.json.
  explicit RunFolder(const TrainOptions& options, bool writer = true);
  ~RunFolder();
  RunFolder(const RunFolder&) = delete;
  RunFolder& operator=(const RunFolder&) = delete;

  // --resume: the run's config.json.
  const nlohmann::json& run_config() const { return m_config; }

  // Once every input is validated: creates the folder, locks it (if not yet),
  // checks again that no other run started in it meanwhile, and for --overwrite
  // removes the previous run's checkpoints.
  void open_for_writing();

  // Replaces config.json atomically.
  void write_config(const std::string& text);
  // metrics.jsonl: empty for a new run; --resume keeps the lines of the
  // `completed_epochs` completed epochs (a run stopped between writing an epoch's
  // line and its checkpoint leaves one more line, which is dropped).
  void start_metrics(int64_t completed_epochs);
  // One line, appended and synced; on failure the file is as it was.
  void append_metrics(const std::string& line);

  std::string path(const char* name) const { return (m_dir / name).string(); }
  std::string last_path() const { return path("last.safetensors"); }
  std::string best_path() const { return path("best.safetensors"); }
  std::string metrics_path() const { return path("metrics.jsonl"); }
  std::string config_path() const { return path("config.json"); }

 private:
  void lock();
  bool holds_run() const;
  void read_config();

  std::filesystem::path m_dir;
  std::string m_flag_text;  // --out as given, for messages
  bool m_resume = false, m_overwrite = false, m_writer = true;
  int m_lock_fd = -1;
  nlohmann::json m_config;
};

// --resume: the options that shape the data order or the model (--model,
// --data, --phase, --batch, --seed, --limit-train, --limit-val, --val-size, --lr,
// --weight-decay, --momentum, --dropout, --t, --scales-init, --wn-grad,
// --schedule, --init; --epochs under the cosine schedule) are the run's. A
// numeric or text option left unset takes the run's value from `config`; a
// value given that differs from the run's is refused with one line naming the
// flag. `raw` is the options as given (unset values still kUnset / "").
TrainOptions adopt_run_options(const TrainOptions& raw, const nlohmann::json& config,
                               const std::string& config_path);

// --config FILE: a run's config.json as the options of a new run. Every option
// it records (--model, --data, --phase, --init, --reset-classifier, --epochs,
// --batch, --lr, --weight-decay, --momentum, --dropout, --t, --scales-init,
// --wn-grad, --seed, --workers, --limit-train, --limit-val, --limit-test,
// --val-size, --early-stop-patience, --plateau-patience, --schedule) is taken
// from it unless `given(flag)` says the command line gave that flag; --out,
// --device and what the run found (image counts, parameters) are not taken.
// Throws ttq::InputError naming the file when it is not a JSON object or a
// value has the wrong type.
TrainOptions options_from_config(const TrainOptions& options, const std::string& path,
                                 const std::function<bool(const std::string& flag)>& given);
// --resume: the data must still hold as many images as the run trained and
// validated on (else the data order changed).
void check_run_data(const nlohmann::json& config, int64_t train_images, int64_t val_images,
                    const std::string& config_path);

}  // namespace ttq::train
