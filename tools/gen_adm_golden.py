#!/usr/bin/env python3
"""Golden files for cm's ADM U-Net, made by the reference's own PyTorch implementation.

The oracle is openai/consistency_models' cm/unet.py::UNetModel (with cm/nn.py), imported from a
local copy of that repository (passed with --ref, never committed here). The script builds small
networks of two flavours (FiLM scale-shift with residual up/down-sampling, classes and 16-channel
heads, as ImageNet-64; the additive embedding with convolutional resampling, a fixed number of
heads and another number in the decoder, and a level of width 64: with GroupNorm32 a width of 32
is one channel per group, and the added embedding is then normalised away), perturbs every parameter so that each path matters (the reference
zero-initialises the output convolutions), and writes one safetensors file per flavour with
  - every parameter under its UNetModel state-dict name,
  - "input.x", "input.noise_labels" (c_noise = 250·ln σ, the reference's convention),
    "input.class_labels" (one-hot rows; the reference takes the indices), "input.weights" (the
    fixed random weights w of the loss sum(output * w)),
  - "output", and the gradients "grad.x" and "grad.<param name>" for a few parameters.
Weights and inputs are stored in f32 (and used as such by both sides); outputs and gradients are
computed and stored in f64. The parameter counts of the paper's two full-size configurations
(ImageNet-64 and LSUN-256, as scripts/launch.sh sets them) are printed for the C++ test's table.

Three changes make the reference run in float64 (it computes some things in float32 whatever the
input, for fp16 training): GroupNorm32's x.float(), timestep_embedding in float32 (the float64 one
computes the same formula, frequencies included, in float64), and UNetModel's x.type(self.dtype);
in float32 each is the reference's computation unchanged. The
flash-attention kernel (flash_attn, CUDA only) is replaced by the same arithmetic on the same
layout, qkv "b (three h d) s": softmax(q·kᵀ/√d)·v.

  python3 tools/gen_adm_golden.py --ref /path/to/consistency_models --out tests/golden
(needs torch, numpy and einops).
"""
import argparse
import json
import math
import os
import sys

import torch

from gen_songunet_golden import save_safetensors  # tools/gen_songunet_golden.py

FLAVOURS = {
    # name: UNetModel keyword arguments (attention_resolutions as downsample rates, as
    # script_util.create_model passes them) and the C++ config's attention resolutions in pixels
    "film": dict(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                 attention_resolutions=[2], dropout=0.0, channel_mult=(1, 1), num_classes=5,
                 num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True),
    "plain": dict(image_size=8, in_channels=2, model_channels=32, out_channels=2, num_res_blocks=1,
                  attention_resolutions=[1], dropout=0.0, channel_mult=(1, 2), num_heads=2,
                  num_head_channels=-1, num_heads_upsample=1, use_scale_shift_norm=False,
                  resblock_updown=False, conv_resample=True),
}
GRAD_PARAMS = ["time_embed.0.weight", "time_embed.2.bias", "label_emb.weight", "input_blocks.0.0.weight",
               "input_blocks.1.0.in_layers.2.weight", "input_blocks.1.0.emb_layers.1.weight",
               "input_blocks.1.0.out_layers.0.weight", "input_blocks.1.0.out_layers.3.weight",
               "input_blocks.1.1.qkv.weight", "input_blocks.2.0.op.weight", "input_blocks.3.0.emb_layers.1.weight", "middle_block.1.proj_out.bias",
               "output_blocks.0.0.skip_connection.weight", "output_blocks.1.1.conv.weight", "out.0.weight",
               "out.2.weight"]

FULL_SIZE = {
    # scripts/launch.sh's flags through script_util.create_model (image_size 64: channel_mult (1,2,3,4);
    # 256: (1,1,2,2,4,4)); attention "32,16,8" -> downsample rates image_size // r
    "adm-imagenet64": dict(image_size=64, in_channels=3, model_channels=192, out_channels=3, num_res_blocks=3,
                           attention_resolutions=[2, 4, 8], channel_mult=(1, 2, 3, 4), num_classes=1000,
                           num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True),
    "adm-lsun256": dict(image_size=256, in_channels=3, model_channels=256, out_channels=3, num_res_blocks=2,
                        attention_resolutions=[8, 16, 32], channel_mult=(1, 1, 2, 2, 4, 4), num_classes=None,
                        num_head_channels=64, use_scale_shift_norm=False, resblock_updown=True),
}


class FlashAttentionMath(torch.nn.Module):
    """QKVFlashAttention's computation without the flash_attn kernel: qkv [b, 3·h·d, s] laid out as
    (three, h, d), softmax scale 1/√d, output [b, h·d, s] laid out as (h, d)."""

    def __init__(self, embed_dim, num_heads, **kwargs):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads

    def forward(self, qkv, **kwargs):
        b, _, s = qkv.shape
        q, k, v = qkv.reshape(b, 3, self.num_heads, self.head_dim, s).unbind(1)  # [b, h, d, s]
        w = torch.einsum("bhdt,bhds->bhts", q, k) / math.sqrt(self.head_dim)
        a = torch.einsum("bhts,bhds->bhdt", w.softmax(dim=-1), v)
        return a.reshape(b, self.num_heads * self.head_dim, s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="path to a copy of openai/consistency_models")
    ap.add_argument("--out", default="tests/golden")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.ref))
    import cm.nn as ref_nn
    import cm.unet as unet  # the reference implementation

    unet.QKVFlashAttention = FlashAttentionMath

    def group_norm_in_dtype(self, x):  # GroupNorm32 computes in f32; in f64 keep f64
        return torch.nn.GroupNorm.forward(self, x.float() if x.dtype != torch.float64 else x).type(x.dtype)

    ref_nn.GroupNorm32.forward = group_norm_in_dtype
    original_embedding = ref_nn.timestep_embedding

    def timestep_embedding_in_dtype(timesteps, dim, max_period=10000):
        if timesteps.dtype != torch.float64:
            return original_embedding(timesteps, dim, max_period)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float64) / half)
        args_ = timesteps[:, None] * freqs[None]
        return torch.cat([torch.cos(args_), torch.sin(args_)], dim=-1)

    unet.timestep_embedding = timestep_embedding_in_dtype

    for name, kw in FULL_SIZE.items():
        with torch.device("meta"):
            net = unet.UNetModel(**kw)
        print(name, sum(p.numel() for p in net.parameters()), "parameters")

    for name, kwargs in FLAVOURS.items():
        torch.manual_seed(1234)
        net = unet.UNetModel(**kwargs).double()
        net.dtype = torch.float64  # UNetModel.forward casts x to self.dtype
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.2)  # every path contributes
                p.copy_(p.float().double())  # the weights as stored (f32)
        net.eval()
        n = 3
        res, cin = kwargs["image_size"], kwargs["in_channels"]
        x = torch.randn(n, cin, res, res, dtype=torch.float64).float().double().requires_grad_(True)
        sigma = torch.tensor([0.05, 1.3, 40.0], dtype=torch.float64)
        noise_labels = (250 * sigma.log()).float().double()
        classes = kwargs.get("num_classes")
        y = torch.tensor([2, 0, 4]) if classes else None
        out = net(x, noise_labels, y)
        w = torch.randn_like(out).float().double()  # as stored
        (out * w).sum().backward()
        tensors = {pname: p.float() for pname, p in net.named_parameters()}
        tensors["input.x"] = x.detach().float()
        tensors["input.noise_labels"] = noise_labels.float()
        if y is not None:
            tensors["input.class_labels"] = torch.nn.functional.one_hot(y, classes).float()
        tensors["input.weights"] = w.float()
        tensors["output"] = out.detach()
        tensors["grad.x"] = x.grad.detach()
        params = dict(net.named_parameters())
        for g in GRAD_PARAMS:
            # a width of 32 is one channel per group of GroupNorm32: an embedding added there is
            # normalised away and its projection's gradient is rounding noise
            if g == "input_blocks.1.0.emb_layers.1.weight" and not kwargs["use_scale_shift_norm"]:
                continue
            if g in params:
                tensors["grad." + g] = params[g].grad.detach()
        config = dict(kwargs)
        config["attention_resolutions"] = [res // ds for ds in kwargs["attention_resolutions"]]
        config["channel_mult"] = list(kwargs["channel_mult"])
        meta = {"config": json.dumps(config), "generator": "tools/gen_adm_golden.py", "torch": torch.__version__}
        path = os.path.join(args.out, f"adm_{name}.safetensors")
        save_safetensors(path, tensors, meta)
        print(path, os.path.getsize(path), "bytes,", sum(p.numel() for p in net.parameters()), "parameters")


if __name__ == "__main__":
    main()
