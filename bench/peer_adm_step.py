"""The ADM peer: one consistency-training (CT) step of the reference's own ADM U-Net
(openai/consistency_models cm/unet.py::UNetModel) in PyTorch, the program a user of the reference
code would run instead of cm. Prints one JSON line per case, in the shape of `cm bench`.

It imports the reference's network code from a copy of openai/consistency_models given by --ref
(fetch it; never commit it). The flash-attention kernel the reference calls (flash_attn, often
not installed) is replaced, when missing, by torch's scaled_dot_product_attention on the same
q/k/v layout (three, heads, dim) — PyTorch's own fused attention, a fair stand-in.

  python3 bench/peer_adm_step.py --ref CM_REF_DIR --device cuda --network adm-imagenet64 --batch 64 \\
      --precision bf16 [--channels-last] [--compile] [--case ct|sample]

The step is the one `cm bench --network adm-imagenet64 --case ct` times: online forward with
gradients at sigma_{n+1}, target forward without gradients at sigma_n (same noise), mean squared
error, backward, RAdam, target EMA by lerp; c_noise = 250 ln sigma and random class labels, as the
reference trains. Run it in the same call as `cm bench`, case by case, and quote the ratio.
"""
import argparse, json, math, os, sys, time

NETWORKS = {  # scripts/launch.sh's flags as UNetModel arguments (attention as downsample rates)
    "adm-imagenet64": dict(image_size=64, in_channels=3, model_channels=192, out_channels=3,
                           num_res_blocks=3, attention_resolutions=[2, 4, 8], dropout=0.0,
                           channel_mult=(1, 2, 3, 4), num_classes=1000, num_head_channels=64,
                           use_scale_shift_norm=True, resblock_updown=True),
    "adm-tiny-16": dict(image_size=16, in_channels=3, model_channels=32, out_channels=3,
                        num_res_blocks=1, attention_resolutions=[2], dropout=0.0, channel_mult=(1, 2),
                        num_classes=10, num_head_channels=32, use_scale_shift_norm=True,
                        resblock_updown=True),
}
SD, SMIN, SMAX, RHO = 0.5, 0.002, 80.0, 7.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="a copy of openai/consistency_models (for cm/unet.py)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--network", default="adm-tiny-16", choices=sorted(NETWORKS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16", "f16"])
    ap.add_argument("--case", default="ct", choices=["ct", "sample"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    a = ap.parse_args()

    sys.path.insert(0, os.path.abspath(a.ref))
    import torch
    import torch.nn.functional as F
    import cm.unet as unet

    try:
        import flash_attn  # noqa: F401  (the reference's own kernel, where installed)
    except ImportError:
        class SdpaAttention(torch.nn.Module):
            def __init__(self, embed_dim, num_heads, **kwargs):
                super().__init__()
                self.h, self.d = num_heads, embed_dim // num_heads

            def forward(self, qkv, **kwargs):
                b, _, s = qkv.shape
                q, k, v = qkv.reshape(b, 3, self.h, self.d, s).transpose(-1, -2).unbind(1)
                return F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, -1, s)

        unet.QKVFlashAttention = SdpaAttention

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if not cuda:
        torch.set_num_threads(a.threads or os.cpu_count())
    torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    torch.backends.cudnn.benchmark = True
    amp = {"bf16": torch.bfloat16, "f16": torch.float16}.get(a.precision)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    cfg = NETWORKS[a.network]
    net = unet.UNetModel(**cfg).to(dev).to(memory_format=fmt)
    tgt = unet.UNetModel(**cfg).to(dev).to(memory_format=fmt)
    tgt.load_state_dict(net.state_dict())
    tgt.requires_grad_(False)
    run_net = torch.compile(net) if a.compile else net
    run_tgt = torch.compile(tgt) if a.compile else tgt
    opt = torch.optim.RAdam(net.parameters(), lr=8e-6)
    scaler = torch.amp.GradScaler(enabled=a.precision == "f16")

    i = torch.arange(40, dtype=torch.float64, device=dev)
    sig = ((SMIN ** (1 / RHO) + i / 39 * (SMAX ** (1 / RHO) - SMIN ** (1 / RHO))) ** RHO).float()
    res, ch = cfg["image_size"], cfg["in_channels"]
    x = torch.randn(a.batch, ch, res, res, device=dev).to(memory_format=fmt)
    y = torch.randint(0, cfg["num_classes"], (a.batch,), device=dev)

    def denoise(f, xs, s):
        v = s.view(-1, 1, 1, 1)
        c_skip = SD ** 2 / ((v - SMIN) ** 2 + SD ** 2)
        c_out = (v - SMIN) * SD / (v ** 2 + SD ** 2).sqrt()
        c_in = 1 / (v ** 2 + SD ** 2).sqrt()
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            out = f(c_in * xs, 250 * s.log(), y)
        return c_skip * xs + c_out * out.float()

    def ct_step(k):
        idx = torch.randint(0, 39, (a.batch,), device=dev)
        z = torch.randn_like(x)
        hi, lo = sig[idx + 1], sig[idx]
        online = denoise(run_net, x + hi.view(-1, 1, 1, 1) * z, hi)
        with torch.no_grad():
            target = denoise(run_tgt, x + lo.view(-1, 1, 1, 1) * z, lo)
        loss = ((online - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            torch._foreach_lerp_(list(tgt.parameters()), list(net.parameters()), 0.05)
        return loss

    @torch.no_grad()
    def sample_step(k):
        net.eval()
        s = torch.full((a.batch,), SMAX, device=dev)
        return denoise(run_net, torch.randn_like(x) * SMAX, s).float().mean()

    step = ct_step if a.case == "ct" else sample_step
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    for k in range(a.warmup):
        step(k)
    sync()
    warm_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for k in range(a.steps):
        t = time.perf_counter()
        out = step(a.warmup + k)
        sync()
        times.append(time.perf_counter() - t)
    ms = sorted(times)[len(times) // 2] * 1e3
    print(json.dumps(dict(
        bench="pytorch-adm", torch=torch.__version__, case=a.case, network=a.network, device=a.device,
        dtype=a.precision, batch=a.batch, channels_last=a.channels_last, compiled=a.compile,
        ms_per_step=round(ms, 3), images_per_s=round(a.batch / ms * 1e3, 1),
        peak_memory_bytes=torch.cuda.max_memory_allocated() if cuda else None,
        warmup_s=round(warm_s, 1), threads=None if cuda else torch.get_num_threads(),
        params=sum(p.numel() for p in net.parameters()), last=float(out.detach()))), flush=True)


if __name__ == "__main__":
    main()
