#!/usr/bin/env bash
# The test command: installs dependencies, builds (Release, CUDA compiled when
# nvcc and cuDNN are present), checks that the sources are clang-formatted,
# runs the file readers' tests under ASan/UBSan, fuzzes each reader for a
# bounded time, then the default ctest suite (CUDA tests are reported skipped
# without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh

# Every C++ / CUDA source is formatted by .clang-format (tools/format.sh fixes it).
bash tools/format.sh --check
# Test programs run two at a time on two cores: spinning OpenMP workers would starve each other.
export OMP_WAIT_POLICY=passive

# The file readers face hostile input: their tests also run under sanitizers.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTTQ_CUDA=OFF -DTTQ_SANITIZE=ON \
  -DTTQ_BUILD_BENCH=OFF >build-asan-configure.log 2>&1 || { cat build-asan-configure.log; exit 1; }
cmake --build build-asan --parallel "$(nproc)" --target test_safetensors
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  build-asan/tests/test_safetensors --gtest_brief=1

# Each reader (safetensors, image decoding, IDX, ONNX) under libFuzzer for 25 s. Its
# own folder, clang, and only the fuzz targets with what they link.
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ -DTTQ_CUDA=OFF \
  -DTTQ_FUZZ=ON -DTTQ_FUZZ_SECONDS=25 -DBUILD_TESTING=OFF -DTTQ_BUILD_BENCH=OFF \
  >build-fuzz-configure.log 2>&1 || { cat build-fuzz-configure.log; exit 1; }
cmake --build build-fuzz --parallel "$(nproc)" --target fuzz_safetensors fuzz_image fuzz_idx fuzz_onnx
ctest --test-dir build-fuzz/fuzz --output-on-failure --parallel "$(nproc)" --no-tests=error -L fuzz

ctest --test-dir build --output-on-failure --parallel "$(nproc)" --timeout 900 -LE slow
