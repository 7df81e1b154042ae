#!/usr/bin/python3
"""Exports torchvision networks to ONNX for tests/test_onnx_torchvision.cpp.

usage: /usr/bin/python3 tests/onnx/make_fixtures.py OUT_DIR [NAME...]

Writes, for ResNet-18, SqueezeNet 1.1, DenseNet-121 and MobileNetV2 (random
initialisation, seed 0, 10 classes; BatchNorm statistics set to random values so
that they matter), OUT_DIR/<name>.onnx exported by torch.onnx (opset 13, eval
mode, PyTorch's default constant folding: BN folded into the convs where it
follows one), plus resnet18_bn.onnx exported in training mode (BN kept,
initializers under the state-dict names: how a network is brought to train), and OUT_DIR/<name>_io.safetensors with
a random input [2, 3, 64, 64] ("input") and PyTorch's logits ("logits"); and
the whole-path CNN (examples/fmnist_cnn.py) exported in training mode as
fmnist_cnn_train.onnx with one training-mode forward and backward in
fmnist_cnn_train_io.safetensors: "input" [8, 1, 28, 28], "r" [8, 10], "logits",
and "grad.<parameter>" of sum(logits * r).
NAMEs pick cases (resnet18, resnet18_bn, squeezenet1_1, densenet121,
mobilenet_v2, fmnist_cnn_train; ctest runs one per test). Exit code 77 (ctest: skipped) when torch or torchvision cannot be imported; the
tests then skip too. Debian's python3-torch / python3-torchvision (torch 1.13).
"""
import json
import os
import struct
import sys


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().float().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    wanted = set(sys.argv[2:])
    try:
        import torch
        import torchvision
    except Exception as e:  # noqa: BLE001 - any import failure means "no torch here"
        print("skipped: torch / torchvision not importable (%s)" % e)
        return 77
    import warnings
    warnings.filterwarnings("ignore")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(2)
    cases = [("resnet18", "resnet18", True), ("resnet18_bn", "resnet18", False),
             ("squeezenet1_1", "squeezenet1_1", True), ("densenet121", "densenet121", True),
             ("mobilenet_v2", "mobilenet_v2", True)]
    for i, (name, ctor, fold) in enumerate(cases):
        if wanted and name not in wanted:
            continue
        torch.manual_seed(i)
        model = getattr(torchvision.models, ctor)(num_classes=10)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
        x = torch.randn(2, 3, 64, 64)
        path = os.path.join(out, name + ".onnx")
        # A training-mode trace updates the BN statistics it exports: the logits come after it.
        mode = torch.onnx.TrainingMode.EVAL if fold else torch.onnx.TrainingMode.TRAINING
        torch.onnx.export(model, x, path + ".tmp", opset_version=13, do_constant_folding=fold, training=mode,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        os.replace(path + ".tmp", path)
        model.eval()
        with torch.no_grad():
            logits = model(x)
        write_safetensors(os.path.join(out, name + "_io.safetensors"), {"input": x, "logits": logits})
        print("wrote", path)

    # A training step of the whole-path CNN: logits and gradients in train mode.
    if wanted and "fmnist_cnn_train" not in wanted:
        return 0
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
    from fmnist_cnn import FmnistCnn
    torch.manual_seed(10)
    model = FmnistCnn()
    path = os.path.join(out, "fmnist_cnn_train.onnx")
    torch.onnx.export(model, torch.zeros(2, 1, 28, 28), path + ".tmp", opset_version=13, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.TRAINING, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    os.replace(path + ".tmp", path)
    model.train()
    x, r = torch.randn(8, 1, 28, 28), torch.randn(8, 10)
    logits = model(x)
    (logits * r).sum().backward()
    tensors = {"input": x, "r": r, "logits": logits}
    for name, p in model.named_parameters():
        tensors["grad." + name] = p.grad
    write_safetensors(os.path.join(out, "fmnist_cnn_train_io.safetensors"), tensors)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
