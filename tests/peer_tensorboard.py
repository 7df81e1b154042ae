#!/usr/bin/env python3
"""TensorBoard's own reader on a real run's event file.

Trains the small DenseNet for two epochs in full precision and one in the TTQ
phase on a tiny MNIST-layout IDX set made here (random images, seeded), then
reads each run folder's event file with tensorboard's EventAccumulator and
checks the tags and step counts ttq_train promises (docs/formats.md,
"TensorBoard event file"). Exits 77 (ctest: skipped) when the tensorboard
package is not installed (`pip install tensorboard`).

usage: peer_tensorboard.py TTQ_TRAIN
"""
import os
import random
import struct
import subprocess
import sys
import tempfile

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:
    print("tensorboard is not installed (pip install tensorboard): skipped")
    sys.exit(77)


def write_idx(path, magic_dims, payload):
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, len(magic_dims)))
        for d in magic_dims:
            f.write(struct.pack(">I", d))
        f.write(payload)


def make_idx_set(root, n_train, n_test, rng):
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = bytes(i % 10 for i in range(n))
        pixels = bytes(rng.randrange(256) for _ in range(n * 28 * 28))
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte"), [n, 28, 28], pixels)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte"), [n], labels)


def read_run(folder):
    files = [f for f in os.listdir(folder) if "tfevents" in f]
    assert len(files) == 1, f"{folder}: expected one event file, found {files}"
    acc = EventAccumulator(os.path.join(folder, files[0]), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)


def main():
    ttq_train = sys.argv[1]
    rng = random.Random(os.getpid())
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        make_idx_set(data, 60, 20, rng)
        common = ["--model", "small_densenet", "--data", "mnist:" + data, "--batch", "16", "--eval-batch", "32",
                  "--val-size", "20", "--workers", "1", "--device", "cpu", "--quiet"]
        fp, tq = os.path.join(tmp, "fp"), os.path.join(tmp, "ttq")
        subprocess.run([ttq_train, *common, "--phase", "fp", "--epochs", "2", "--out", fp], check=True)
        subprocess.run([ttq_train, *common, "--phase", "ttq", "--epochs", "1", "--init",
                        os.path.join(fp, "best.safetensors"), "--out", tq], check=True)

        # 40 training images in batches of 16: 3 steps per epoch.
        acc = read_run(fp)
        tags = acc.Tags()
        for tag in ("train/loss", "train/lr"):
            events = acc.Scalars(tag)
            check([e.step for e in events] == [1, 2, 3, 4, 5, 6], f"fp {tag} steps {[e.step for e in events]}")
        for tag in ("epoch/train_loss", "epoch/val_loss", "epoch/val_top1", "epoch/val_top5", "epoch/lr"):
            check([e.step for e in acc.Scalars(tag)] == [3, 6], f"fp {tag}")
        check([e.value for e in acc.Scalars("epoch")] == [1.0, 2.0], "fp epoch numbers")
        check("test/top1" in tags["scalars"], "fp test/top1")
        check(not any(t.startswith("ttq/") for t in tags["scalars"]), "fp run has no ttq tags")
        # The per-step loss is the batch's: finite and positive.
        check(all(e.value > 0 for e in acc.Scalars("train/loss")), "fp losses positive")

        acc = read_run(tq)
        tags = acc.Tags()
        layer_tags = [t for t in tags["scalars"] if t.startswith("ttq/") and t.endswith("/wp")]
        check(len(layer_tags) > 0, "ttq per-layer wp tags")
        for t in layer_tags:
            layer = t[len("ttq/"):-len("/wp")]
            for k in ("zero_fraction", "wn"):
                check(f"ttq/{layer}/{k}" in tags["scalars"], f"ttq/{layer}/{k}")
            check(f"ttq/{layer}/latent_weight" in tags["histograms"], f"histogram of {layer}")
            h = acc.Histograms(f"ttq/{layer}/latent_weight")
            check(len(h) == 1 and h[0].step == 3 and h[0].histogram_value.num > 0, f"histogram {layer} content")
            z = acc.Scalars(f"ttq/{layer}/zero_fraction")[0].value
            check(0.0 <= z <= 1.0, f"zero fraction {z}")
        for tag in ("ttq/zero_fraction", "ttq/mean_wp", "ttq/mean_wn"):
            check([e.step for e in acc.Scalars(tag)] == [3], tag)
        check([e.step for e in acc.Scalars("train/loss")] == [1, 2, 3], "ttq train/loss steps")
        print(f"ok: {len(layer_tags)} ternary layers, fp and ttq event files read by tensorboard")


if __name__ == "__main__":
    main()
