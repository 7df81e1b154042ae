#!/usr/bin/env bash
# A network brought from PyTorch through the whole path on Fashion-MNIST: a small
# CNN defined in PyTorch and exported with torch.onnx (examples/fmnist_cnn.py),
# full-precision training from the .onnx file, TTQ, packing, the packed file on
# the test set, ONNX export of the TTQ and packed models, and the exported file
# run by onnxruntime (bench/peers/onnx_eval.py) for the same accuracy.
#   tools/onnx_whole_path.sh [RUNS_DIR] [extra ttq_train args...]
# Needs a build (tools/setup.sh), Debian's python3-torch for the export and
# onnxruntime (pip) in python3 for the peer. About 10 minutes on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/onnx-fmnist}
shift || true
bin=build/tools
mkdir -p "$runs"
fp_args=(--epochs 4 --batch 128 --lr 0.1 --schedule cosine)
ttq_args=(--epochs 2 --batch 128 --lr 1e-3 --t 0.1 --schedule cosine)
[[ -d $runs/fp ]] && fp_args+=(--overwrite)
[[ -d $runs/ttq ]] && ttq_args+=(--overwrite)

echo "== the PyTorch network as ONNX =="
/usr/bin/python3 examples/fmnist_cnn.py "$runs/fmnist_cnn.onnx"
echo "== full-precision training of $runs/fmnist_cnn.onnx =="
"$bin/ttq_train" --model "$runs/fmnist_cnn.onnx" --data fashion-mnist --phase fp --out "$runs/fp" "${fp_args[@]}" "$@"
echo "== TTQ =="
"$bin/ttq_train" --model "$runs/fmnist_cnn.onnx" --data fashion-mnist --phase ttq --init "$runs/fp/best.safetensors" \
  --out "$runs/ttq" "${ttq_args[@]}" "$@"
echo "== pack, packed eval (no --model: the checkpoint holds the graph) =="
"$bin/ttq_pack" --in "$runs/ttq/best.safetensors" --out "$runs/packed.safetensors" --quiet
"$bin/ttq_eval" --weights "$runs/packed.safetensors" --data fashion-mnist --split test
echo "== ONNX export of the TTQ checkpoint and of the packed file =="
"$bin/ttq_pack" --in "$runs/ttq/best.safetensors" --out "$runs/ttq.onnx"
"$bin/ttq_pack" --in "$runs/packed.safetensors" --out "$runs/packed.onnx"
"$bin/ttq_pack" --weights-only --in "$runs/ttq/best.safetensors" --out "$runs/ttq.weights.safetensors"
"$bin/ttq_eval" --weights "$runs/packed.onnx" --data fashion-mnist --split test
echo "== the exported files in onnxruntime =="
python3 bench/peers/onnx_eval.py "$runs/ttq.onnx"
python3 bench/peers/onnx_eval.py "$runs/packed.onnx"
