#!/usr/bin/env python3
"""Exports torchvision's own ResNet-18, ResNet-34, DenseNet-121 and SqueezeNet 1.1
for the parity tests of the engine's presets resnet18, resnet34, tv_densenet121
and squeezenet1_1 (tests/test_torchvision_parity.cpp).

For each model, built by torchvision with random initialisation (seeded, 1000
classes) and its BatchNorm weights, biases and running statistics redrawn so
that eval-mode BN is not the identity, it writes into --out:

  <preset>.safetensors     the state dict exactly as torchvision names it
                           (num_batches_tracked included), F32 / I64, no metadata
                           naming the model: what a user exports from PyTorch;
  <preset>_io.safetensors  random inputs input_224 [2,3,224,224] and input_64
                           [2,3,64,64] (seeded normal) and torchvision's logits
                           for them, logits_224 and logits_64, computed in float64
                           from the same float32 weights and stored as F32.

With --names DIR it writes DIR/<preset>.txt instead: one line per state-dict
entry, "name dtype shape", in torchvision's order (the committed lists in
tests/fixtures/torchvision/ that the engine's names are checked against).

Needs Debian's python3-torch and python3-torchvision (no safetensors package:
the format is written here). Exits 77 (ctest's skip code for this test) when
torch or torchvision cannot be imported.
"""
import argparse
import json
import os
import struct
import sys
import tempfile

try:
    import numpy as np
    import torch
    import torchvision
except ImportError as e:  # the parity tests then skip
    print(f"export_torchvision: skipped: {e}", file=sys.stderr)
    sys.exit(77)

SEED = 20261203
PRESETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "tv_densenet121": torchvision.models.densenet121,
    "squeezenet1_1": torchvision.models.squeezenet1_1,
}
DTYPES = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, torch tensor); written atomically (temp file + rename)."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors:
        code, np_dtype = DTYPES[t.dtype]
        b = t.detach().contiguous().cpu().numpy().astype(np_dtype).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for b in blobs:
                f.write(b)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def build(preset, seed):
    torch.manual_seed(seed)
    model = PRESETS[preset](weights=None)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.4 * torch.rand(c, generator=g) - 0.2)
                m.running_mean.copy_(0.4 * torch.rand(c, generator=g) - 0.2)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="folder for the state dicts, inputs and logits (created)")
    ap.add_argument("--names", help="folder for the name / shape lists (created)")
    ap.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    args = ap.parse_args()
    if not args.out and not args.names:
        ap.error("give --out DIR or --names DIR")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    for preset in args.presets:
        k = list(PRESETS).index(preset)  # seeds by preset, whatever --presets selects
        model = build(preset, SEED + 10 * k)
        sd = list(model.state_dict().items())
        if args.names:
            os.makedirs(args.names, exist_ok=True)
            with open(os.path.join(args.names, preset + ".txt"), "w") as f:
                for name, t in sd:
                    f.write(f"{name} {DTYPES[t.dtype][0]} {'x'.join(map(str, t.shape)) or 'scalar'}\n")
        if not args.out:
            continue
        os.makedirs(args.out, exist_ok=True)
        write_safetensors(os.path.join(args.out, preset + ".safetensors"), sd, {"format": "pt"})
        g = torch.Generator().manual_seed(SEED + 10 * k + 2)
        io = []
        model64 = model.double()
        with torch.no_grad():
            for size in (224, 64):
                x = torch.randn(2, 3, size, size, generator=g)
                io.append((f"input_{size}", x))
                io.append((f"logits_{size}", model64(x.double()).float()))
        meta = {"torch": torch.__version__, "torchvision": torchvision.__version__, "seed": str(SEED + 10 * k),
                "logits": "torchvision in float64 from the float32 weights"}
        write_safetensors(os.path.join(args.out, preset + "_io.safetensors"), io, meta)
        print(f"export_torchvision: {preset}: {len(sd)} tensors, "
              f"{sum(t.numel() for n, t in model.named_parameters())} parameters")


if __name__ == "__main__":
    main()
