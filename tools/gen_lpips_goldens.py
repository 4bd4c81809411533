#!/usr/bin/env python3
"""Writes tests/golden/lpips.safetensors, the reference values of tests/test_eval_lpips.cpp.

The oracles are the two reference implementations themselves, with random weights for a
reduced-width VGG16 (the same 31 modules, indices and pooling positions as torchvision's
vgg16().features, block widths WIDTHS instead of 64/128/256/512/512) so that the file stays small:

  piq       piq==0.7.0 `piq.LPIPS(replace_pooling=True, reduction="none")`, what openai/consistency_models
            (cm/karras_diffusion.py) trains with: 2x2 average pools, ImageNet mean/std on (x + 1)/2.
  original  lpips==0.1.4 `lpips.LPIPS(net="vgg")` (richzhang/PerceptualSimilarity): max pools and the
            "scaling layer" (x - shift)/scale on x in [-1, 1], the JAX CIFAR code's variant.

Both are run in float64. Their float32 constants (piq's mean/std, lpips' shift/scale buffers) are
replaced by the exact decimal constants in float64, as cm uses them; in float32 the two agree anyway.
The script also evaluates LPIPS from the published formulas (`formula_lpips` below) and checks that
both packages agree with it, so a packaging change cannot slip in unnoticed. The random draw is the
first from SEED on whose float32 formulas agree with float64 to F32_TOL (see main), so that the C++
float32 check can be sharp.

Contents (weights and inputs F32, everything else F64):
  features.N.weight/bias, linK.model.1.weight   the random network, cm's parameter names
  input.a, input.b           [2, 3, 32, 20] images in [-1, 1], float32 values stored as F32 (odd sizes on
                             the way: floor pooling of 5 -> 2; relu5_3 is 2 x 1)
  <v>.distance               [2] per-sample LPIPS, v in {piq, original}
  <v>.grad_a, <v>.grad_b     gradients of distance.sum() with respect to a and b
  input.up_a, input.up_b     [2, 3, 12, 12] images (F32) for the resize path of openai's code:
                             F.interpolate(x, size=224, mode="bilinear") (align_corners=False), then LPIPS
  <v>.up.distance, <v>.up.grad_a, <v>.up.grad_b
metadata: {"widths": "[6, 8, 10, 12, 14]", "seed": the seed drawn (see main), "piq": "0.7.0", "lpips": "0.1.4"}

Usage (the packages need torchvision; a throwaway venv over the system torch is enough):
  python3 -m venv --system-site-packages /tmp/lpips_venv
  /tmp/lpips_venv/bin/pip install --no-deps torchvision==0.15.2 piq==0.7.0 lpips==0.1.4 tqdm
  /tmp/lpips_venv/bin/python tools/gen_lpips_goldens.py --out tests/golden
Nothing is downloaded at run time: the pretrained-weight loaders of both packages are replaced by the
random weights made here.
"""
import argparse
import json
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTHS = [6, 8, 10, 12, 14]
SEED = 20240607
F32_TOL = 2e-6  # the float32 formulas' largest relative error on the chosen draw (see main)
FULL_WIDTHS = [64, 128, 256, 512, 512]
# torchvision vgg16 "D" configuration: convs per block; a max pool closes every block.
BLOCK_CONVS = [2, 2, 3, 3, 3]
FEATURE_LAYERS = [3, 8, 15, 22, 29]  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
LPIPS_SHIFT = [-0.030, -0.088, -0.188]
LPIPS_SCALE = [0.458, 0.448, 0.450]
EPS = 1e-10  # both packages: x / (||x||_channels + 1e-10)


def vgg_features(widths):
    """torchvision's vgg16().features with other block widths: same module indices."""
    layers, c_in = [], 3
    for w, n in zip(widths, BLOCK_CONVS):
        for _ in range(n):
            layers += [nn.Conv2d(c_in, w, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = w
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def random_weights(gen):
    """Conv weights ~ N(0, 2/fan_in) (activations stay O(1) through 13 layers), biases ~ 0.1·N(0, 1),
    heads ~ U(0.05, 1) (the trained heads are non-negative). Rounded to float32 values."""
    feats = vgg_features(WIDTHS)
    sd = {}
    for name, p in feats.state_dict().items():
        if name.endswith("weight"):
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            v = torch.randn(p.shape, generator=gen, dtype=torch.float64) * (2.0 / fan_in) ** 0.5
        else:
            v = 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
        sd["features." + name] = v.float()
    for k, w in enumerate(WIDTHS):
        v = 0.05 + 0.95 * torch.rand((1, w, 1, 1), generator=gen, dtype=torch.float64)
        sd[f"lin{k}.model.1.weight"] = v.float()
    return sd


def features_module(sd):
    feats = vgg_features(WIDTHS)
    feats.load_state_dict({k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")})
    return feats.double()


def heads(sd):
    return [sd[f"lin{k}.model.1.weight"].double() for k in range(len(WIDTHS))]


# ---- the oracles -------------------------------------------------------------------------------
class _FakeVgg:
    def __init__(self, features):
        self.features = features


def make_piq(sd):
    import piq
    import piq.perceptual as pp
    saved = (pp.vgg16, torch.hub.load_state_dict_from_url)
    pp.vgg16 = lambda pretrained=False, progress=False: _FakeVgg(features_module(sd))
    torch.hub.load_state_dict_from_url = lambda *a, **k: heads(sd)
    try:
        m = piq.LPIPS(replace_pooling=True, reduction="none")
    finally:
        pp.vgg16, torch.hub.load_state_dict_from_url = saved
    m.mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, -1, 1, 1)
    m.std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, -1, 1, 1)
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.model.modules())
    # piq runs pool5 too, whose output LPIPS never reads; dropping it lets inputs be smaller than 32.
    m.model = nn.Sequential(*list(m.model.children())[:30])
    return lambda a, b: m((a + 1) / 2.0, (b + 1) / 2.0)  # as openai's consistency_losses calls it


def make_original(sd):
    import lpips
    import lpips.pretrained_networks as pn
    saved = pn.tv.vgg16
    pn.tv.vgg16 = lambda pretrained=False, **kw: _FakeVgg(features_module(sd))
    try:
        m = lpips.LPIPS(pretrained=False, net="vgg", verbose=False)
    finally:
        pn.tv.vgg16 = saved
    m.lins = nn.ModuleList([lpips.NetLinLayer(w, use_dropout=True) for w in WIDTHS])
    for k, lin in enumerate(m.lins):
        setattr(m, f"lin{k}", lin)
        lin.model[1].weight.data = heads(sd)[k].float()
    m = m.double().eval()
    m.scaling_layer.shift = torch.tensor(LPIPS_SHIFT, dtype=torch.float64).view(1, -1, 1, 1)
    m.scaling_layer.scale = torch.tensor(LPIPS_SCALE, dtype=torch.float64).view(1, -1, 1, 1)
    return lambda a, b: m(a, b).reshape(-1)  # inputs in [-1, 1], normalize=False


def formula_lpips(sd, variant, dtype=torch.float64):
    """LPIPS written out from the papers' / packages' formulas, independent of both packages, in
    `dtype`."""
    feats = features_module(sd).to(dtype)
    hs = [h.to(dtype) for h in heads(sd)]

    def scale(x):
        if variant == "piq":
            u = (x + 1) / 2.0
            m = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, -1, 1, 1)
            s = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, -1, 1, 1)
            return (u - m) / s
        sh = torch.tensor(LPIPS_SHIFT, dtype=x.dtype).view(1, -1, 1, 1)
        sc = torch.tensor(LPIPS_SCALE, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - sh) / sc

    def run(x):
        out = []
        h = scale(x)
        for i, layer in enumerate(list(feats)[:FEATURE_LAYERS[-1] + 1]):
            if isinstance(layer, nn.MaxPool2d):
                h = F.avg_pool2d(h, 2) if variant == "piq" else F.max_pool2d(h, 2)
            elif isinstance(layer, nn.ReLU):
                h = F.relu(h)
            else:
                h = layer(h)
            if i in FEATURE_LAYERS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + EPS))
        return out

    def dist(a, b):
        fa, fb = run(a), run(b)
        return sum(((x - y) ** 2 * w).sum(1).mean((1, 2)) for x, y, w in zip(fa, fb, hs))

    return dist


def evaluate(fn, a, b):
    a = a.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    d = fn(a, b)
    ga, gb = torch.autograd.grad(d.sum(), [a, b])
    return d.detach().reshape(-1), ga, gb


# ---- the file ----------------------------------------------------------------------------------
DTYPE_NAMES = {torch.float32: "F32", torch.float64: "F64"}


def save_safetensors(path, tensors, metadata):
    """The safetensors layout by hand (8-byte header length, JSON header, raw little-endian data)."""
    header = {"__metadata__": metadata}
    offset, blobs = 0, []
    for name, t in sorted(tensors.items()):
        data = t.detach().contiguous().cpu().numpy().tobytes()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for blob in blobs:
            f.write(blob)


def images(gen, shape):
    """Two correlated images in [-1, 1] (b is a perturbed a), as float32-representable values."""
    a = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    b = (0.7 * a + 0.4 * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(-1, 1)
    return a.float().double(), b.float().double()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden)")
    args = ap.parse_args()
    import lpips
    import piq
    assert piq.__version__ == "0.7.0", piq.__version__

    # The full-width parameter counts the C++ test checks.
    n_feat = sum(p.numel() for p in vgg_features(FULL_WIDTHS).parameters())
    assert n_feat == 14714688, n_feat
    assert sum(FULL_WIDTHS) == 1472

    def up(fn):
        return lambda x, y: fn(F.interpolate(x, size=224, mode="bilinear"),
                               F.interpolate(y, size=224, mode="bilinear"))

    def cases(sd, a, b, ua, ub, dtype=torch.float64):
        """(prefix, formula, x, y) of the four golden entries, the formulas in `dtype`."""
        for variant in ("piq", "original"):
            f = formula_lpips(sd, variant, dtype)
            yield variant, f, a, b
            yield variant + ".up", up(f), ua, ub

    # Draw until the float32 formulas agree with the float64 ones to F32_TOL everywhere. Two things
    # make single float32 gradient entries wrong in any implementation (PyTorch's included), and
    # the float32 check could not be sharp on such draws: a feature norm near 0, where f/||f||
    # amplifies rounding by 1/||f||, and a max-pool window or ReLU input within rounding of a tie
    # or of 0, where float32 sends the gradient elsewhere (frequent on the smooth resized images).
    for seed in range(SEED, SEED + 200):
        gen = torch.Generator().manual_seed(seed)
        sd = random_weights(gen)
        a, b = images(gen, (2, 3, 32, 20))
        ua, ub = images(gen, (2, 3, 12, 12))
        err32 = 0.0
        for (prefix, f64, x, y), (_, f32, _, _) in zip(cases(sd, a, b, ua, ub),
                                                       cases(sd, a, b, ua, ub, torch.float32)):
            r64, r32 = evaluate(f64, x, y), evaluate(f32, x.float(), y.float())
            err32 = max([err32] + [((p.double() - q).abs().max() / q.abs().max()).item()
                                   for p, q in zip(r32, r64)])
        if err32 < F32_TOL:
            break
    assert err32 < F32_TOL, "no draw with float32 results within F32_TOL"
    print(f"seed {seed}: float32 formulas within {err32:.1e} of float64")

    out = dict(sd)
    out["input.a"], out["input.b"] = a.float(), b.float()
    out["input.up_a"], out["input.up_b"] = ua.float(), ub.float()
    refs = {"piq": make_piq(sd), "original": make_original(sd)}
    for prefix, formula, x, y in cases(sd, a, b, ua, ub):
        ref = refs[prefix.split(".")[0]]
        d, ga, gb = evaluate(up(ref) if prefix.endswith(".up") else ref, x, y)
        for p, q in zip((d, ga, gb), evaluate(formula, x, y)):
            err = (p - q).abs().max().item() / q.abs().max().item()
            assert err < 1e-12, (prefix, err)  # the package agrees with the formulas
        out[prefix + ".distance"], out[prefix + ".grad_a"], out[prefix + ".grad_b"] = d, ga, gb
        print(f"{prefix}: distance {d.tolist()}")
    meta = {"widths": json.dumps(WIDTHS), "seed": str(seed), "piq": piq.__version__, "lpips": "0.1.4"}
    path = os.path.join(args.out, "lpips.safetensors")
    save_safetensors(path, out, meta)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
