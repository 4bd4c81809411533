#!/usr/bin/env python3
"""Converts an NVlabs/edm network pickle (edm-cifar10-32x32-cond-vp.pkl, edm-imagenet-64x64-cond-adm.pkl,
the baselines' baseline-cifar10-32x32-uncond-vp.pkl / -ve.pkl, a network-snapshot-*.pkl of EDM's own
training) into a cm checkpoint of an EDM teacher that `cm sample`, `cm eval`, `cm edit` and `cm train`
(as the teacher of consistency distillation) read directly:

    python3 tools/convert_edm_pkl.py edm-cifar10-32x32-uncond-vp.pkl --edm /path/to/edm --trust-pickle \\
        --out edm-cifar10-uncond.safetensors
    cm sample edm-cifar10-uncond.safetensors --n 16          # EDM's Heun sampler, 18 steps (35 NFE)

Unpickling runs code. EDM's pickles are not state dicts: they hold the network's classes with their
source code (EDM's torch_utils.persistence), so loading one executes Python from the file, and it
needs EDM's own dnnlib and torch_utils on the path (--edm, a copy of NVlabs/edm). Convert only files
from a source you trust; --trust-pickle says you do. The pickle is read as EDM's generate.py reads it
(dnnlib.util.open_url, then pickle.load(f)["ema"]). cm itself only ever reads the safetensors file
written here.

What the file holds is recorded in its configuration:
  - the network: EDM's SongUNet (DDPM++ "vp" and NCSN++ "ve" architectures) or DhariwalUNet (its
    ADM, "adm"), with every keyword argument the pickle was built with (cm's networks have EDM's
    parameter names: the tensors are copied unchanged, as f32, under "model.");
  - the preconditioning: EDMPrecond (every edm-*.pkl: EDM's scalings, c_noise = ln(sigma)/4), or the
    baselines' VPPrecond / VEPrecond (network.preconditioning "vp" / "ve", with their noise labels).
    iDDPMPrecond (baseline-imagenet-64x64-cond-adm.pkl: learned variances and a quantised sigma grid)
    is refused;
  - the sampler's noise range as EDM's generate.py clamps it: sigma_min = max(0.002, net.sigma_min),
    sigma_max = min(80, net.sigma_max) (a VE baseline samples from 0.02); sigma_data from EDMPrecond.
The training fields are cm's defaults, not EDM's run (the metadata "converted_from" names the file and
its SHA-256): the file is for sampling, evaluation, editing and distillation.

Needs torch (used only here, never by cm) and EDM's code.
"""
import argparse
import hashlib
import inspect
import json
import os
import pickle
import sys

from convert_fid_inception import save_safetensors  # tools/: the hand-written safetensors writer

# cm's network fields for each EDM network class: cm's family, the preset whose fields are all
# overwritten, and the keyword arguments (EDM's names, which are cm's).
FAMILIES = {
    "SongUNet": ("ddpmpp-cifar10", ["img_resolution", "in_channels", "out_channels", "label_dim",
                                    "augment_dim", "model_channels", "channel_mult", "channel_mult_emb",
                                    "num_blocks", "attn_resolutions", "dropout", "label_dropout",
                                    "embedding_type", "channel_mult_noise", "encoder_type",
                                    "decoder_type", "resample_filter"]),
    "DhariwalUNet": ("dhariwal-imagenet64", ["img_resolution", "in_channels", "out_channels", "label_dim",
                                             "augment_dim", "model_channels", "channel_mult",
                                             "channel_mult_emb", "num_blocks", "attn_resolutions",
                                             "dropout", "label_dropout"]),
}
# VPPrecond's schedule as cm implements it (consistency/edm.h VpSchedule: the defaults of EDM, those
# of every released model).
VP_SCHEDULE = {"beta_d": 19.9, "beta_min": 0.1, "M": 1000, "epsilon_t": 1e-5}
SAMPLER_SIGMA_MIN, SAMPLER_SIGMA_MAX = 0.002, 80.0  # generate.py's edm_sampler defaults


def fail(msg):
    sys.exit(f"convert_edm_pkl.py: {msg}")


def full_kwargs(obj, what):
    """Every keyword argument obj's class was built with: the recorded ones (EDM's persistence keeps
    them) over the signature's defaults."""
    try:
        recorded = dict(obj.init_kwargs)
    except Exception:
        fail(f"{what}: {type(obj).__name__} records no init_kwargs (not a network of EDM's persistence)")
    if getattr(obj, "init_args", ()):
        fail(f"{what}: {type(obj).__name__} was built with positional arguments; expected keywords")
    kwargs = {}
    # persistence wraps the class in a subclass whose __init__ takes (*args, **kwargs): the
    # defaults are those of the first class up the hierarchy that names its arguments
    params = {}
    for cls in type(obj).__mro__:
        params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
                  if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if params:
            break
    for name, p in params.items():
        if p.default is not inspect.Parameter.empty:
            kwargs[name] = p.default
    kwargs.update(recorded)
    return kwargs


def to_json_value(v):
    if isinstance(v, (list, tuple)):
        return [to_json_value(x) for x in v]
    if hasattr(v, "item"):  # a numpy scalar
        return v.item()
    return v


def convert(src, out):
    import dnnlib  # EDM's, from --edm
    import torch

    try:
        with dnnlib.util.open_url(src) as f:
            data = pickle.load(f)
    except Exception as e:
        fail(f"{src}: not an EDM network pickle readable with EDM's code ({type(e).__name__}: {e})")
    if not isinstance(data, dict) or "ema" not in data:
        fail(f"{src}: expected EDM's snapshot dictionary with an 'ema' network, got {type(data).__name__}"
             + (f" with keys {sorted(data)}" if isinstance(data, dict) else ""))
    net = data["ema"]
    precond = type(net).__name__
    if precond == "iDDPMPrecond":
        fail(f"{src}: iDDPMPrecond (ADM's learned-variance baseline with a quantised sigma grid) is not "
             "supported; EDMPrecond, VPPrecond and VEPrecond are")
    if precond not in ("EDMPrecond", "VPPrecond", "VEPrecond"):
        fail(f"{src}: 'ema' is a {precond}; expected EDMPrecond, VPPrecond or VEPrecond")
    model = getattr(net, "model", None)
    model_class = type(model).__name__
    if model_class not in FAMILIES:
        fail(f"{src}: the network inside {precond} is a {model_class}; expected SongUNet or DhariwalUNet")
    pk = full_kwargs(net, f"{src}: {precond}")
    mk = full_kwargs(model, f"{src}: {model_class}")
    preset, fields = FAMILIES[model_class]
    unknown = sorted(set(mk) - set(fields))
    if unknown:
        fail(f"{src}: {model_class} options that cm's network does not have: {unknown}")
    network = {"preset": preset}
    for k in fields:
        network[k] = to_json_value(mk[k])
    noise = {"sigma_min": max(SAMPLER_SIGMA_MIN, float(net.sigma_min)),
             "sigma_max": min(SAMPLER_SIGMA_MAX, float(net.sigma_max))}
    if precond == "EDMPrecond":
        noise["sigma_data"] = float(pk["sigma_data"])
    elif precond == "VPPrecond":
        odd = {k: pk[k] for k, v in VP_SCHEDULE.items() if float(pk[k]) != v}
        if odd:
            fail(f"{src}: VPPrecond with a schedule other than EDM's defaults {VP_SCHEDULE}: {odd}")
        network["preconditioning"] = "vp"
    else:
        network["preconditioning"] = "ve"
    tensors = {}
    for name, t in net.state_dict().items():
        if not t.is_floating_point():
            fail(f"{src}: tensor {name!r} has dtype {t.dtype}; EDM's networks hold floating-point tensors")
        tensors[name] = t.detach().float().cpu()  # "model.<EDM's name>", cm's layout already
    label_dim = int(pk.get("label_dim", 0))
    dataset = (data.get("dataset_kwargs") or {}).get("path")
    config = {
        "mode": "edm",
        "name": "converted",
        "data": {"dataset": f"zip:{dataset}" if dataset else "(EDM's training data)",
                 "labels": label_dim > 0},
        "network": network,
        "noise": noise,
        "train": {"ema": []},
    }
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    metadata = {
        "format": "cm-checkpoint-1",
        "config": json.dumps(config),
        "step": "0",
        "emas": "[]",
        "converted_from": json.dumps({"file": os.path.basename(src), "sha256": digest,
                                      "tool": "tools/convert_edm_pkl.py", "kind": "edm",
                                      "precond": precond, "model": model_class,
                                      "use_fp16": bool(pk.get("use_fp16", False))}),
    }
    save_safetensors(out, tensors, metadata)  # to a temporary name, then renamed
    print(f"{out}: {len(tensors)} tensors, {sum(t.numel() for t in tensors.values())} values from {src} "
          f"({precond} around a {model_class}, {'class-conditional' if label_dim else 'unconditional'}); "
          f"cm checks them against the network when it loads the file")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="EDM's network pickle (.pkl)")
    ap.add_argument("--edm", required=True, help="a copy of NVlabs/edm (its dnnlib and torch_utils unpickle the file)")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="required: unpickling runs the code the file holds")
    ap.add_argument("--out", required=True, help="the cm checkpoint to write (.safetensors)")
    a = ap.parse_args()
    if not a.trust_pickle:
        fail("refusing to unpickle without --trust-pickle: an EDM pickle carries Python code that runs "
             "when it is loaded; convert only files from a source you trust")
    print("convert_edm_pkl.py: warning: unpickling " + a.src + " runs the Python code it holds "
          "(EDM's pickles carry their classes' source); --trust-pickle was given", file=sys.stderr)
    if not os.path.isfile(a.src):
        fail(f"{a.src}: no such file")
    if not os.path.isdir(os.path.join(a.edm, "dnnlib")) or not os.path.isdir(os.path.join(a.edm, "torch_utils")):
        fail(f"--edm {a.edm}: not a copy of NVlabs/edm (no dnnlib/ and torch_utils/ there)")
    sys.path.insert(0, os.path.abspath(a.edm))
    convert(a.src, a.out)


if __name__ == "__main__":
    main()
