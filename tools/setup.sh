#!/usr/bin/env bash
# Installs ttq's build dependencies from Debian's packages (skipped when all are
# present), then configures and builds the project in build/ (Release).
# Usage: tools/setup.sh [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build pkg-config
          libopenblas-dev libdnnl-dev zlib1g-dev libstb-dev nlohmann-json3-dev libcli11-dev
          libgtest-dev libgmock-dev libbenchmark-dev
          clang libclang-rt-dev libomp-dev  # the fuzz targets: libFuzzer, sanitizers, OpenMP for clang
          clang-format                      # the formatting check of the test command
          libonnx-dev libprotobuf-dev       # ONNX import / export (models/onnx.cpp)
          python3-torch python3-torchvision # the torchvision ONNX fixtures of the tests (tests/onnx/)
          libopenmpi-dev openmpi-bin        # data-parallel training across processes (mpirun)
          dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >build-configure.log 2>&1 ||
  { cat build-configure.log; exit 1; }
grep -E "^-- ttq:" build-configure.log || true
cmake --build build --parallel "$(nproc)"
