#!/usr/bin/env python3
"""Writes PyTorch reference values for cm's neural-network functions (tests/golden/nn_functional.json).

Cases: upsample_bilinear2d (align_corners false and true; up, down, mixed and 1-pixel outputs),
avg_pool2d (count_include_pad, with and without padding), group_norm (with and without affine,
groups 1 / between / C, with and without spatial dims) and scaled_dot_product_attention (default
and explicit scale, broadcast batch dims). Each case holds small seeded float64 inputs, the op's
parameters, PyTorch's output, and the gradients of sum(output * weights) with respect to every
input, for fixed random weights. tests/test_nn_functional.cpp recomputes every case with cm.

Usage: /usr/bin/python3 tools/gen_nn_functional_goldens.py --out tests/golden/nn_functional.json
(needs torch and numpy; PyTorch is a generator of reference data, never a dependency of cm).
"""
import argparse
import json
import math

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def tensor_json(t):
    # repr of a Python float round-trips exactly.
    t = t.detach()
    return {"shape": list(t.shape), "data": [float(v) for v in t.reshape(-1).tolist()]}


class Maker:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.cases = []

    def randn(self, shape, scale=1.0, shift=0.0):
        return torch.tensor(self.rng.standard_normal(shape) * scale + shift)

    def add(self, name, op, params, fn, inputs):
        """inputs: float64 tensors, all differentiable; fn(*inputs) -> output."""
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        y = fn(*leaves)
        w = torch.tensor(self.rng.standard_normal(tuple(y.shape)))
        grads = torch.autograd.grad((y * w).sum(), leaves)
        self.cases.append({
            "name": name,
            "op": op,
            "params": params,
            "inputs": [tensor_json(x) for x in inputs],
            "weights": tensor_json(w),
            "output": tensor_json(y),
            "grads": [tensor_json(g) for g in grads],
        })


def sdpa(q, k, v, scale=None):
    # The math definition (torch 1.13 has no public scaled_dot_product_attention).
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(torch.matmul(q * s, k.transpose(-2, -1)), dim=-1).matmul(v)


def build(seed):
    m = Maker(seed)
    # ---- upsample_bilinear2d ----
    for ac in (False, True):
        for (h, w), (oh, ow) in [((3, 4), (7, 9)),    # up, non-integer ratios
                                 ((5, 7), (2, 3)),    # down (source coordinates clamp at 0)
                                 ((4, 4), (8, 8)),    # exact 2x
                                 ((3, 5), (3, 2)),    # same height, smaller width
                                 ((4, 3), (1, 1))]:   # a single output pixel
            name = f"upsample_bilinear2d_{h}x{w}_to_{oh}x{ow}_ac{int(ac)}"
            m.add(name, "upsample_bilinear2d", {"out_h": oh, "out_w": ow, "align_corners": ac},
                  lambda x, oh=oh, ow=ow, ac=ac: F.interpolate(x, size=(oh, ow), mode="bilinear",
                                                               align_corners=ac),
                  [m.randn((1, 2, h, w))])
    # ---- avg_pool2d (count_include_pad=True, floor mode) ----
    for (h, w), k, s, p in [((6, 6), 2, 2, 0), ((5, 7), 3, 1, 1), ((7, 6), 3, 2, 1), ((5, 5), 2, 3, 1),
                            ((4, 5), 4, 2, 2)]:
        name = f"avg_pool2d_{h}x{w}_k{k}_s{s}_p{p}"
        m.add(name, "avg_pool2d", {"kernel": k, "stride": s, "padding": p},
              lambda x, k=k, s=s, p=p: F.avg_pool2d(x, k, s, p, count_include_pad=True),
              [m.randn((2, 3, h, w))])
    # ---- group_norm ----
    for shape, g, affine, eps in [((2, 6, 3, 4), 3, True, 1e-5), ((2, 6, 3, 4), 1, True, 1e-5),
                                  ((2, 6, 3, 4), 6, False, 1e-5), ((3, 4), 2, True, 1e-3),
                                  ((2, 4, 5), 4, True, 0.1), ((1, 4, 2, 2, 3), 2, True, 1e-5)]:
        c = shape[1]
        name = f"group_norm_{'x'.join(map(str, shape))}_g{g}_{'affine' if affine else 'plain'}"
        params = {"groups": g, "eps": eps, "affine": affine}
        x = m.randn(shape, 2.0, 0.5)
        if affine:
            m.add(name, "group_norm", params,
                  lambda x, wt, b, g=g, eps=eps: F.group_norm(x, g, wt, b, eps),
                  [x, m.randn((c,), 0.5, 1.0), m.randn((c,), 0.5)])
        else:
            m.add(name, "group_norm", params, lambda x, g=g, eps=eps: F.group_norm(x, g, eps=eps), [x])
    # ---- scaled_dot_product_attention ----
    m.add("sdpa_default_scale", "sdpa", {"scale": None}, sdpa,
          [m.randn((2, 3, 4)), m.randn((2, 5, 4)), m.randn((2, 5, 6))])
    m.add("sdpa_scale_0.7", "sdpa", {"scale": 0.7}, lambda q, k, v: sdpa(q, k, v, 0.7),
          [m.randn((2, 2, 3, 4), 1.5), m.randn((2, 2, 4, 4), 1.5), m.randn((2, 2, 4, 3))])
    m.add("sdpa_broadcast_batch", "sdpa", {"scale": None}, sdpa,
          [m.randn((2, 1, 3, 4)), m.randn((1, 2, 5, 4)), m.randn((1, 2, 5, 2))])
    return m.cases


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=4321)
    args = p.parse_args()
    doc = {
        "generator": "tools/gen_nn_functional_goldens.py",
        "torch_version": torch.__version__,
        "seed": args.seed,
        "note": "grads are d sum(output * weights) / d input, one per input",
        "cases": build(args.seed),
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
