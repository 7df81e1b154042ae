#!/usr/bin/env bash
# The test command: installs dependencies, builds (Release, CUDA compiled when
# nvcc and cuDNN are present), runs the file readers' tests under ASan/UBSan,
# then the default ctest suite (CUDA tests are reported skipped without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# Test programs run two at a time on two cores: spinning OpenMP workers would starve each other.
export OMP_WAIT_POLICY=passive

# The file readers face hostile input: their tests also run under sanitizers.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTTQ_CUDA=OFF -DTTQ_SANITIZE=ON \
  -DTTQ_BUILD_BENCH=OFF >build-asan-configure.log 2>&1 || { cat build-asan-configure.log; exit 1; }
cmake --build build-asan --parallel "$(nproc)" --target test_safetensors
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  build-asan/tests/test_safetensors --gtest_brief=1

ctest --test-dir build --output-on-failure --parallel "$(nproc)" --timeout 900 -LE slow
