#!/usr/bin/env bash
# Side-by-side CPU training throughput of the small DenseNet (batch 32, 3x56x56,
# 200 classes): ttq's bench_train_step and the PyTorch peer, in one run on the
# same machine. Prints both and their ratio. Needs a build in build/ and
# Debian's python3-torch (/usr/bin/python3).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$(nproc)
ours=$(OMP_NUM_THREADS=$threads build/bench/bench_train_step --benchmark_filter='small_densenet_cpu' \
  --benchmark_min_time=20 --benchmark_format=json 2>/dev/null |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["benchmarks"][0]["items_per_second"])')
peer=$(/usr/bin/python3 bench/peers/small_densenet_torch.py train --batch 32 --size 56 --threads "$threads" --seconds 20 |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])')
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $threads cores"
printf 'ttq     small DenseNet train step, batch 32, 56x56: %.1f images/s\n' "$ours"
printf 'PyTorch small DenseNet train step, batch 32, 56x56: %.1f images/s\n' "$peer"
/usr/bin/python3 -c "print(f'ratio ttq / PyTorch: {$ours / $peer:.2f}')"
