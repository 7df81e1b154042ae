// The valid range of every numeric option of ttq_train and ttq_eval, in one
// place: the tools' flags (parsing and --help) and the libraries' checks
// (resolve_defaults, run_eval) read them from here. Defaults are resolved in
// train/options.cpp. Tests: tests/test_flags.cpp, tests/test_train_loop.cpp.
#pragma once

#include <cstdint>
#include <limits>

#include "engine/flags.h"

namespace ttq::train::limits {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

inline constexpr IntRange kEpochs{1, 100000};
// Batch sizes: far above any batch that fits a model in memory on one device
// today, far below one whose buffers overflow a size computation.
inline constexpr IntRange kBatch{1, 4096};
inline constexpr IntRange kEvalBatch{1, 4096};
inline constexpr RealRange kLr{0, kInf, /*lo_open=*/true};
inline constexpr RealRange kWeightDecay{0, 1};
inline constexpr RealRange kMomentum{0, 1, false, /*hi_open=*/true};
inline constexpr RealRange kT{0, 1, false, true};
inline constexpr RealRange kDropout{0, 1, false, true};
inline constexpr IntRange kWorkers{1, 64};
// --limit-train / --limit-val / --limit-test / ttq_eval --limit: a subset of N images.
inline constexpr IntRange kLimit{1, 1'000'000'000};
// --val-size: images held out of the training images (and fewer than they are:
// data/dataset.cpp resolve_val_size).
inline constexpr IntRange kValSize{1, 1'000'000'000};
// --image-size and --crop (pixels a side; the models accept at most 2048).
inline constexpr IntRange kImageSize{1, 2048};
inline constexpr IntRange kChannels{1, 3};  // and not 2
inline constexpr IntRange kLogEvery{1, 1'000'000'000};
inline constexpr IntRange kEarlyStopPatience{1, 100000};
inline constexpr IntRange kPlateauPatience{0, 100000};

}  // namespace ttq::train::limits
