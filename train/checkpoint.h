// Training checkpoints (docs/formats.md): a safetensors file holding every
// parameter and BN buffer under its PyTorch name (in the TTQ phase the quantized
// weights hold {+Wp, 0, -Wn}, with latent weights and scales beside them), the
// optimiser and scheduler state as tensors, and in __metadata__ the model and
// its config, the phase, the TTQ settings, the epoch, the RNG state and the
// data-loader position. Tests: tests/test_train_loop.cpp.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "engine/io/safetensors.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/plateau.h"
#include "models/model.h"
#include "models/ttq.h"

namespace ttq::train {

// Where a run stands, saved with every checkpoint.
struct RunState {
  int64_t epoch = 0;          // epochs completed
  int64_t batch = 0;          // batches of epoch `epoch + 1` already trained (mid-epoch stop; all
                              // of them: stopped in its validation, which a resume redoes)
  int64_t global_step = 0;    // optimiser steps so far
  double best_val_top1 = -1;  // best validation top-1 so far (-1: none yet)
  std::vector<double> val_top1_history;
  // Partial sums of the interrupted epoch (so its metrics come out the same).
  double part_loss_sum = 0, part_correct = 0, part_count = 0, part_seconds = 0;
  int64_t part_skipped = 0;  // unreadable training images skipped so far in the interrupted epoch
  uint64_t rng_seed = 0, rng_offset = 0;  // nn::global_generator()
};

struct CheckpointContent {
  std::string arch;
  models::ModelConfig config;
  std::string phase;  // fp | ttq
  models::TtqOptions ttq;
  RunState state;
  io::Metadata metadata;  // everything, as read
  io::NamedTensors model_tensors;
  std::map<std::string, Tensor> optimizer_tensors;
  std::map<std::string, double> optimizer_scalars;
  std::map<std::string, double> scheduler_scalars;
};

// Writes atomically. `ttq` is null in the full-precision phase. `extra` metadata
// (data spec, class names, preprocessing) is stored as given.
void save_checkpoint(const std::string& path, models::Model& model, const models::TtqModel* ttq,
                     const optim::Optimizer& opt, const optim::ReduceLROnPlateau& sched,
                     const RunState& state, const io::Metadata& extra);

// Reads and validates a checkpoint written by save_checkpoint (one InputError
// line naming the file on any defect).
CheckpointContent read_checkpoint(const std::string& path);

std::string model_config_json(const models::ModelConfig& c);
models::ModelConfig model_config_from_json(const std::string& s, const std::string& source);

}  // namespace ttq::train
