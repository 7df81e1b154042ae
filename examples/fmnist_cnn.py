#!/usr/bin/python3
"""A small CNN for Fashion-MNIST defined in PyTorch and exported with torch.onnx:
the network of the ONNX whole-path run (tools/onnx_whole_path.sh, README "Bring a
PyTorch model").

usage: /usr/bin/python3 examples/fmnist_cnn.py OUT.onnx

Random initialisation (ttq_train initialises it again: only the architecture is
used unless --init OUT.onnx). Exported in training mode without constant
folding: an eval-mode export folds each BatchNorm into the conv before it
(nothing left to train), a training-mode one keeps the BatchNorm layers (and any
Dropout) with the state-dict names.
Debian's python3-torch (torch 1.13).
"""
import os
import sys

import torch
from torch import nn


def block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FmnistCnn(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(*block(1, 16), *block(16, 16), nn.MaxPool2d(2),
                                      *block(16, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = FmnistCnn()
    x = torch.zeros(2, 1, 28, 28)
    tmp = sys.argv[1] + ".tmp"
    torch.onnx.export(model, x, tmp, opset_version=13, training=torch.onnx.TrainingMode.TRAINING,
                      do_constant_folding=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    os.replace(tmp, sys.argv[1])
    print("wrote", sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
