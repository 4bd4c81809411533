#!/usr/bin/env python3
"""Converts pytorch-fid's FID Inception weights to a safetensors file that cm loads
(eval::load_fid_inception in eval/inception.h).

The input is the file pytorch-fid downloads,
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(a PyTorch state dict of torchvision's Inception3 with pytorch-fid's FID blocks, ported from
TensorFlow's inception-2015-12-05 graph). Every tensor keeps its name, shape and f32 values; only the
BatchNorm counters "*.num_batches_tracked" (training bookkeeping, unused in eval mode) are dropped.
When the file name carries torch.hub's hash suffix ("-6726825d.pth"), the file's SHA-256 must begin
with it, as torch.hub checks on download.

  /usr/bin/python3 tools/convert_fid_inception.py pt_inception-2015-12-05-6726825d.pth \
      fid_inception.safetensors

Needs only torch (Debian's python3-torch); the safetensors file is written by hand.
"""
import argparse
import hashlib
import json
import os
import re
import struct
import sys

import torch

# The FID Inception's state dict: 472 tensors (convolution and batch-norm weights, running
# statistics, fc), 23,885,392 values, once the 94 num_batches_tracked counters are dropped.
EXPECTED_TENSORS = 472
EXPECTED_VALUES = 23_885_392
DTYPE_NAMES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.int64: "I64",
               torch.uint8: "U8"}
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's


def save_safetensors(path, tensors, metadata):
    """Writes a safetensors file by hand: an 8-byte little-endian header length, the compact JSON
    header ("__metadata__" first, then the tensors by name, each with dtype, shape and byte range),
    space-padded to a multiple of 8, then the raw little-endian data."""
    header = {"__metadata__": metadata} if metadata else {}
    offset = 0
    blobs = []
    for name, t in sorted(tensors.items()):
        t = t.detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(src, dst):
    digest = sha256(src)
    m = HASH_REGEX.search(os.path.basename(src))
    if m and m.group(1) and not digest.startswith(m.group(1)):
        sys.exit(f"{src}: SHA-256 {digest} does not begin with the file name's hash {m.group(1)} "
                 "(a truncated or different download)")
    state = torch.load(src, map_location="cpu")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        sys.exit(f"{src}: expected a state dict of tensors (pytorch-fid's FID Inception weights)")
    tensors = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    bad = [k for k, v in tensors.items() if v.dtype != torch.float32]
    if bad:
        sys.exit(f"{src}: expected f32 tensors, got {[(k, str(tensors[k].dtype)) for k in bad[:5]]}")
    values = sum(v.numel() for v in tensors.values())
    if len(tensors) != EXPECTED_TENSORS or values != EXPECTED_VALUES:
        sys.exit(f"{src}: {len(tensors)} tensors with {values} values, expected {EXPECTED_TENSORS} "
                 f"with {EXPECTED_VALUES} (is this pytorch-fid's pt_inception-2015-12-05 file?)")
    save_safetensors(dst, tensors, {"source": os.path.basename(src), "sha256": digest,
                                    "network": "pytorch-fid FID Inception-v3 (TF inception-2015-12-05)"})
    print(f"{dst}: {len(tensors)} tensors, {values} values")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="pt_inception-2015-12-05-6726825d.pth")
    ap.add_argument("dst", help="output .safetensors")
    args = ap.parse_args()
    convert(args.src, args.dst)


if __name__ == "__main__":
    main()
