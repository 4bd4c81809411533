#!/usr/bin/env python3
"""The golden files of tools/convert_edm_pkl.py's test: network pickles that EDM's own code writes,
converted, and what EDM computes with them.

Imports NVlabs/edm's training/networks.py and generate.py from a local copy (--edm, never committed
here), builds small networks with random weights (every parameter perturbed: EDM zero-initialises
some layers) under each preconditioning the converter takes:
  edm_songunet   EDMPrecond around a class-conditional DDPM++ SongUNet with augmentation labels
  edm_dhariwal   EDMPrecond around a class-conditional DhariwalUNet (EDM's ADM; one level of 32
                 channels, too narrow for a 64-channel head: the architecture is tests/test_dhariwal_unet's)
  vp             VPPrecond around an unconditional DDPM++ SongUNet (the VP baselines)
  ve             VEPrecond around an unconditional NCSN++ SongUNet (the VE baselines)
pickles each as EDM's training loop writes its network-snapshot-*.pkl (a dict with the 'ema' network,
in eval mode, on the CPU, persistence carrying the classes' source), and runs the real converter on
it (with --trust-pickle). Writes, per case,
  tests/golden/edm_pkl_<case>.safetensors            the converter's output (a cm checkpoint), and
  tests/golden/edm_pkl_<case>_expected.safetensors
      "x" [4, 2, 8, 8], "sigmas" [4] and (conditional cases) "class_labels" one-hot [4, 3]; "denoised",
      the pickled network's D(x, sigma, class_labels) (f32); "latents" [2, 2, 8, 8] and "heun", generate.py's
      edm_sampler (4 steps, S_churn 0, its sigma range clamped to the network's) from them, with the
      classes "heun_class_labels".
cm's test loads each converted file as `cm sample` does and must agree to 1e-5 (D) and 1e-4 (Heun:
EDM's sampler keeps x in f64, cm in f32).

  python3 tools/gen_edm_pkl_golden.py --edm /path/to/edm --out tests/golden
(needs torch, numpy, click and tqdm: generate.py's imports).
"""
import argparse
import copy
import json
import os
import pickle
import subprocess
import sys
import tempfile

import torch

from gen_songunet_golden import save_safetensors

SONG = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
CASES = {
    "edm_songunet": ("EDMPrecond", dict(label_dim=3, model_type="SongUNet", augment_dim=2,
                                        embedding_type="positional", encoder_type="standard", **SONG)),
    "edm_dhariwal": ("EDMPrecond", dict(label_dim=3, model_type="DhariwalUNet", model_channels=32,
                                        channel_mult=[1], channel_mult_emb=1, num_blocks=1, attn_resolutions=[8],
                                        dropout=0.0)),
    "vp": ("VPPrecond", dict(model_type="SongUNet", **SONG)),
    "ve": ("VEPrecond", dict(model_type="SongUNet", embedding_type="fourier", channel_mult_noise=2,
                             encoder_type="residual", resample_filter=[1, 3, 3, 1], **SONG)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edm", required=True, help="path to a copy of NVlabs/edm")
    ap.add_argument("--out", default="tests/golden")
    args = ap.parse_args()
    edm = os.path.abspath(args.edm)
    sys.path.insert(0, edm)
    import training.networks as networks  # the reference implementation
    import generate  # EDM's sampler

    tools = os.path.dirname(os.path.abspath(__file__))
    for case, (precond, kwargs) in CASES.items():
        torch.manual_seed(2468)
        net = getattr(networks, precond)(img_resolution=8, img_channels=2, **kwargs)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.2)  # every path contributes
        # as EDM's training loop writes a snapshot: deep copies, eval mode, on the CPU
        data = dict(ema=copy.deepcopy(net).eval().requires_grad_(False).cpu(), loss_fn=None, augment_pipe=None,
                    dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="datasets/tiny.zip"))
        converted = os.path.join(args.out, f"edm_pkl_{case}.safetensors")
        with tempfile.TemporaryDirectory() as tmp:
            pkl = os.path.join(tmp, f"network-snapshot-{case}.pkl")
            with open(pkl, "wb") as f:
                pickle.dump(data, f)
            subprocess.run([sys.executable, os.path.join(tools, "convert_edm_pkl.py"), pkl, "--edm", edm,
                            "--trust-pickle", "--out", converted], check=True)
        net = data["ema"]
        label_dim = kwargs.get("label_dim", 0)
        x = torch.randn(4, 2, 8, 8)
        sigmas = torch.tensor([0.002, 0.3, 5.0, 80.0])
        out = {"x": x, "sigmas": sigmas}
        labels = heun_labels = None
        if label_dim:
            labels = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 2]), label_dim).float()
            heun_labels = torch.nn.functional.one_hot(torch.tensor([1, 0]), label_dim).float()
            out["class_labels"] = labels
            out["heun_class_labels"] = heun_labels
        latents = torch.randn(2, 2, 8, 8)
        with torch.no_grad():
            out["denoised"] = net(x, sigmas, labels)
            out["latents"] = latents
            out["heun"] = generate.edm_sampler(net, latents, heun_labels, num_steps=4).float()
        path = os.path.join(args.out, f"edm_pkl_{case}_expected.safetensors")
        save_safetensors(path, out, {"generator": "tools/gen_edm_pkl_golden.py", "torch": torch.__version__,
                                     "precond": precond, "kwargs": json.dumps(kwargs)})
        print(path, os.path.getsize(path), "bytes;", converted, os.path.getsize(converted), "bytes")


if __name__ == "__main__":
    main()
