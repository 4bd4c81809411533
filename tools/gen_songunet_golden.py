#!/usr/bin/env python3
"""Golden files for cm's SongUNet and DhariwalUNet, made by EDM's own PyTorch implementation.

The oracle is the reference itself: this script imports training/networks.py from a local copy of
NVlabs/edm (passed with --edm, never committed here), builds small DDPM++ and NCSN++ networks
(and a conditional one) and a small DhariwalUNet (EDM's ADM: conditional, with augmentation labels,
one level too narrow for a 64-channel attention head), perturbs every parameter so that each path of the network matters (EDM
initialises some layers to almost zero), and writes one safetensors file per flavour with
  - every parameter and buffer under its EDM state-dict name,
  - "input.x", "input.noise_labels" (and "input.class_labels"), "input.weights" (the fixed random
    weights w of the loss sum(output * w)),
  - "output", and the gradients "grad.x" and "grad.<param name>" for a few parameters.
Weights and inputs are stored in f32 (and used as such by both sides); outputs and gradients are
computed and stored in f64.

  /usr/bin/python3 tools/gen_songunet_golden.py --edm /path/to/edm --out tests/golden [--only NAME ...]
(needs torch and numpy; a copy of the EDM repository, e.g. `git archive` of a fetched snapshot).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

import edm_f64  # tools/edm_f64.py

FLAVOURS = {
    # name: SongUNet keyword arguments (small versions of the paper's networks)
    "ddpmpp": dict(img_resolution=8, in_channels=2, out_channels=2, model_channels=8, channel_mult=[1, 2],
                   num_blocks=1, attn_resolutions=[4], dropout=0.0, embedding_type="positional",
                   channel_mult_noise=1, encoder_type="standard", decoder_type="standard",
                   resample_filter=[1, 1]),
    "ncsnpp": dict(img_resolution=8, in_channels=2, out_channels=2, model_channels=8, channel_mult=[1, 2],
                   num_blocks=1, attn_resolutions=[4], dropout=0.0, embedding_type="fourier",
                   channel_mult_noise=2, encoder_type="residual", decoder_type="standard",
                   resample_filter=[1, 3, 3, 1]),
    "skipcond": dict(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1, 2],
                     num_blocks=1, attn_resolutions=[8], dropout=0.0, embedding_type="positional",
                     channel_mult_noise=1, encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1],
                     label_dim=3),
    # written as dhariwal_<name>.safetensors
    "tiny": dict(network="DhariwalUNet", img_resolution=8, in_channels=2, out_channels=2, label_dim=3,
                 augment_dim=2, model_channels=32, channel_mult=[1, 2], channel_mult_emb=1, num_blocks=1,
                 attn_resolutions=[4, 8], dropout=0.0),
}
GRAD_PARAMS = ["map_layer0.weight", "enc.8x8_conv.weight", "enc.8x8_block0.conv1.weight",
               "enc.4x4_block0.qkv.weight", "dec.8x8_aux_conv.bias", "dec.4x4_in0.norm2.weight"]
DHARIWAL_GRAD_PARAMS = ["map_layer0.weight", "map_label.weight", "map_augment.weight", "enc.8x8_conv.weight",
                        "enc.4x4_down.affine.weight", "enc.4x4_block0.qkv.weight", "dec.8x8_up.conv0.bias",
                        "dec.4x4_in0.norm2.weight", "out_conv.weight"]

DTYPE_NAMES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}


def save_safetensors(path, tensors, metadata):
    """Writes a safetensors file by hand (the format is eight bytes of header length, a JSON header
    and the raw little-endian data), padding the header to a multiple of 8 as the reference does."""
    header = {"__metadata__": metadata}
    items = sorted(tensors.items())
    offset = 0
    blobs = []
    for name, t in items:
        t = t.detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edm", required=True, help="path to a checkout of NVlabs/edm")
    ap.add_argument("--out", default="tests/golden")
    ap.add_argument("--only", nargs="*", choices=sorted(FLAVOURS), help="the flavours to write (default: all)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.edm))
    import training.networks as networks
    edm_f64.patch_attention(networks)

    for name, kwargs in FLAVOURS.items():
        if args.only and name not in args.only:
            continue
        kwargs = dict(kwargs)
        network = kwargs.pop("network", "SongUNet")
        torch.manual_seed(1234)
        net = getattr(networks, network)(**kwargs).double()  # the reference implementation
        with torch.no_grad():
            for pname, p in net.named_parameters():
                p.add_(torch.randn_like(p) * 0.2)  # every path contributes
        net.eval()
        n = 3
        res, cin = kwargs["img_resolution"], kwargs["in_channels"]
        x = torch.randn(n, cin, res, res, dtype=torch.float64, requires_grad=True)
        sigma = torch.tensor([0.05, 1.3, 40.0], dtype=torch.float64)
        noise_labels = sigma.log() / 4
        label_dim = kwargs.get("label_dim", 0)
        class_labels = None
        if label_dim:
            class_labels = torch.nn.functional.one_hot(torch.tensor([2, 0, 1]), label_dim).double()
        # the model's weights as stored (f32), so both sides start from the same numbers
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(p.float().double())
            for b in net.buffers():
                b.copy_(b.float().double())
        x.data = x.data.float().double()
        noise_labels = noise_labels.float().double()  # the inputs as stored (f32), so both sides see the same
        augment_labels = None
        if kwargs.get("augment_dim", 0):
            augment_labels = torch.randn(n, kwargs["augment_dim"]).float().double()
        out = net(x, noise_labels, class_labels, augment_labels=augment_labels)
        w = torch.randn_like(out).float().double()  # as stored
        (out * w).sum().backward()
        tensors = {}
        for pname, p in net.named_parameters():
            tensors[pname] = p.float()
        for bname, b in net.named_buffers():
            tensors[bname] = b.float()
        tensors["input.x"] = x.detach().float()
        tensors["input.noise_labels"] = noise_labels.float()
        if class_labels is not None:
            tensors["input.class_labels"] = class_labels.float()
        if augment_labels is not None:
            tensors["input.augment_labels"] = augment_labels.float()
        tensors["input.weights"] = w.float()
        # outputs and gradients in f64: the f64 test compares to 1e-10
        tensors["output"] = out.detach()
        tensors["grad.x"] = x.grad.detach()
        params = dict(net.named_parameters())
        for g in GRAD_PARAMS if network == "SongUNet" else DHARIWAL_GRAD_PARAMS:
            if g in params:
                tensors["grad." + g] = params[g].grad.detach()
        meta = {"config": json.dumps(kwargs), "generator": "tools/gen_songunet_golden.py",
                "torch": torch.__version__}
        prefix = "songunet" if network == "SongUNet" else "dhariwal"
        path = os.path.join(args.out, f"{prefix}_{name}.safetensors")
        save_safetensors(path, tensors, meta)
        print(path, os.path.getsize(path), "bytes,", sum(p.numel() for p in net.parameters()), "parameters")


if __name__ == "__main__":
    main()
