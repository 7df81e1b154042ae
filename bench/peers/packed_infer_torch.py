#!/usr/bin/env python3
"""PyTorch peer for bench/bench_packed_model.cpp: eval-mode inference of the
seed's TTQ small DenseNet and SqueezeNet (tests/fixtures/seed, the seed's state-dict
names, ternary weights stored as floats), batch-1 latency and batch-32 throughput
on the same machine, after checking the logits against reference_io.

One JSON line per (model, batch) on stdout:
  {"peer": "pytorch", "model": ..., "device": ..., "threads": ..., "batch": ...,
   "ms_per_batch": median, "images_per_second": ..., "max_rel_vs_reference": ...}

Run with Debian's python3-torch (CPU) or any PyTorch with CUDA:
  /usr/bin/python3 bench/peers/packed_infer_torch.py --threads 2
  python3 bench/peers/packed_infer_torch.py --device cuda
The GPU check (tools/gpu_check.sh) runs:
gpu_check: --device cuda --iters 100
"""
import argparse
import json
import os
import struct
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SEED_DIR = os.environ.get("TTQ_SEED_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "seed")


def read_safetensors(path):
    """Minimal reader (the safetensors package is not needed): name -> float32 array."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", (name, e["dtype"])
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(data[b:end], dtype="<f4").reshape(e["shape"]).copy()
    return out


class DenseLayer(nn.Module):
    def __init__(self, c, growth, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], 1)


class SmallDenseNet(nn.Module):
    """The seed's small DenseNet-BC (docs/architecture.md, "Models") with its state-dict names."""

    def __init__(self, classes=200, blocks=(8, 12, 10), growth=12, bn_size=4, init=48):
        super().__init__()
        f = nn.Sequential()
        f.add_module("conv0", nn.Conv2d(3, init, 3, padding=1, bias=False))
        f.add_module("norm0", nn.BatchNorm2d(init))
        f.add_module("relu0", nn.ReLU())
        f.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        c = init
        for i, n in enumerate(blocks):
            block = nn.Sequential()
            for j in range(n):
                block.add_module("denselayer%d" % (j + 1), DenseLayer(c, growth, bn_size))
                c += growth
            f.add_module("denseblock%d" % (i + 1), block)
            if i + 1 < len(blocks):
                t = nn.Sequential()
                t.add_module("norm", nn.BatchNorm2d(c))
                t.add_module("relu", nn.ReLU())
                t.add_module("conv", nn.Conv2d(c, c // 2, 1, bias=False))
                t.add_module("pool", nn.AvgPool2d(2))
                f.add_module("transition%d" % (i + 1), t)
                c //= 2
        f.add_module("norm4", nn.BatchNorm2d(c))
        self.features = f
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.features(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))

    @staticmethod
    def rename(name):
        for a in ("norm", "conv"):
            for i in ("1", "2"):
                name = name.replace(".%s.%s." % (a, i), ".%s%s." % (a, i))
        return name


class Fire(nn.Module):
    def __init__(self, cin, s, e1, e3, residual):
        super().__init__()
        self.residual = residual
        self.squeeze_bn = nn.BatchNorm2d(cin)
        self.squeeze = nn.Conv2d(cin, s, 1, bias=False)
        self.expand1x1_bn = nn.BatchNorm2d(s)
        self.expand1x1 = nn.Conv2d(s, e1, 1, bias=False)
        self.expand3x3_bn = nn.BatchNorm2d(s)
        self.expand3x3 = nn.Conv2d(s, e3, 3, padding=1, bias=False)

    def forward(self, x):
        s = self.squeeze(F.relu(self.squeeze_bn(x)))
        y = torch.cat([self.expand1x1(F.relu(self.expand1x1_bn(s))), self.expand3x3(F.relu(self.expand3x3_bn(s)))], 1)
        return y + x if self.residual else y


class SqueezeNet(nn.Module):
    """The seed's SqueezeNet variant (tests/fixtures/seed/README.md)."""

    def __init__(self, classes=200):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64, 64, False), Fire(128, 16, 64, 64, True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128, 128, False), Fire(256, 32, 128, 128, True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192, 192, False), Fire(384, 48, 192, 192, True), Fire(384, 64, 256, 256, False),
            Fire(512, 64, 256, 256, True))
        self.classifier = nn.Sequential(nn.Dropout(0.6), nn.Conv2d(512, classes, 1), nn.ReLU())

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.classifier(self.features(x)), 1).flatten(1)

    @staticmethod
    def rename(name):
        return name


def load(model, path):
    state = {model.rename(k): torch.from_numpy(v) for k, v in read_safetensors(path).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    assert not missing and not unexpected, (missing, unexpected)
    return model.eval()


def median_ms(fn, warmup, iters, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--models", default="small_densenet,squeezenet")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--seed-dir", default=SEED_DIR)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    ref = read_safetensors(os.path.join(args.seed_dir, "reference_io.safetensors"))
    for name in args.models.split(","):
        model = (SmallDenseNet() if name == "small_densenet" else SqueezeNet())
        load(model, os.path.join(args.seed_dir, name + "_ttq.safetensors")).to(dev)
        with torch.no_grad():
            got = model(torch.from_numpy(ref["input"]).to(dev)).cpu().numpy()
        expect = ref[name + "_ttq.logits"]
        rel = float(np.abs(got - expect).max() / np.abs(expect).max())
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randn(batch, 3, 56, 56, generator=torch.Generator().manual_seed(1)).to(dev)
            with torch.no_grad():
                ms = median_ms(lambda: model(x), 5, args.iters if batch == 1 else max(5, args.iters // 5), sync)
            print(json.dumps({"peer": "pytorch " + torch.__version__, "model": name, "device": args.device,
                              "threads": torch.get_num_threads(), "batch": batch, "ms_per_batch": round(ms, 4),
                              "images_per_second": round(batch * 1e3 / ms, 1), "max_rel_vs_reference": rel}),
                  flush=True)


if __name__ == "__main__":
    main()
