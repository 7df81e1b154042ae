#!/usr/bin/env python3
"""Writes a tiny MNIST-shaped IDX data set for the data-parallel checks: each
image a bright 6x6 square at a place given by its class, plus noise.
Usage: tiny_mnist.py DIR SEED TRAIN_IMAGES TEST_IMAGES (standard library only)."""
import os
import random
import struct
import sys

d, seed, n_train, n_test = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.makedirs(d)
rng = random.Random(seed)
for prefix, n in (("train", n_train), ("t10k", n_test)):
    labels = [rng.randrange(10) for _ in range(n)]
    px = bytearray()
    for k in labels:
        r0, c0 = 2 + (k // 5) * 12, 2 + (k % 5) * 5
        px += bytes(min(255, rng.randrange(60) + (180 if r0 <= r < r0 + 6 and c0 <= c < c0 + 6 else 0))
                    for r in range(28) for c in range(28))
    open(f"{d}/{prefix}-images-idx3-ubyte", "wb").write(struct.pack(">IIII", 0x803, n, 28, 28) + px)
    open(f"{d}/{prefix}-labels-idx1-ubyte", "wb").write(struct.pack(">II", 0x801, n) + bytes(labels))
