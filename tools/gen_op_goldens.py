#!/usr/bin/env python3
"""Writes PyTorch reference values for cm's elementwise ops (tests/golden/elementwise.json).

Each case holds small fixed (seeded) float64 inputs, PyTorch's output and the gradients of
sum(output * weights) with respect to each floating input, for fixed random weights. The C++ test
tests/test_golden_elementwise.cpp recomputes every case with cm and compares.

Usage: /usr/bin/python3 tools/gen_op_goldens.py --out tests/golden/elementwise.json
(needs torch and numpy; PyTorch is a generator of reference data, never a dependency of cm).
"""
import argparse
import json

import numpy as np
import torch

torch.set_default_dtype(torch.float64)


def tensor_json(t):
    t = t.detach()
    if t.dtype == torch.bool:
        data = [bool(v) for v in t.reshape(-1).tolist()]
        return {"shape": list(t.shape), "dtype": "bool", "data": data}
    # repr of a Python float round-trips exactly.
    return {"shape": list(t.shape), "dtype": "f64", "data": [float(v) for v in t.reshape(-1).tolist()]}


class Maker:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.cases = []

    def randn(self, shape, scale=1.0, shift=0.0):
        return torch.tensor(self.rng.standard_normal(shape) * scale + shift)

    def add(self, name, fn, inputs):
        """inputs: tensors; floating ones get gradients."""
        leaves = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
        y = fn(*leaves)
        w = torch.tensor(self.rng.standard_normal(tuple(y.shape)))
        grads = [None] * len(leaves)
        diff = [x for x in leaves if x.requires_grad]
        if diff:
            gs = torch.autograd.grad((y * w).sum(), diff, allow_unused=True)
            it = iter(gs)
            for k, x in enumerate(leaves):
                if x.requires_grad:
                    g = next(it)
                    grads[k] = tensor_json(g if g is not None else torch.zeros_like(x))
        self.cases.append({
            "name": name,
            "inputs": [tensor_json(x) for x in inputs],
            "weights": tensor_json(w),
            "output": tensor_json(y),
            "grads": grads,
        })


def build(seed):
    m = Maker(seed)
    s = (2, 5)
    # ---- unary ----
    m.add("gelu", lambda x: torch.nn.functional.gelu(x), [m.randn(s, 2.0)])
    m.add("silu", lambda x: torch.nn.functional.silu(x), [m.randn(s, 2.0)])
    m.add("sigmoid", torch.sigmoid, [m.randn(s, 2.0)])
    m.add("tanh", torch.tanh, [m.randn(s, 1.5)])
    m.add("exp", torch.exp, [m.randn(s)])
    m.add("log", torch.log, [m.randn(s, 0.4, 2.0)])
    m.add("sqrt", torch.sqrt, [m.randn(s, 0.4, 2.0)])
    m.add("rsqrt", torch.rsqrt, [m.randn(s, 0.4, 2.0)])
    m.add("reciprocal", torch.reciprocal, [m.randn(s, 0.4, 2.0)])
    m.add("erf", torch.erf, [m.randn(s, 1.5)])
    m.add("expm1", torch.expm1, [m.randn(s)])
    m.add("log1p", torch.log1p, [m.randn(s, 0.25)])
    m.add("sin", torch.sin, [m.randn(s, 2.0)])
    m.add("cos", torch.cos, [m.randn(s, 2.0)])
    # relu and abs at 0: gradient 0
    with_zeros = m.randn(s)
    with_zeros.view(-1)[[1, 6]] = 0.0
    m.add("relu", torch.relu, [with_zeros])
    m.add("abs", torch.abs, [with_zeros])
    m.add("square", torch.square, [m.randn(s)])
    m.add("pow_scalar_2.5", lambda x: torch.pow(x, 2.5), [m.randn(s, 0.4, 2.0)])
    m.add("pow_scalar_3", lambda x: torch.pow(x, 3.0), [m.randn(s)])
    m.add("rpow_scalar_2", lambda x: torch.pow(2.0, x), [m.randn(s)])
    # clamp with inputs exactly on the bounds (the gradient passes there)
    on_bounds = m.randn(s)
    on_bounds.view(-1)[[0, 3]] = torch.tensor([-0.5, 0.5])
    m.add("clamp", lambda x: torch.clamp(x, -0.5, 0.5), [on_bounds])
    m.add("clamp_lo", lambda x: torch.clamp(x, min=-0.5), [on_bounds])
    m.add("clamp_hi", lambda x: torch.clamp(x, max=0.5), [on_bounds])

    # ---- binary, with broadcasting [3, 1] with [4] and [2, 3] with [] ----
    a, b = (3, 1), (4,)
    m.add("add_alpha", lambda x, y: torch.add(x, y, alpha=2.5), [m.randn(a), m.randn(b)])
    m.add("sub", torch.sub, [m.randn(a), m.randn(b)])
    m.add("mul", torch.mul, [m.randn((2, 3)), m.randn(())])
    m.add("div", torch.div, [m.randn(a), m.randn(b, 0.4, 2.0)])
    m.add("pow", torch.pow, [m.randn(a, 0.4, 2.0), m.randn(b, 1.5)])
    m.add("lerp_0.3", lambda x, y: torch.lerp(x, y, 0.3), [m.randn(a), m.randn(b)])
    m.add("lerp_0.75", lambda x, y: torch.lerp(x, y, 0.75), [m.randn(a), m.randn(b)])
    # maximum / minimum with ties: the gradient is split evenly
    ta = torch.tensor([[1.0], [0.5], [-2.0]])
    tb = torch.tensor([1.0, 0.5, -2.0, 3.0])
    m.add("maximum", torch.maximum, [ta, tb])
    m.add("minimum", torch.minimum, [ta, tb])
    m.add("maximum_random", torch.maximum, [m.randn((2, 3)), m.randn((2, 3))])
    # scalar forms
    m.add("rsub_scalar", lambda x: 1.75 - x, [m.randn(s)])
    m.add("rdiv_scalar", lambda x: 1.75 / x, [m.randn(s, 0.4, 2.0)])
    m.add("div_scalar", lambda x: x / 1.75, [m.randn(s)])
    # where, broadcasting the condition [3, 1], a [4] and b [3, 4]
    cond = torch.tensor([[True], [False], [True]])
    m.add("where", torch.where, [cond, m.randn(b), m.randn((3, 4))])
    cond2 = torch.tensor([[True, False, True], [False, False, True]])
    m.add("where_scalar", lambda c, x: torch.where(c, x, torch.tensor(0.5)), [cond2, m.randn((2, 3))])
    # a small composite: silu(a) * tanh(b) + gelu(a - b)
    m.add("composite", lambda x, y: torch.nn.functional.silu(x) * torch.tanh(y) +
          torch.nn.functional.gelu(x - y), [m.randn(a, 1.5), m.randn(b, 1.5)])
    return m.cases


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()
    doc = {
        "generator": "tools/gen_op_goldens.py",
        "torch_version": torch.__version__,
        "seed": args.seed,
        "note": "grads are d sum(output * weights) / d input; null for non-floating inputs",
        "cases": build(args.seed),
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
