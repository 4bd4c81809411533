#!/usr/bin/env python3
"""Converts LPIPS weights a user already has into the one safetensors file cm loads
(eval/lpips.h, run configuration consistency.lpips.weights).

Inputs:
  --vgg    torchvision's VGG16 ImageNet checkpoint, vgg16-397923af.pth (the state dict of
           torchvision.models.vgg16: "features.N.weight/bias" and "classifier.*", which is dropped),
           or a features-only state dict ("N.weight").
  and the five linear heads, one of
  --lpips  the lpips package's lpips/weights/v0.1/vgg.pth ("linK.model.1.weight" [1, C, 1, 1]);
           these are the original LPIPS heads (richzhang/PerceptualSimilarity);
  --piq    piq's lpips_weights.pt (photosynthesis.metrics release v0.4.0): a list of five tensors
           of C weights each, used by openai/consistency_models through piq.LPIPS.

Output (--out): float32 tensors named as cm's Lpips module names them
  features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight / .bias    (torchvision's names, unchanged)
  lin{0..4}.model.1.weight [1, C, 1, 1]                            (the lpips package's names)
with metadata {"format": "cm-lpips", "heads": "lpips" | "piq"}. Which variant (piq: average pools
and ImageNet mean/std; original: max pools and the LPIPS scaling layer) is chosen at run time
(consistency.lpips.variant), not here: both use the same VGG16 weights.

Usage: /usr/bin/python3 tools/convert_lpips.py --vgg vgg16-397923af.pth --lpips vgg.pth \\
           --out lpips_vgg16.safetensors
Needs only torch (to read the .pth files); nothing is downloaded.
"""
import argparse
import json
import struct
import sys

import torch

CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16().features
BLOCK_OF_CONV = [0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
VGG16_WIDTHS = [64, 128, 256, 512, 512]


def fail(msg):
    sys.exit("convert_lpips: " + msg)


def load(path):
    try:
        return torch.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        fail(f"cannot read {path}: {e}")


def vgg_features(path):
    sd = load(path)
    if not isinstance(sd, dict):
        fail(f"{path}: expected a state dict (torchvision's vgg16), got {type(sd).__name__}")
    prefix = "features." if any(k.startswith("features.") for k in sd) else ""
    out, widths, c_in = {}, [None] * 5, 3
    for i, b in zip(CONV_INDICES, BLOCK_OF_CONV):
        for part in ("weight", "bias"):
            key = f"{prefix}{i}.{part}"
            if key not in sd:
                fail(f"{path}: no tensor {key}; is this torchvision's vgg16 checkpoint?")
            out[f"features.{i}.{part}"] = sd[key].detach().float().contiguous()
        w = out[f"features.{i}.weight"]
        if w.dim() != 4 or w.shape[1] != c_in or tuple(w.shape[2:]) != (3, 3):
            fail(f"{path}: features.{i}.weight has shape {list(w.shape)}, expected [C, {c_in}, 3, 3]")
        if out[f"features.{i}.bias"].shape != (w.shape[0],):
            fail(f"{path}: features.{i}.bias does not match features.{i}.weight")
        if widths[b] is not None and widths[b] != w.shape[0]:
            fail(f"{path}: block {b + 1} has convolutions of different widths")
        widths[b] = w.shape[0]
        c_in = w.shape[0]
    return out, widths


def lpips_heads(path):
    sd = load(path)
    if not isinstance(sd, dict):
        fail(f"{path}: expected the lpips package's vgg.pth (a state dict)")
    heads = []
    for k in range(5):
        key = f"lin{k}.model.1.weight"
        if key not in sd:
            fail(f"{path}: no tensor {key}; is this lpips/weights/v0.1/vgg.pth?")
        heads.append(sd[key])
    return heads


def piq_heads(path):
    w = load(path)
    if isinstance(w, dict):  # tolerate a dict of five tensors in order
        w = list(w.values())
    if not isinstance(w, (list, tuple)) or len(w) != 5:
        fail(f"{path}: expected piq's lpips_weights.pt, a list of five tensors")
    return list(w)


def save_safetensors(path, tensors, metadata):
    """The reference writer's layout: metadata first, tensors sorted by name (one dtype), header
    padded with spaces to a multiple of 8."""
    header = {"__metadata__": metadata}
    offset, blobs = 0, []
    for name in sorted(tensors):
        data = tensors[name].numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for blob in blobs:
            f.write(blob)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vgg", required=True, help="torchvision's vgg16-397923af.pth")
    heads = ap.add_mutually_exclusive_group(required=True)
    heads.add_argument("--lpips", help="the lpips package's weights/v0.1/vgg.pth")
    heads.add_argument("--piq", help="piq's lpips_weights.pt")
    ap.add_argument("--out", required=True, help="the safetensors file to write")
    args = ap.parse_args()

    tensors, widths = vgg_features(args.vgg)
    raw = lpips_heads(args.lpips) if args.lpips else piq_heads(args.piq)
    src = args.lpips or args.piq
    for k, (h, c) in enumerate(zip(raw, widths)):
        h = torch.as_tensor(h).detach().float()
        if h.numel() != c:
            fail(f"{src}: head {k} has {h.numel()} weights, but VGG block {k + 1} has {c} channels")
        if (h < 0).any():
            print(f"convert_lpips: note: head {k} has negative weights (trained LPIPS heads are >= 0)")
        tensors[f"lin{k}.model.1.weight"] = h.reshape(1, c, 1, 1).contiguous()
    save_safetensors(args.out, tensors, {"format": "cm-lpips", "heads": "lpips" if args.lpips else "piq"})
    n_vgg = sum(t.numel() for n, t in tensors.items() if n.startswith("features."))
    n_heads = sum(t.numel() for n, t in tensors.items() if n.startswith("lin"))
    note = "" if widths == VGG16_WIDTHS else f" (block widths {widths}, not VGG16's {VGG16_WIDTHS})"
    print(f"wrote {args.out}: {n_vgg} VGG16 feature weights + {n_heads} head weights{note}")


if __name__ == "__main__":
    main()
