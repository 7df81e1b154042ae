#!/usr/bin/env bash
# Data-parallel scaling on one machine: 1 rank x 1 thread with the global batch
# against N ranks x 1 thread with 1/N of it each (the same samples per step), in
# one run of this script, one model after the other. Prints images/s of the
# training epoch (metrics.jsonl), the ratio, and the time per step a rank waited
# for gradient sums after backward (the log's "data parallel:" line).
# Usage: bench/ddp_scaling.sh [BUILD_DIR] [RANKS] [GLOBAL_BATCH] [IMAGES] [MODELS...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
ranks=${2:-2}
global=${3:-64}
images=${4:-1024}
shift $(($# < 4 ? $# : 4))
models=("$@")
((${#models[@]})) || models=(small_densenet squeezenet)
data=${TTQ_BENCH_DATA:-fashion-mnist}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
common=(--data "$data" --device cpu --epochs 1 --limit-train "$images" --limit-val 64 --limit-test 16
        --workers 1 --seed 1 --quiet)
ips() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["images_per_second"])' "$1"; }
printf "%-16s %12s %12s %8s %16s\n" model "1 rank img/s" "$ranks ranks img/s" ratio "wait ms/step"
for m in "${models[@]}"; do
  "$build/tools/ttq_train" --model "$m" "${common[@]}" --batch "$global" --out "$work/$m-1" >"$work/$m-1.log" 2>&1
  mpirun --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -np "$ranks" "$build/tools/ttq_train" \
    --model "$m" "${common[@]}" --batch $((global / ranks)) --out "$work/$m-n" >"$work/$m-n.log" 2>&1
  one=$(ips "$work/$m-1/metrics.jsonl")
  many=$(ips "$work/$m-n/metrics.jsonl")
  wait_ms=$(sed -n 's/^data parallel: \([0-9.]*\) ms per step.*/\1/p' "$work/$m-n.log" | head -1)
  bytes=$(sed -n 's/.*buckets of \([0-9]*\) bytes.*/\1/p' "$work/$m-n.log" | head -1)
  printf "%-16s %12.1f %12.1f %8.2f %16s   (%s gradient bytes per step)\n" "$m" "$one" "$many" \
    "$(python3 -c "print($many / $one)")" "$wait_ms" "$bytes"
done
