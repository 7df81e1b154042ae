#!/usr/bin/env python3
"""PyTorch int8 peer for bench/bench_packed_model.cpp's packed_int8_cpu runs: the
seed's TTQ small DenseNet and SqueezeNet (the networks of packed_infer_torch.py, the
same weights) quantized with PyTorch's own static post-training quantization
(torch.ao FX graph mode: prepare_fx, calibration, convert_fx) on the x86 quantized
engine this PyTorch has, oneDNN ("onednn"; Debian's python3-torch 1.13 has no
fbgemm), then timed in eval mode: batch-1 latency and batch-32 throughput.

Calibration: 32 images drawn like the benchmark input (uniform on [-2, 2], as
bench_packed_model calibrates its int8 runs), 8 per batch. Before timing, the
quantized logits are compared with the float model's (max_rel_vs_float).

One JSON line per (model, batch) on stdout:
  {"peer": "pytorch-int8 ...", "model": ..., "engine": "onednn", "threads": ...,
   "batch": ..., "ms_per_batch": median wall, "cpu_ms_per_batch": median process CPU time,
   "images_per_second": ..., "max_rel_vs_float": ...}

  /usr/bin/python3 bench/peers/packed_int8_torch.py --threads 1
Exits 77 (skip) when torch or its oneDNN quantized engine is missing.
"""
import argparse
import json
import os
import sys
import time

try:
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
except ImportError as e:  # the peer is optional
    print("skip: %s" % e, file=sys.stderr)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from packed_infer_torch import SEED_DIR, SmallDenseNet, SqueezeNet, load  # noqa: E402


def median_times(fn, warmup, iters):
    """Median wall and process-CPU milliseconds per call. On a loaded machine the CPU
    time (one thread) is the comparable number: Google Benchmark's CPU column."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iters):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    wall.sort()
    cpu.sort()
    return wall[len(wall) // 2], cpu[len(cpu) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="small_densenet,squeezenet")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--seed-dir", default=SEED_DIR)
    args = ap.parse_args()
    if "onednn" not in torch.backends.quantized.supported_engines:
        print("skip: no onednn quantized engine (%s)" % torch.backends.quantized.supported_engines, file=sys.stderr)
        sys.exit(77)
    torch.backends.quantized.engine = "onednn"
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(11)
    calib = torch.rand(32, 3, 56, 56, generator=g) * 4 - 2
    for name in args.models.split(","):
        model = SmallDenseNet() if name == "small_densenet" else SqueezeNet()
        load(model, os.path.join(args.seed_dir, name + "_ttq.safetensors"))
        qmap = get_default_qconfig_mapping("onednn")
        prepared = prepare_fx(model, qmap, example_inputs=(calib[:1],))
        with torch.no_grad():
            for i in range(0, 32, 8):
                prepared(calib[i:i + 8])
        qmodel = convert_fx(prepared).eval()
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.rand(batch, 3, 56, 56, generator=torch.Generator().manual_seed(3)) * 4 - 2
            with torch.no_grad():
                ref = model(x)
                got = qmodel(x)
                rel = float((got - ref).abs().max() / ref.abs().max())
                ms, cpu_ms = median_times(lambda: qmodel(x), 5, args.iters if batch == 1 else max(5, args.iters // 5))
            print(json.dumps({"peer": "pytorch-int8 " + torch.__version__, "model": name, "engine": "onednn",
                              "threads": torch.get_num_threads(), "batch": batch, "ms_per_batch": round(ms, 4),
                              "cpu_ms_per_batch": round(cpu_ms, 4),
                              "images_per_second": round(batch * 1e3 / ms, 1), "max_rel_vs_float": rel}),
                  flush=True)


if __name__ == "__main__":
    main()
