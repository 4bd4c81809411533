#!/usr/bin/env python3
"""The golden files of tools/convert_openai_pt.py's test: a checkpoint the reference code writes,
converted, and what the reference computes with it.

Imports openai/consistency_models' cm/unet.py and cm/karras_diffusion.py from a local copy (--ref,
never committed here), builds a small class-conditional UNetModel with random weights (every
parameter perturbed: the reference zero-initialises its output convolutions), saves its state dict
with torch.save as the released .pt files are, and runs the real converter on it. Writes
  tests/golden/openai_converted_cd.safetensors   the converter's output (a cm checkpoint), and
  tests/golden/openai_converted_expected.safetensors
      "x" [4, 3, 8, 8], "sigmas" [4], "y" (one-hot [4, 3]) and the reference's
      KarrasDenoiser.denoise of them: "denoised_cd" (distillation=True, the consistency model's
      boundary-condition scalings) and "denoised_edm" (distillation=False, the EDM teacher's), f32.
cm's test loads the converted file as `cm sample` does and must agree to 1e-5.

karras_diffusion imports piq, torchvision and MPI helpers that denoise() never uses: they are
stubbed out. The flash-attention kernel is replaced by the same arithmetic (tools/gen_adm_golden.py).

  python3 tools/gen_convert_golden.py --ref /path/to/consistency_models --out tests/golden
(needs torch, numpy and einops).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import types

import torch

from gen_adm_golden import FlashAttentionMath
from gen_songunet_golden import save_safetensors

# A one-level network: the converter's test is about names and numbers, the architecture is the
# ADM golden test's (tests/test_adm_unet.cpp).
KWARGS = dict(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
              attention_resolutions=[1], dropout=0.0, channel_mult=(1,), num_classes=3,
              num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True)
# the same network as cm's network object
CM_NETWORK = {"preset": "adm-tiny-16", "img_resolution": 8, "channel_mult": [1],
              "attention_resolutions": [8], "label_dim": 3, "num_head_channels": 16}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="path to a copy of openai/consistency_models")
    ap.add_argument("--out", default="tests/golden")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.ref))
    for name, attrs in {"piq": ["LPIPS"], "torchvision": [], "torchvision.transforms": ["RandomCrop"],
                        "cm.dist_util": []}.items():
        m = types.ModuleType(name)
        for a in attrs:
            setattr(m, a, object)
        sys.modules[name] = m
    import cm.unet as unet
    import cm.karras_diffusion as kd  # the reference's denoiser

    unet.QKVFlashAttention = FlashAttentionMath
    torch.manual_seed(4321)
    net = unet.UNetModel(**KWARGS)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    net.eval()
    tools = os.path.dirname(os.path.abspath(__file__))
    converted = os.path.join(args.out, "openai_converted_cd.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        pt = os.path.join(tmp, "cd_tiny.pt")
        torch.save(net.state_dict(), pt)
        subprocess.run([sys.executable, os.path.join(tools, "convert_openai_pt.py"), pt, "--kind", "cd",
                        "--network", json.dumps(CM_NETWORK), "--out", converted], check=True)

    x = torch.randn(4, 3, 8, 8)
    sigmas = torch.tensor([0.002, 0.3, 5.0, 80.0])
    y = torch.tensor([0, 2, 1, 2])
    out = {"x": x, "sigmas": sigmas, "y": torch.nn.functional.one_hot(y, 3).float()}
    with torch.no_grad():
        for name, distill in (("cd", True), ("edm", False)):
            d = kd.KarrasDenoiser(sigma_data=0.5, sigma_max=80.0, sigma_min=0.002, distillation=distill,
                                  loss_norm="l2")
            out["denoised_" + name] = d.denoise(net, x, sigmas, y=y)[1]
    path = os.path.join(args.out, "openai_converted_expected.safetensors")
    save_safetensors(path, out, {"generator": "tools/gen_convert_golden.py", "torch": torch.__version__,
                                 "config": json.dumps(KWARGS)})
    print(path, os.path.getsize(path), "bytes;", converted, os.path.getsize(converted), "bytes")


if __name__ == "__main__":
    main()
