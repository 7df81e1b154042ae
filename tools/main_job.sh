#!/usr/bin/env bash
# The main job: set up, train the small DenseNet on Fashion-MNIST in full
# precision, quantize it with TTQ, evaluate both and print a summary.
#   tools/main_job.sh          a short run (a subset, few epochs: ~15 minutes on 2 cores)
#   tools/main_job.sh --full   the full run (all 60000 images; about an hour on 2 idle cores)
# Extra arguments after the mode go to both ttq_train calls. Runs go to runs/.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=short
if [[ ${1:-} == --full ]]; then mode=full; shift; fi
bash tools/setup.sh

bin=build/tools
runs=runs/fashion-mnist-$mode
data=fashion-mnist
if [[ $mode == full ]]; then
  fp_args=(--epochs 12 --batch 128 --lr 0.1 --dropout 0.1 --schedule cosine)
  ttq_args=(--epochs 3 --batch 128 --lr 1e-3 --t 0.2 --schedule cosine)
  eval_args=()
else
  fp_args=(--epochs 3 --batch 64 --lr 0.1 --schedule cosine --limit-train 6000 --limit-val 2000)
  ttq_args=(--epochs 2 --batch 64 --lr 1e-3 --t 0.2 --schedule cosine --limit-train 6000 --limit-val 2000)
  eval_args=(--limit-val 2000)
fi

echo "== full-precision training ($mode) =="
"$bin/ttq_train" --model small_densenet --data "$data" --phase fp --out "$runs/fp" "${fp_args[@]}" "$@"
echo "== TTQ training from $runs/fp/best.safetensors =="
"$bin/ttq_train" --model small_densenet --data "$data" --phase ttq --init "$runs/fp/best.safetensors" \
  --out "$runs/ttq" "${ttq_args[@]}" "$@"

echo "== evaluation on the Fashion-MNIST test set =="
"$bin/ttq_eval" --weights "$runs/fp/best.safetensors" --data "$data" "${eval_args[@]}" --json "$runs/fp/eval.json"
"$bin/ttq_eval" --weights "$runs/ttq/best.safetensors" --data "$data" "${eval_args[@]}" --json "$runs/ttq/eval.json"
packed_note=""
if [[ -x $bin/ttq_pack ]]; then
  "$bin/ttq_pack" --in "$runs/ttq/best.safetensors" --out "$runs/ttq/packed.safetensors" >"$runs/ttq/pack.txt"
  "$bin/ttq_eval" --weights "$runs/ttq/packed.safetensors" --data "$data" "${eval_args[@]}" \
    --json "$runs/ttq/eval_packed.json"
  packed_note="$runs/ttq/packed.safetensors"
fi

python3 - "$runs" "$packed_note" <<'PY'
import json, os, sys
runs, packed = sys.argv[1], sys.argv[2]
fp = json.load(open(f"{runs}/fp/eval.json"))
tq = json.load(open(f"{runs}/ttq/eval.json"))
last = [json.loads(l) for l in open(f"{runs}/ttq/metrics.jsonl")]
best = max(last, key=lambda m: m["val_top1"])
mb = lambda p: os.path.getsize(p) / 1e6
print("== summary ==")
print(f"full precision: top1 {100*fp['top1']:.2f}%  top5 {100*fp['top5']:.2f}%  ({fp['images']} test images)")
print(f"TTQ:            top1 {100*tq['top1']:.2f}%  top5 {100*tq['top5']:.2f}%  zeros {100*best['zero_fraction']:.1f}% of quantized weights")
print(f"checkpoint sizes: fp {mb(runs + '/fp/best.safetensors'):.2f} MB, ttq (with training state) {mb(runs + '/ttq/best.safetensors'):.2f} MB")
if packed:
    pk = json.load(open(f"{runs}/ttq/eval_packed.json"))
    print(f"packed 2-bit:   top1 {100*pk['top1']:.2f}%  top5 {100*pk['top5']:.2f}%  file {mb(packed):.2f} MB "
          f"(evaluated on the packed kernels, {pk['seconds']:.1f} s vs {tq['seconds']:.1f} s for the float TTQ model)")
PY
