#!/usr/bin/env bash
# The main job: set up, train the small DenseNet on Fashion-MNIST in full
# precision, quantize it with TTQ, pack it to 2 bits and print a summary.
# Model selection uses a validation split held out of the 60000 training images
# (5000, stratified); the t10k test set is touched once per model: by each run at
# its end (best checkpoint) and by ttq_eval for the packed file.
#   tools/main_job.sh          a short run (a subset, few epochs: ~15 minutes on 2 cores)
#   tools/main_job.sh --full   the full run (all 55000 training images; about an hour on 2 idle cores)
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
  ttq_args=(--epochs 6 --batch 128 --lr 1e-3 --t 0.1 --schedule cosine)
else
  fp_args=(--epochs 3 --batch 64 --lr 0.1 --schedule cosine --limit-train 6000 --limit-val 2000)
  ttq_args=(--epochs 2 --batch 64 --lr 1e-3 --t 0.2 --schedule cosine --limit-train 6000 --limit-val 2000)
fi
# A rerun starts afresh in the same folders.
mkdir -p "$runs"
[[ -d $runs/fp ]] && fp_args+=(--overwrite)
[[ -d $runs/ttq ]] && ttq_args+=(--overwrite)

echo "== full-precision training ($mode) =="
"$bin/ttq_train" --model small_densenet --data "$data" --phase fp --out "$runs/fp" "${fp_args[@]}" "$@"
echo "== TTQ training from $runs/fp/best.safetensors =="
"$bin/ttq_train" --model small_densenet --data "$data" --phase ttq --init "$runs/fp/best.safetensors" \
  --out "$runs/ttq" "${ttq_args[@]}" "$@"

echo "== packing, and the packed file on the Fashion-MNIST test set =="
"$bin/ttq_pack" --in "$runs/ttq/best.safetensors" --out "$runs/ttq/packed.safetensors" >"$runs/ttq/pack.txt"
"$bin/ttq_eval" --weights "$runs/ttq/packed.safetensors" --data "$data" --split test \
  --json "$runs/ttq/eval_packed.json"

python3 - "$runs" <<'PY'
import json, os, sys
runs = sys.argv[1]
def final(run):
    lines = [json.loads(l) for l in open(f"{runs}/{run}/metrics.jsonl")]
    epochs = [l for l in lines if not l.get("final")]
    fin = [l for l in lines if l.get("final")][-1]
    return fin, epochs[fin["best_epoch"] - 1]
pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"
fp, fp_best = final("fp")
tq, tq_best = final("ttq")
pk = json.load(open(f"{runs}/ttq/eval_packed.json"))
mb = lambda p: os.path.getsize(p) / 1e6
print("== summary (test: Fashion-MNIST t10k; best epoch chosen on the validation split) ==")
print(f"full precision: test top1 {pct(fp['test_top1'])}  top5 {pct(fp['test_top5'])}  "
      f"(val top1 {pct(fp_best['val_top1'])}, epoch {fp['best_epoch']}, {fp['test_images']} test images)")
print(f"TTQ:            test top1 {pct(tq['test_top1'])}  top5 {pct(tq['test_top5'])}  "
      f"(val top1 {pct(tq_best['val_top1'])}, epoch {tq['best_epoch']}), "
      f"zeros {100 * tq_best['zero_fraction']:.1f}% of quantized weights")
print(f"packed 2-bit:   test top1 {pct(pk['top1'])}  top5 {pct(pk['top5'])}  file {mb(runs + '/ttq/packed.safetensors'):.2f} MB "
      f"(run on the packed kernels, {pk['seconds']:.1f} s for {pk['images']} images)")
print(f"checkpoint sizes: fp {mb(runs + '/fp/best.safetensors'):.2f} MB, "
      f"ttq (with training state) {mb(runs + '/ttq/best.safetensors'):.2f} MB")
PY
