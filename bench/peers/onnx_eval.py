#!/usr/bin/env python3
"""Top-1 accuracy of an ONNX model on Fashion-MNIST's t10k test set, run by
onnxruntime (PyPI: pip install onnxruntime numpy): the peer check of the ONNX
whole-path run (tools/onnx_whole_path.sh) that a file ttq_pack exported runs
elsewhere with the accuracy ttq_eval measured.

usage: python3 bench/peers/onnx_eval.py MODEL.onnx [FASHION_MNIST_DIR]

Preprocessing as ttq's for IDX data (docs/data.md): pixels / 255, then
(x - 0.2860) / 0.3530, 1x28x28. A sample counts when its label strictly wins
(ties count as wrong, as in ttq). Exit code 77 when onnxruntime is absent.
"""
import gzip
import sys

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    print("skipped: %s" % e)
    sys.exit(77)


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[2] if len(sys.argv) == 3 else "/usr/share/datasets/fashion-mnist"
    images = idx(root + "/t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = idx(root + "/t10k-labels-idx1-ubyte.gz").astype(np.int64)
    x = ((images - 0.2860) / 0.3530)[:, None, :, :].astype(np.float32)
    sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), 500):
        logits = sess.run(None, {name: x[i:i + 500]})[0]
        best = logits.max(axis=1, keepdims=True)
        wins = (logits == best).sum(axis=1) == 1
        correct += int(((logits.argmax(axis=1) == labels[i:i + 500]) & wins).sum())
    print("onnxruntime %s: %s top-1 %.2f%% (%d / %d)" % (ort.__version__, sys.argv[1], 100.0 * correct / len(x),
                                                        correct, len(x)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
