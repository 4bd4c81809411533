#!/usr/bin/env python3
"""Golden file for cm's domain-metric classifier (eval/classifier.h, tests/test_eval_domain.cpp).

The same network written in PyTorch from its description in eval/classifier.h: ConvBlocks of a 3x3
convolution (padding 1, stride 1 or 2), GroupNorm with min(groups, C // 4) groups and SiLU; global
average pooling, a Linear feature layer with SiLU, a Linear head. Random weights (seeded, f32, the
GroupNorm affine parameters perturbed away from 1 and 0), random u8 images and labels; the outputs
are computed in f64 from the f32 weights, with the gradient of the training loss
(cross-entropy of log_softmax against the labels, averaged over the batch) for every parameter.

Written to --out/classifier.safetensors, per case c (metadata "cases", and "<c>.config": the
ClassifierConfig as JSON):
  <c>.model.<name>   the state dict (f32), names as cm's ("blocks.0.conv.weight", "head.bias")
  <c>.input.images   u8 [N, C, R, R];  <c>.input.labels  i64 [N]
  <c>.output.features f64 [N, feature_dim];  <c>.output.logits  f64 [N, classes]
  <c>.output.loss    f64 [];  <c>.grad.<name>  f64, the loss's gradient

  /usr/bin/python3 tools/gen_classifier_golden.py --out tests/golden
(needs torch; Debian's python3-torch).
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_fid_inception import save_safetensors  # noqa: E402


class ConvBlock(nn.Module):
    def __init__(self, cin, cout, stride, groups):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(min(groups, cout // 4), cout, eps=1e-5)

    def forward(self, x):
        return F.silu(self.norm(self.conv(x)))


class Classifier(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.blocks = nn.ModuleDict()
        specs = [(c["in_channels"], c["channels"][0], 1)]
        for s, ch in enumerate(c["channels"]):
            if s > 0:
                specs.append((c["channels"][s - 1], ch, 2))
            specs += [(ch, ch, 1)] * c["blocks_per_stage"]
        for i, (a, b, st) in enumerate(specs):
            self.blocks[str(i)] = ConvBlock(a, b, st, c["groups"])
        self.feature = nn.Linear(c["channels"][-1], c["feature_dim"])
        self.head = nn.Linear(c["feature_dim"], c["num_classes"])

    def forward(self, x):
        for b in self.blocks.values():
            x = b(x)
        features = F.silu(self.feature(x.mean(dim=(2, 3))))
        return features, self.head(features)


CASES = {
    "digits": {"in_channels": 1, "resolution": 8, "num_classes": 10, "channels": [8, 16],
               "blocks_per_stage": 1, "feature_dim": 12, "groups": 2, "n": 3},
    "odd": {"in_channels": 3, "resolution": 7, "num_classes": 4, "channels": [4, 8, 8],
            "blocks_per_stage": 0, "feature_dim": 5, "groups": 8, "n": 2},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(7)
    tensors, meta = {}, {"cases": ",".join(CASES)}
    for name, case in CASES.items():
        cfg = {k: v for k, v in case.items() if k != "n"}
        meta[name + ".config"] = json.dumps(cfg)
        net = Classifier(cfg)
        with torch.no_grad():
            for n, p in net.named_parameters():
                if n.endswith("norm.weight"):
                    p.copy_(1 + 0.3 * torch.randn_like(p))
                elif n.endswith("norm.bias") or n.endswith(".bias"):
                    p.copy_(0.2 * torch.randn_like(p))
        for n, p in net.state_dict().items():
            tensors[f"{name}.model.{n}"] = p.float().clone()
        r, c = cfg["resolution"], cfg["in_channels"]
        images = torch.randint(0, 256, (case["n"], c, r, r), dtype=torch.uint8)
        labels = torch.randint(0, cfg["num_classes"], (case["n"],), dtype=torch.int64)
        net64 = net.double()
        x = images.double() / 127.5 - 1
        features, logits = net64(x)
        loss = -(F.one_hot(labels, cfg["num_classes"]).double() * F.log_softmax(logits, 1)).sum(1).mean()
        loss.backward()
        tensors[f"{name}.input.images"] = images
        tensors[f"{name}.input.labels"] = labels
        tensors[f"{name}.output.features"] = features.detach()
        tensors[f"{name}.output.logits"] = logits.detach()
        tensors[f"{name}.output.loss"] = loss.detach()
        for n, p in net64.named_parameters():
            tensors[f"{name}.grad.{n}"] = p.grad.detach()
    save_safetensors(os.path.join(args.out, "classifier.safetensors"), tensors, meta)


if __name__ == "__main__":
    main()
