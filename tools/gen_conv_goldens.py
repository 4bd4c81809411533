#!/usr/bin/env python3
"""Writes PyTorch reference values for cm's conv2d and conv_transpose2d (tests/golden/conv.json).

Each case holds small seeded float64 inputs x, w (and bias b), the parameters, PyTorch's output y and
the gradients of sum(y * weights) with respect to x, w and b for fixed random weights. Besides
general cases (groups, dilation, asymmetric strides and paddings, output_padding) it covers EDM's
SongUNet resampling: depthwise stride-2 convolutions with the [1, 1] and [1, 3, 3, 1] filters
(outer product, normalised) and the transposed ones that upsample with 4x the filter. The C++ test
tests/test_conv.cpp recomputes every case with cm and compares to 1e-10.

Usage: /usr/bin/python3 tools/gen_conv_goldens.py --out tests/golden/conv.json
(needs torch and numpy; PyTorch is a generator of reference data, never a dependency of cm).
"""
import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def tensor_json(t):
    t = t.detach()
    # repr of a Python float round-trips exactly.
    return {"shape": list(t.shape), "data": [float(v) for v in t.reshape(-1).tolist()]}


def edm_filter(taps, channels, scale=1.0):
    """EDM's resample filter: the outer product of the taps, normalised to sum 1, one per channel."""
    f = torch.tensor(taps, dtype=torch.float64)
    f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
    return (f * scale).tile([channels, 1, 1, 1])


class Maker:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.cases = []

    def randn(self, *shape):
        return torch.tensor(self.rng.standard_normal(shape))

    def add(self, name, op, x, w, b, **params):
        leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
        lx, lw, lb = leaves
        if op == "conv2d":
            y = F.conv2d(lx, lw, lb, stride=params["stride"], padding=params["padding"],
                         dilation=params["dilation"], groups=params["groups"])
        else:
            y = F.conv_transpose2d(lx, lw, lb, stride=params["stride"], padding=params["padding"],
                                   output_padding=params["output_padding"], groups=params["groups"],
                                   dilation=params["dilation"])
        weights = self.randn(*y.shape)
        diff = [t for t in leaves if t is not None]
        grads = torch.autograd.grad((y * weights).sum(), diff)
        case = {"name": name, "op": op, **params,
                "x": tensor_json(x), "w": tensor_json(w), "b": tensor_json(b) if b is not None else None,
                "weights": tensor_json(weights), "y": tensor_json(y),
                "dx": tensor_json(grads[0]), "dw": tensor_json(grads[1]),
                "db": tensor_json(grads[2]) if b is not None else None}
        self.cases.append(case)


def build(seed):
    m = Maker(seed)
    r = m.randn
    # conv2d: stride, padding and dilation as [h, w]
    m.add("conv3x3_pad1_bias", "conv2d", r(2, 3, 6, 5), r(4, 3, 3, 3), r(4),
          stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)
    m.add("conv_grouped_asymmetric", "conv2d", r(1, 4, 7, 6), r(6, 2, 3, 2), r(6),
          stride=[2, 1], padding=[1, 0], dilation=[1, 2], groups=2)
    m.add("conv1x1", "conv2d", r(2, 5, 4, 4), r(3, 5, 1, 1), r(3),
          stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1)
    m.add("conv_strided_dilated_nobias", "conv2d", r(1, 3, 9, 8), r(2, 3, 2, 3), None,
          stride=[2, 3], padding=[2, 1], dilation=[2, 1], groups=1)
    # EDM downsampling: depthwise, stride 2, padding (len(f) - 1) // 2
    m.add("edm_down_11", "conv2d", r(1, 3, 6, 6), edm_filter([1, 1], 3), None,
          stride=[2, 2], padding=[0, 0], dilation=[1, 1], groups=3)
    m.add("edm_down_1331", "conv2d", r(2, 2, 8, 8), edm_filter([1, 3, 3, 1], 2), None,
          stride=[2, 2], padding=[1, 1], dilation=[1, 1], groups=2)
    # EDM upsampling: depthwise transposed, 4x the filter, stride 2
    m.add("edm_up_11", "conv_transpose2d", r(1, 3, 4, 4), edm_filter([1, 1], 3, 4.0), None,
          stride=2, padding=0, output_padding=0, groups=3, dilation=1)
    m.add("edm_up_1331", "conv_transpose2d", r(2, 2, 4, 4), edm_filter([1, 3, 3, 1], 2, 4.0), None,
          stride=2, padding=1, output_padding=0, groups=2, dilation=1)
    # conv_transpose2d: groups, output_padding, and output_padding >= stride (< dilation)
    m.add("convT_grouped_opad", "conv_transpose2d", r(2, 4, 3, 4), r(4, 3, 3, 3), r(6),
          stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    m.add("convT_dilated_opad_ge_stride", "conv_transpose2d", r(1, 2, 3, 4), r(2, 3, 2, 2), r(3),
          stride=1, padding=0, output_padding=1, groups=1, dilation=2)
    m.add("convT_stride3_dil2", "conv_transpose2d", r(2, 2, 3, 3), r(2, 2, 3, 2), r(2),
          stride=3, padding=2, output_padding=2, groups=1, dilation=2)
    return m.cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/golden/conv.json")
    ap.add_argument("--seed", type=int, default=20240607)
    args = ap.parse_args()
    doc = {"generator": "tools/gen_conv_goldens.py", "torch": torch.__version__, "seed": args.seed,
           "cases": build(args.seed)}
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(doc['cases'])} cases to {args.out}")


if __name__ == "__main__":
    main()
