// When a CPU kernel forks OpenMP threads. Every fork/join costs microseconds
// on an idle machine and far more on a loaded one (a descheduled thread holds
// up the join), so small ops run on the calling thread. Used by engine/cpu/*.cpp.
#pragma once

#include <cstdint>

namespace ttq::cpu {

// Element-wise or reduction work below this many elements stays serial.
constexpr int64_t kParallelElements = int64_t(1) << 15;
// GEMM-like work below this many multiply-adds stays serial.
constexpr int64_t kParallelMacs = int64_t(1) << 18;

}  // namespace ttq::cpu
