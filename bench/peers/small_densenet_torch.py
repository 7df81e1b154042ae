#!/usr/bin/env python3
"""PyTorch peer of ttq's training step for the three models of
docs/architecture.md, "Models" (--model): the small DenseNet (the seed's DenseNet-BC: conv0 3x3
3->48, BN, ReLU, maxpool 3/2/1; blocks (8, 12, 10), growth 12, bn_size 4,
dropout 0.25; transitions halve channels + avgpool 2; norm4; ReLU; global
avgpool; dropout; Linear), DenseNet-121 (the same structure with conv0 3->64,
no pool0, blocks (6, 12, 24, 16), growth 32, no dropout in the dense layers)
and the seed's SqueezeNet (defined in packed_infer_torch.py).

Modes (one JSON line on stdout):
  train  images/s of training steps (forward, cross-entropy, backward, SGD
         Nesterov step) at --batch on --size x --size inputs;
  infer  batch-1 (or --batch) eval latency in ms.
Run with Debian's python3-torch: /usr/bin/python3 bench/peers/small_densenet_torch.py train
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class DenseLayer(nn.Module):
    def __init__(self, c, growth=12, bn_size=4, drop=0.25):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)
        self.drop = drop

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        y = F.dropout(y, self.drop, self.training)
        return torch.cat([x, y], 1)


class SmallDenseNet(nn.Module):
    def __init__(self, in_ch=3, classes=200, blocks=(8, 12, 10), growth=12, init=48, pool0=True, layer_drop=0.25):
        super().__init__()
        layers = [nn.Conv2d(in_ch, init, 3, padding=1, bias=False), nn.BatchNorm2d(init), nn.ReLU()]
        if pool0:
            layers.append(nn.MaxPool2d(3, 2, 1))
        c = init
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth, drop=layer_drop))
                c += growth
            if i + 1 < len(blocks):
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(F.dropout(x, 0.25, self.training))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "infer", "params"])
    ap.add_argument("--model", choices=["small_densenet", "squeezenet", "densenet121"], default="small_densenet")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.model == "small_densenet":
        m = SmallDenseNet(classes=a.classes)
    elif a.model == "densenet121":
        m = SmallDenseNet(classes=a.classes, blocks=(6, 12, 24, 16), growth=32, init=64, pool0=False, layer_drop=0.0)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from packed_infer_torch import SqueezeNet
        m = SqueezeNet(classes=a.classes)
    if a.mode == "params":
        print(json.dumps({"parameters": sum(p.numel() for p in m.parameters())}))
        return
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, a.classes, (a.batch,))
    if a.mode == "train":
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.95, nesterov=True, weight_decay=1e-4)

        def step():
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
        for _ in range(2):
            step()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < a.seconds:
            step()
            n += 1
        dt = time.perf_counter() - t0
        print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "model": a.model, "mode": "train", "batch": a.batch,
                          "size": a.size, "threads": a.threads, "steps": n,
                          "images_per_second": n * a.batch / dt}))
    else:
        m.eval()
        with torch.no_grad():
            for _ in range(3):
                m(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < a.seconds:
                m(x)
                n += 1
            dt = time.perf_counter() - t0
        print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "model": a.model, "mode": "infer", "batch": a.batch,
                          "size": a.size, "threads": a.threads, "iterations": n,
                          "ms_per_batch": 1000 * dt / n}))


if __name__ == "__main__":
    main()
