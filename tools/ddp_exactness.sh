#!/usr/bin/env bash
# Data parallel against one process, for every model: 2 ranks x B with --sync-bn
# against 1 process x 2B, STEPS optimiser steps on a tiny generated data set
# (dropout off, the same samples in the same order), then the two last
# checkpoints compared: ||a - b|| / ||a|| over all model tensors (must be <= 1e-5)
# and, for information, the largest per-tensor max|a - b| / max(max|a|, 1e-2).
# Usage: tools/ddp_exactness.sh [BUILD_DIR] [STEPS] [B] [MODELS...]   (exit 77: no mpirun / python3)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
[[ $build == /* ]] || build="$PWD/$build"
steps=${2:-4}
batch=${3:-8}
shift $(($# < 3 ? $# : 3))
models=("$@")
((${#models[@]})) || models=(small_densenet squeezenet densenet121)
command -v mpirun >/dev/null || { echo "ddp_exactness: skipped: no mpirun"; exit 77; }
command -v python3 >/dev/null || { echo "ddp_exactness: skipped: no python3"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 tools/tiny_mnist.py "$work/data" 11 400 32
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
fail=0
for m in "${models[@]}"; do
  args=(--model "$m" --data "mnist:$work/data" --device cpu --epochs 1 --dropout 0 --lr 1e-4 --seed 3
        --limit-train $((steps * 2 * batch)) --limit-val 16 --limit-test 8 --workers 1 --quiet)
  "$build/tools/ttq_train" "${args[@]}" --batch $((2 * batch)) --out "$work/$m-1" >"$work/$m-1.log" 2>&1 ||
    { cat "$work/$m-1.log"; exit 1; }
  mpirun --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -np 2 "$build/tools/ttq_train" "${args[@]}" \
    --batch "$batch" --sync-bn --out "$work/$m-2" >"$work/$m-2.log" 2>&1 || { cat "$work/$m-2.log"; exit 1; }
  python3 - "$m" "$work/$m-1/last.safetensors" "$work/$m-2/last.safetensors" <<'EOF' || fail=1
import json, math, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: struct.unpack(f"<{(v['data_offsets'][1] - v['data_offsets'][0]) // 4}f",
                             b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__" and v["dtype"] == "F32" and not k.startswith("optimizer.")}
a, b = tensors(sys.argv[2]), tensors(sys.argv[3])
num = den = worst = 0.0
for k, x in a.items():
    y = b[k]
    num += sum((p - q) ** 2 for p, q in zip(x, y))
    den += sum(p * p for p in x)
    worst = max(worst, max(abs(p - q) for p, q in zip(x, y)) / max(1e-2, max(abs(p) for p in x)))
rel = math.sqrt(num / den)
print(f"{sys.argv[1]:16s} ||a-b||/||a|| {rel:.3g}   worst tensor {worst:.3g}   {'OK' if rel <= 1e-5 else 'FAIL'}")
sys.exit(0 if rel <= 1e-5 else 1)
EOF
done
exit $fail
