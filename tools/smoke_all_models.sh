#!/usr/bin/env bash
# Both phases of every model, briefly: full precision for one epoch on 64
# Fashion-MNIST images, then TTQ from that checkpoint for one epoch. Shows that
# ttq_train runs end to end for each architecture on this machine.
# Usage: tools/smoke_all_models.sh [DEVICE]   (cpu by default; cuda on a GPU machine)
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-cpu}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# tv_densenet121 is left out: it needs inputs of 29x29 at least (Fashion-MNIST's are 28x28).
for model in small_densenet squeezenet densenet121 resnet18 squeezenet1_1; do
  for phase in fp ttq; do
    init=()
    [[ $phase == ttq ]] && init=(--init "$out/$model-fp/last.safetensors")
    start=$SECONDS
    build/tools/ttq_train --model "$model" --phase $phase "${init[@]}" --out "$out/$model-$phase" \
      --device "$device" --epochs 1 --batch 32 --limit-train 64 --limit-val 64 --limit-test 64 --quiet 2>&1 | grep '^epoch'
    echo "$model $phase: $((SECONDS - start)) s"
  done
done
