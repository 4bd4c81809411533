#!/usr/bin/env python3
"""The golden file of sFID's spatial features (tests/test_eval_prec_recall.cpp): what the FID
Inception's Mixed_6d 1×1 branch (TensorFlow's mixed_6/conv, which openai's evaluator reads for
sFID) computes, by pytorch-fid's own network.

Builds pytorch-fid's FID Inception at 1/32 width exactly as tools/gen_fid_goldens.py does, loads
the weights of tests/golden/fid_inception_small.safetensors into it (so both tests share one
network), runs a random input of 2×3×107×107 (any size ≥ 75 runs; 107 gives a 5×5 map at
Mixed_6d) through it in f64, and captures Mixed_6d.branch1x1's output with a forward hook: its
first 7 channels (of ceil(192/32) = 6 here), flattened in (H, W, C) order as the evaluator's
spatial[..., :7] of the NHWC tensor is. Writes tests/golden/fid_inception_small_spatial.safetensors:
"input" f32 [2, 3, 107, 107] (in [-1, 1]), "spatial" f64 [2, 5·5·6], "pool" f64 [2, 64].

  python3 tools/gen_sfid_golden.py --pytorch-fid /path/to/pytorch-fid --out tests/golden
(needs torch, torchvision, numpy, safetensors).
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file

from gen_fid_goldens import WIDTH_DIVISOR, NUM_CLASSES, build_fid_inception
from gen_songunet_golden import save_safetensors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pytorch-fid", required=True, help="path to a copy of mseitzer/pytorch-fid")
    ap.add_argument("--out", default="tests/golden")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.abspath(args.pytorch_fid), "src"))
    import pytorch_fid.inception as pfid

    wrapper, inception = build_fid_inception(pfid, WIDTH_DIVISOR)
    inception.fc = torch.nn.Linear(-(-2048 // WIDTH_DIVISOR), NUM_CLASSES)
    weights = load_file(os.path.join(args.out, "fid_inception_small.safetensors"))
    state = {k: v for k, v in weights.items() if not k.startswith(("input.", "output.", "gray."))}
    missing, unexpected = inception.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    wrapper.double().eval()
    captured = {}
    inception.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.__setitem__("b", o))
    gen = torch.Generator().manual_seed(6)
    x = (torch.rand(2, 3, 107, 107, generator=gen) * 2 - 1).float()
    with torch.no_grad():
        pool = wrapper(x.double())[0].flatten(1)
    b = captured["b"]
    spatial = b[:, :7].permute(0, 2, 3, 1).reshape(b.shape[0], -1)
    path = os.path.join(args.out, "fid_inception_small_spatial.safetensors")
    save_safetensors(path, {"input": x, "spatial": spatial, "pool": pool},
                     {"generator": "tools/gen_sfid_golden.py", "torch": torch.__version__,
                      "map": f"{b.shape[2]}x{b.shape[3]}x{min(7, b.shape[1])}"})
    print(path, os.path.getsize(path), "bytes; spatial", tuple(spatial.shape), "pool", tuple(pool.shape))


if __name__ == "__main__":
    main()
