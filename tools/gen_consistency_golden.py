#!/usr/bin/env python3
"""Golden values for cm's consistency training (CT) and distillation (CD) losses, made by the
reference implementation itself: openai/consistency_models' KarrasDenoiser.consistency_losses
(cm/karras_diffusion.py, imported from a local copy passed with --cm-ref) around EDM's SongUNet
(training/networks.py from a local copy of NVlabs/edm, passed with --edm). Neither is committed here.

The online network's weights are those of tests/golden/songunet_ddpmpp.safetensors; the target
network's are 0.95 × those and the teacher's 1.1 × those (deterministic, so the C++ test rebuilds
them). Indices and noise are fixed. For each variant the file holds the per-sample losses and the
gradients of the mean loss for a few parameters:
  ct_l2_uniform, ct_l1_karras, cd_heun_l2_uniform, cd_euler_l2_truncated-snr
Computed in f64; stored in f64 (small).

  /usr/bin/python3 tools/gen_consistency_golden.py --edm /path/to/edm --cm-ref /path/to/consistency_models
"""
import argparse
import importlib
import json
import os
import struct
import sys
import types

import torch

import edm_f64  # tools/edm_f64.py

GRAD_PARAMS = ["map_layer0.weight", "enc.8x8_conv.weight", "enc.4x4_block0.qkv.weight", "dec.8x8_aux_conv.bias"]
VARIANTS = [  # name, teacher?, solver, loss_norm, weight_schedule
    ("ct_l2_uniform", False, None, "l2", "uniform"),
    ("ct_l1_karras", False, None, "l1", "karras"),
    ("cd_heun_l2_uniform", True, "heun", "l2", "uniform"),
    ("cd_euler_l2_truncated-snr", True, "euler", "l2", "truncated-snr"),
]


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        dt = {"F32": torch.float32, "F64": torch.float64}[e["dtype"]]
        t = torch.frombuffer(bytearray(data[b:end]), dtype=dt).reshape(e["shape"]) if end > b else \
            torch.zeros(e["shape"], dtype=dt)
        out[name] = t.clone()
    return out, meta


def write_safetensors(path, tensors, meta):
    header = {"__metadata__": meta}
    blobs, off = [], 0
    codes = {torch.float64: "F64", torch.int64: "I64", torch.float32: "F32"}
    for name, t in sorted(tensors.items()):
        t = t.detach().contiguous()
        b = t.numpy().tobytes()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))


def import_reference(cm_ref):
    """Imports cm.karras_diffusion with stubs for what the loss does not use (MPI, LPIPS, torchvision)."""
    stub = lambda name, **attrs: sys.modules.setdefault(name, types.SimpleNamespace(**attrs))
    stub("piq", LPIPS=object)
    stub("torchvision")
    stub("torchvision.transforms", RandomCrop=object)
    pkg = types.ModuleType("cm")
    pkg.__path__ = [os.path.join(os.path.abspath(cm_ref), "cm")]
    sys.modules["cm"] = pkg
    sys.modules["cm.dist_util"] = types.SimpleNamespace()
    sys.modules["cm.random_util"] = types.SimpleNamespace(get_generator=None)
    return importlib.import_module("cm.karras_diffusion")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edm", required=True)
    ap.add_argument("--cm-ref", required=True)
    ap.add_argument("--weights", default="tests/golden/songunet_ddpmpp.safetensors")
    ap.add_argument("--out", default="tests/golden/consistency.safetensors")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.edm))
    import training.networks as networks
    from training.networks import SongUNet
    edm_f64.patch_attention(networks)
    kd = import_reference(args.cm_ref)

    weights, meta = read_safetensors(args.weights)
    cfg = json.loads(meta["config"])

    def network(scale):
        net = SongUNet(**cfg).double()
        state = {k: v.double() for k, v in weights.items() if not k.startswith(("input.", "grad.")) and k != "output"}
        net.load_state_dict(state)
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
        return net.eval()

    # openai's model(x, 250·ln σ) -> EDM's SongUNet(x, ln σ / 4)
    class Wrap(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, rescaled_t):
            return self.net(x, rescaled_t / 1000, None)

    # The reference computes the grid's σ from integer indices with torch's default dtype (f32):
    # run it in f64 so that the golden values are exact to f64 precision.
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    n, res, c = 4, cfg["img_resolution"], cfg["in_channels"]
    x = (torch.rand(n, c, res, res, dtype=torch.float64) * 2 - 1)
    noise = torch.randn(n, c, res, res, dtype=torch.float64)
    num_scales = 18
    indices = torch.tensor([0, 5, 11, 16])
    kd.th.randint = lambda *a, **k: indices.clone()  # fixed indices for the reference's draw

    out = {"input.x": x, "input.noise": noise, "input.indices": indices}
    for name, with_teacher, solver, norm, ws in VARIANTS:
        online, target, teacher = Wrap(network(1.0)), Wrap(network(0.95)), Wrap(network(1.1))
        diffusion = kd.KarrasDenoiser(sigma_data=0.5, sigma_max=80.0, sigma_min=0.002, rho=7.0, weight_schedule=ws,
                                      distillation=True, loss_norm=norm)
        teacher_diffusion = kd.KarrasDenoiser(sigma_data=0.5, sigma_max=80.0, sigma_min=0.002, rho=7.0,
                                              weight_schedule=ws, distillation=False, loss_norm=norm)
        if solver == "euler":
            terms = euler_cd(kd, diffusion, teacher_diffusion, online, target, teacher, x, num_scales, noise, indices,
                             ws, norm)
        else:
            terms = diffusion.consistency_losses(
                online, x, num_scales, target_model=target, teacher_model=teacher if with_teacher else None,
                teacher_diffusion=teacher_diffusion if with_teacher else None, noise=noise)
        loss = terms["loss"]
        loss.mean().backward()
        out[name + ".loss"] = loss.detach()
        params = dict(online.net.named_parameters())
        for g in GRAD_PARAMS:
            out[name + ".grad." + g] = params[g].grad.detach()
    # EDM's teacher side: the loss (EDMLoss) at fixed σ draws and noise, and the Heun sampler.
    from training.networks import EDMPrecond
    from training.loss import EDMLoss
    sys.modules.setdefault("tqdm", types.SimpleNamespace())  # generate.py's progress bar, unused here
    import generate
    precond = EDMPrecond(img_resolution=res, img_channels=c, model_type="SongUNet",
                         **{k: v for k, v in cfg.items() if k not in ("img_resolution", "in_channels", "out_channels")})
    precond.model.load_state_dict(network(1.1).state_dict())
    precond = precond.double().eval()
    rnd_normal = torch.randn(n, 1, 1, 1, dtype=torch.float64)
    loss_noise = torch.randn(n, c, res, res, dtype=torch.float64)
    draws = iter([rnd_normal, loss_noise])
    real_randn, real_randn_like = torch.randn, torch.randn_like
    torch.randn = lambda *a, **k: next(draws)
    torch.randn_like = lambda *a, **k: next(draws)
    loss = EDMLoss()(precond, x)  # per-pixel weight·(D − y)²
    torch.randn, torch.randn_like = real_randn, real_randn_like
    loss.sum().backward()
    out["edm_loss.rnd_normal"] = rnd_normal.flatten()
    out["edm_loss.noise"] = loss_noise
    out["edm_loss.sum"] = loss.detach().sum().reshape([])
    tparams = dict(precond.model.named_parameters())
    for g in GRAD_PARAMS:
        out["edm_loss.grad." + g] = tparams[g].grad.detach()
    latents = torch.randn(2, c, res, res, dtype=torch.float64)
    with torch.no_grad():
        sample = generate.edm_sampler(precond, latents, num_steps=6)
    out["edm_heun.latents"] = latents
    out["edm_heun.out"] = sample
    write_safetensors(args.out, out, {"num_scales": str(num_scales), "generator": "tools/gen_consistency_golden.py",
                                      "variants": ",".join(v[0] for v in VARIANTS)})
    print(args.out, os.path.getsize(args.out), "bytes")


def euler_cd(kd, diffusion, teacher_diffusion, online, target, teacher, x, num_scales, noise, indices, ws, norm):
    """CD with the Euler solver, written with the reference's own pieces (denoise, get_weightings,
    mean_flat) because consistency_losses always uses Heun when it has a teacher."""
    rho, smin, smax = diffusion.rho, diffusion.sigma_min, diffusion.sigma_max
    t = (smax ** (1 / rho) + indices / (num_scales - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    t2 = (smax ** (1 / rho) + (indices + 1) / (num_scales - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    t, t2 = t.double(), t2.double()
    x_t = x + noise * kd.append_dims(t, 4)
    distiller = diffusion.denoise(online, x_t, t)[1]
    with torch.no_grad():
        den = teacher_diffusion.denoise(teacher, x_t, t)[1]
        d = (x_t - den) / kd.append_dims(t, 4)
        x_t2 = x_t + d * kd.append_dims(t2 - t, 4)
        target_out = diffusion.denoise(target, x_t2, t2)[1]
    weights = kd.get_weightings(ws, diffusion.get_snr(t), diffusion.sigma_data)
    diffs = (distiller - target_out) ** 2 if norm == "l2" else (distiller - target_out).abs()
    return {"loss": kd.mean_flat(diffs) * weights}


if __name__ == "__main__":
    main()
