#!/usr/bin/env python3
"""Writes PyTorch reference trajectories for cm's optimizers (tests/golden/optim.json).

Two small float64 parameters receive a fixed (seeded) sequence of 10 gradients, independent of the
parameter values; each case runs one torch.optim optimizer (torch 1.13, default single-tensor
implementation) over that sequence and records the parameters after every step. Some cases change
the learning rate every step (a linear warm-up) and leave a parameter without a gradient at some
steps (torch then skips it, and its per-parameter step count lags). The file also holds
torch.nn.utils.clip_grad_norm_ results. The C++ test tests/test_optim.cpp replays every case.

Usage: /usr/bin/python3 tools/gen_optim_goldens.py --out tests/golden/optim.json
(needs torch and numpy; PyTorch is a generator of reference data, never a dependency of cm).
"""
import argparse
import json

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

SHAPES = [(3, 4), (5,)]
STEPS = 10
# Gradient magnitudes per step: exercise eps (tiny gradients) and large ones.
GRAD_SCALES = [1.0, 0.5, 2.0, 1e-3, 1.0, 10.0, 0.1, 1.0, 3.0, 1e-4]


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]  # repr round-trips exactly


def warmup_lrs(base, warmup):
    # lr · min(k / warmup, 1) with k the number of steps taken before (EDM's ramp: 0 at the first step).
    return [base * min(k / warmup, 1.0) for k in range(STEPS)]


def run_case(init, grads, make_opt, lrs=None, skip=(), decoupled_wd=None):
    """skip: (step, param index) pairs whose gradient is None at that step.
    decoupled_wd: (lr, wd) to emulate decoupled weight decay (torch >= 2.0 RAdam's
    decoupled_weight_decay=True): param *= 1 - lr·wd before a step with weight_decay=0."""
    params = [p.clone().requires_grad_(True) for p in init]
    opt = make_opt(params)
    traj = []
    for k in range(STEPS):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[k]
        for i, p in enumerate(params):
            p.grad = None if (k, i) in skip else grads[k][i].clone()
        if decoupled_wd is not None:
            lr, wd = decoupled_wd
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.mul_(1 - lr * wd)
        opt.step()
        traj.append([flat(p) for p in params])
    return traj


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    rng = np.random.default_rng(20240611)
    init = [torch.tensor(rng.standard_normal(s)) for s in SHAPES]
    grads = [[torch.tensor(rng.standard_normal(s) * GRAD_SCALES[k]) for s in SHAPES] for k in range(STEPS)]

    O = torch.optim
    specs = [
        # name, kind, options, constructor, extra
        ("adam_default", "adam", dict(lr=1e-3), lambda p: O.Adam(p), {}),
        ("adam_wd", "adam", dict(lr=0.02, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1),
         lambda p: O.Adam(p, lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1), {}),
        ("adamw", "adamw", dict(lr=0.02, weight_decay=0.05),
         lambda p: O.AdamW(p, lr=0.02, weight_decay=0.05), {}),
        ("adamw_default", "adamw", dict(lr=1e-3, weight_decay=1e-2), lambda p: O.AdamW(p), {}),
        ("radam_default", "radam", dict(lr=1e-3), lambda p: O.RAdam(p), {}),
        # rho_t crosses 5 at step 7 (beta2 0.8) and at step 10 (beta2 0.7).
        ("radam_b2_0.8", "radam", dict(lr=0.01, beta2=0.8),
         lambda p: O.RAdam(p, lr=0.01, betas=(0.9, 0.8)), {}),
        ("radam_b2_0.7_wd", "radam", dict(lr=0.01, beta1=0.85, beta2=0.7, eps=1e-6, weight_decay=0.1),
         lambda p: O.RAdam(p, lr=0.01, betas=(0.85, 0.7), eps=1e-6, weight_decay=0.1), {}),
        ("radam_decoupled", "radam", dict(lr=0.01, beta2=0.8, weight_decay=0.1, decoupled=True),
         lambda p: O.RAdam(p, lr=0.01, betas=(0.9, 0.8)), dict(decoupled_wd=(0.01, 0.1))),
        ("adam_warmup_skip", "adam", dict(lr=0.01), lambda p: O.Adam(p, lr=0.01),
         dict(lrs=warmup_lrs(0.01, 4), skip={(2, 1), (5, 1), (6, 0)})),
        ("radam_warmup_skip", "radam", dict(lr=0.01, beta2=0.8), lambda p: O.RAdam(p, lr=0.01, betas=(0.9, 0.8)),
         dict(lrs=warmup_lrs(0.01, 3), skip={(1, 1), (4, 1), (8, 0)})),
    ]
    cases = []
    for name, kind, options, make, extra in specs:
        traj = run_case(init, grads, make, **extra)
        case = {"name": name, "kind": kind, "options": options, "params_after_step": traj}
        if "lrs" in extra:
            case["lrs"] = extra["lrs"]
            case["warmup_steps"] = 4 if kind == "adam" else 3
        if "skip" in extra:
            case["skip"] = sorted([list(s) for s in extra["skip"]])
        cases.append(case)

    # clip_grad_norm_: three parameters, the last without a gradient.
    clip = []
    cg = [torch.tensor(rng.standard_normal(s) * 2.0) for s in SHAPES]
    for max_norm in [1.0, 100.0]:
        ps = [torch.zeros(s, requires_grad=True) for s in SHAPES] + [torch.zeros(2, requires_grad=True)]
        for p, g in zip(ps, cg):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(ps, max_norm)
        clip.append({"max_norm": max_norm, "grads": [flat(g) for g in cg],
                     "total_norm": float(total), "clipped": [flat(p.grad) for p in ps[:2]]})

    out = {"torch_version": torch.__version__, "shapes": [list(s) for s in SHAPES],
           "init": [flat(p) for p in init], "grads": [[flat(g) for g in gs] for gs in grads],
           "cases": cases, "clip_grad_norm": clip}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=None, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
