#!/usr/bin/env bash
# Side-by-side CPU training throughput (3x56x56 inputs, 200 classes): ttq's
# bench_train_step and the PyTorch peer, in one run on the same machine.
# Prints both and their ratio. Needs a build in build/ and Debian's
# python3-torch (/usr/bin/python3).
#   tools/compare_train_throughput.sh [MODEL]
# MODEL: small_densenet (default, batch 32), squeezenet (batch 32) or
# densenet121 (batch 16).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-small_densenet}
case $model in
  small_densenet | squeezenet) batch=32 ;;
  densenet121) batch=16 ;;
  *) echo "compare_train_throughput.sh: unknown model '$model' (small_densenet, squeezenet, densenet121)" >&2; exit 2 ;;
esac
threads=$(nproc)
ours=$(OMP_NUM_THREADS=$threads build/bench/bench_train_step --benchmark_filter="^train_step/${model}_cpu/" \
  --benchmark_min_time=20 --benchmark_format=json 2>/dev/null |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["benchmarks"][0]["items_per_second"])')
peer=$(/usr/bin/python3 bench/peers/small_densenet_torch.py train --model "$model" --batch "$batch" --size 56 \
  --threads "$threads" --seconds 20 |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])')
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $threads cores"
printf 'ttq     %s train step, batch %d, 56x56: %.1f images/s\n' "$model" "$batch" "$ours"
printf 'PyTorch %s train step, batch %d, 56x56: %.1f images/s\n' "$model" "$batch" "$peer"
/usr/bin/python3 -c "print(f'ratio ttq / PyTorch: {$ours / $peer:.2f}')"
