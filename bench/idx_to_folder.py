#!/usr/bin/env python3
"""Writes an IDX data set (Fashion-MNIST, MNIST) as an image folder of gray PNGs,
OUT/train/<class>/N.png and OUT/test/<class>/N.png, for measuring the folder
input pipeline on the same images (bench/RESULTS.md, "Input pipeline").
Standard library only.

usage: idx_to_folder.py IDX_DIR OUT_DIR N_TRAIN N_TEST
"""
import gzip
import os
import struct
import sys
import zlib

CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(idx_dir, name):
    for n in (name, name + ".gz"):
        p = os.path.join(idx_dir, n)
        if os.path.exists(p):
            with (gzip.open(p) if p.endswith(".gz") else open(p, "rb")) as f:
                return f.read()
    sys.exit(f"{os.path.join(idx_dir, name)}[.gz]: missing")


def png_gray(w, h, pixels):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\0" + pixels[y * w:(y + 1) * w] for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def main():
    idx_dir, out, n_train, n_test = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = read_idx(idx_dir, f"{prefix}-images-idx3-ubyte")
        labels = read_idx(idx_dir, f"{prefix}-labels-idx1-ubyte")
        for i in range(min(n, len(labels) - 8)):
            d = os.path.join(out, split, CLASSES[labels[8 + i]])
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"{i:05d}.png"), "wb") as f:
                f.write(png_gray(28, 28, images[16 + 784 * i:16 + 784 * (i + 1)]))


if __name__ == "__main__":
    main()
