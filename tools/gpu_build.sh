#!/usr/bin/env bash
# Builds, on a machine without a GPU, the bundle that tools/gpu_check.sh runs
# on a GPU machine (docs/architecture.md, "The GPU check"): a Release build for
# sm_90 with GoogleTest and the BLAS linked statically (TTQ_STATIC_DEPS=ON), then a stage
# folder holding the stripped CUDA test programs and every benchmark, the
# shared libraries they need that a CUDA machine may lack (Google Benchmark,
# OpenMP, ...), and a manifest. CUDA's own libraries (cudart, cuBLAS, cuDNN)
# are not shipped: gpu_check.sh finds that machine's.
#
# The programs link the BLAS statically, and each one that uses it carries all
# of OpenBLAS's per-CPU kernels (~25 MB): the stage folder is some 400 MB, the
# xz archive of it (one solid stream, so the repeated BLAS code packs to almost
# nothing) about 11 MB for 19 programs.
#
# Usage: tools/gpu_build.sh [BUILD_DIR]     (default build-gpu)
# Makes BUILD_DIR/stage/{bin,lib,MANIFEST.txt} and BUILD_DIR/carry/ttq-gpu-bundle.tar.xz;
# carry BUILD_DIR/carry (or the stage folder) to the GPU machine and run
# tools/gpu_check.sh there, from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
stage=$build/stage
limit_mib=${GPU_STAGE_LIMIT_MIB:-60}

log=build-gpu-configure.log
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTTQ_CUDA=ON -DTTQ_STATIC_DEPS=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 >"$log" 2>&1 || { cat "$log"; exit 1; }
grep -E "^-- ttq:" "$log" || true

# The test programs with CUDA cases, and every benchmark.
mapfile -t tests < <(grep -l -E 'cuda::|Device::cuda|all_devices\(' tests/test_*.cpp | xargs -n1 basename | sed 's/\.cpp$//' | sort)
mapfile -t benches < <(ls bench/bench_*.cpp 2>/dev/null | xargs -n1 basename | sed 's/\.cpp$//' | sort)
echo "gpu_build: ${#tests[@]} test programs, ${#benches[@]} benchmarks"
ninja -C "$build" -j"${JOBS:-$(nproc)}" "${tests[@]}" "${benches[@]}"

rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib"
for t in "${tests[@]}"; do cp "$build/tests/$t" "$stage/bin/"; done
for b in "${benches[@]}"; do cp "$build/bench/$b" "$stage/bin/"; done
strip --strip-unneeded "$stage"/bin/*

# Shared libraries to ship: whatever the binaries load that is neither the C /
# C++ runtime (present on any Linux machine that runs nvcc) nor CUDA's.
system_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libstdc\+\+\.so|libgcc_s\.so)'
cuda_re='^(libcuda\.so|libcudart\.so|libcublas\.so|libcublasLt\.so|libcudnn|libnvrtc|libnvJitLink)'
declare -A shipped=()
for f in "$stage"/bin/*; do
  while read -r name path; do
    [[ -z $path || $path != /* ]] && continue
    [[ $name =~ $system_re || $name =~ $cuda_re ]] && continue
    [[ -n ${shipped[$name]:-} ]] && continue
    cp -L "$path" "$stage/lib/$name"
    shipped[$name]=1
  done < <(ldd "$f" | awk '/=>/ {print $1, $3}')
done
strip --strip-unneeded "$stage"/lib/* 2>/dev/null || true

{
  echo "ttq GPU bundle"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (plus uncommitted changes)')"
  echo "nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo unknown)"
  echo "cudnn headers: $(grep -hE '#define CUDNN_(MAJOR|MINOR|PATCHLEVEL)' "$(grep -E '^CUDNN_INCLUDE_DIR' "$build/CMakeCache.txt" | cut -d= -f2)/cudnn_version.h" 2>/dev/null | awk '{printf "%s%s", sep, $3; sep="."}')"
  echo "arch: sm_90"
  echo "tests: ${tests[*]}"
  echo "benchmarks: ${benches[*]}"
  echo "shipped libraries: ${!shipped[*]}"
} >"$stage/MANIFEST.txt"

mkdir -p "$build/carry"
rm -f "$build/carry/ttq-gpu-bundle.tar.xz"
echo "gpu_build: compressing $(du -sh "$stage" | cut -f1) into $build/carry/ttq-gpu-bundle.tar.xz"
tar -C "$stage" -cf - . | xz --lzma2=preset=6,dict=64MiB -T1 >"$build/carry/ttq-gpu-bundle.tar.xz"
cp "$stage/MANIFEST.txt" "$build/carry/"
# The seed fixtures are not carried: they are part of the repository
# (tests/fixtures/seed) and gpu_check.sh points TTQ_SEED_DIR at the copy there.
# A seed-models/ folder that an earlier bundle left in the carry folder goes.
chmod -R u+w "$build/carry/seed-models" 2>/dev/null || true
rm -rf "$build/carry/seed-models"
ls -la "$stage/bin" "$stage/lib" | awk 'NF > 5 && $NF !~ /^\.+$/ {printf "  %10d  %s\n", $5, $NF}'
size_kib=$(du -sk "$build/carry" | cut -f1)
echo "gpu_build: $build/carry holds $((size_kib / 1024)) MiB ($size_kib KiB)"
if ((size_kib > limit_mib * 1024)); then
  echo "gpu_build: the carried folder is larger than ${limit_mib} MiB" >&2
  exit 1
fi
