#!/usr/bin/env python3
"""Converts a released openai/consistency_models checkpoint (a PyTorch state dict of cm/unet.py's
UNetModel: edm_imagenet64_ema.pt, cd_imagenet64_l2.pt, cd_imagenet64_lpips.pt, ct_imagenet64.pt,
the LSUN ones) into a cm checkpoint that `cm sample`, `cm eval`, `cm edit` and `cm train` (as the
teacher of consistency distillation) read directly:

    python3 tools/convert_openai_pt.py cd_imagenet64_l2.pt --kind cd --out cd_imagenet64_l2.safetensors
    python3 tools/convert_openai_pt.py edm_imagenet64_ema.pt --kind edm --out edm_imagenet64.safetensors
    python3 tools/convert_openai_pt.py cd_bedroom256_lpips.pt --kind cd \\
        --network '{"preset": "adm-lsun256"}' --two-step-sigma 5.0 --out cd_bedroom256.safetensors
    cm sample cd_imagenet64_l2.safetensors --n 16 --steps 2 --class 207

The state dict is read with torch.load(weights_only=True): tensors only, no code runs. cm's ADM
U-Net has the reference's parameter names, so the tensors are copied unchanged (as f32) under
"model."; cm checks them against the network on loading and lists every missing, unexpected or
mis-shaped one. The checkpoint's configuration records the network (--network: a cm network
object, default the ImageNet-64 preset; the reference's noise labels 250·ln σ), the kind of model
(edm: an EDM teacher, sampled with Heun steps; cd, ct: a consistency model) and the two-step
sampling time (default scripts/launch.sh's: 1.382 for CD, 1.913 for CT on ImageNet-64). Its
training fields are cm's defaults, not the reference's run (the metadata "converted_from" names
the source file): it is for sampling, evaluation, editing and distillation.

Needs torch (used only here, never by cm).
"""
import argparse
import hashlib
import json
import os
import sys

import torch

from convert_fid_inception import save_safetensors  # tools/: the hand-written safetensors writer

TWO_STEP = {"cd": 1.382, "ct": 1.913}  # scripts/launch.sh, ImageNet-64 (spec §2)


def fail(msg):
    sys.exit(f"convert_openai_pt.py: {msg}")


def convert(src, kind, network, two_step_sigma, out):
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # not a PyTorch file, or one that needs code to unpickle
        fail(f"{src}: not a PyTorch state dict readable with weights_only=True ({e})")
    if not isinstance(state, dict) or not state:
        fail(f"{src}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}")
    tensors = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            fail(f"{src}: entry {name!r} is a {type(t).__name__}, not a tensor")
        if not t.is_floating_point():
            fail(f"{src}: tensor {name!r} has dtype {t.dtype}; UNetModel's are floating point")
        tensors["model." + name] = t.float()
    has_classes = "label_emb.weight" in state
    config = {
        "mode": kind,
        "name": "converted",
        "data": {"dataset": "imagenet64", "labels": has_classes},
        "network": network,
        "train": {"ema": []},
    }
    if kind in TWO_STEP or two_step_sigma is not None:
        if kind == "edm":
            fail("--two-step-sigma: an EDM teacher samples with Heun steps")
        config["sample"] = {"two_step_sigma": two_step_sigma if two_step_sigma is not None else TWO_STEP[kind]}
    if kind == "cd":
        config["consistency"] = {"teacher": "(the reference's EDM teacher)", "distance": "l2"}
    if kind == "ct":
        config["consistency"] = {"distance": "l2"}
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    metadata = {
        "format": "cm-checkpoint-1",
        "config": json.dumps(config),
        "step": "0",
        "emas": "[]",
        "converted_from": json.dumps({"file": os.path.basename(src), "sha256": digest,
                                      "tool": "tools/convert_openai_pt.py", "kind": kind}),
    }
    save_safetensors(out, tensors, metadata)  # to a temporary name, then renamed
    print(f"{out}: {len(tensors)} tensors, {sum(t.numel() for t in tensors.values())} parameters "
          f"from {src} ({'class-conditional' if has_classes else 'unconditional'}); cm checks them "
          f"against network {network.get('preset')} when it loads the file")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="the reference's .pt state dict")
    ap.add_argument("--kind", required=True, choices=["edm", "cd", "ct"],
                    help="edm: an EDM teacher; cd or ct: a consistency model")
    ap.add_argument("--network", default='{"preset": "adm-imagenet64"}',
                    help="cm's network object as JSON (default: the ImageNet-64 preset)")
    ap.add_argument("--two-step-sigma", type=float, default=None,
                    help="the intermediate time of two-step sampling (default: launch.sh's for ImageNet-64)")
    ap.add_argument("--out", required=True, help="the cm checkpoint to write (.safetensors)")
    a = ap.parse_args()
    try:
        network = json.loads(a.network)
    except json.JSONDecodeError as e:
        fail(f"--network: not JSON ({e})")
    if not isinstance(network, dict) or "preset" not in network:
        fail('--network: expected an object with a "preset", e.g. {"preset": "adm-imagenet64"}')
    if not os.path.isfile(a.src):
        fail(f"{a.src}: no such file")
    convert(a.src, a.kind, network, a.two_step_sigma, a.out)


if __name__ == "__main__":
    main()
