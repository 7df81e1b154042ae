// ttq_pack --act-bits 8's library side: the calibration images (a seeded subset of
// the training split, never validation or test) and packing with int8 activation
// scales (models/packed.h, "int8 activation calibration"; docs/int8.md).
// Tests: tests/test_int8_model.cpp.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "engine/io/safetensors.h"
#include "models/packed.h"

namespace ttq::app {

struct CalibrationOptions {
  std::string data;                                       // data spec (data/dataset.h), e.g. "fashion-mnist"
  int64_t images = 512;                                   // --calib-images
  models::CalibMethod method = models::CalibMethod::Mse;  // chosen on validation (docs/int8.md)
  int64_t val_size = -1;  // held-out validation size (-1: the weights' metadata "split", else the default)
  uint64_t seed = 0;
  int workers = 2;
};

// `images` images drawn (seeded) from the training split of o.data, preprocessed as
// ttq_eval reads them: the validation split is held out as the weights' metadata
// "split" records (so calibration sees neither validation nor test images). Fewer when
// the split is smaller. Checks the data against `config` (channels, classes).
// InputError (one line naming the flag or file) for bad data.
Tensor calibration_images(const CalibrationOptions& o, const io::Metadata& meta,
                          const models::ModelConfig& config, const std::string& source);

struct Int8PackResult {
  models::PackReport report;
  models::Calibration calibration;
};
// Packs `in` like models::pack_model_file, calibrates the int8 activations of the
// packed model on calibration_images and writes `out` with the scales (one atomic
// write; nothing is written when any step fails). Progress lines go to `log`.
Int8PackResult pack_int8_file(const std::string& in, const std::string& out, const std::string& arch_flag,
                              const CalibrationOptions& o, std::ostream& log);

}  // namespace ttq::app
