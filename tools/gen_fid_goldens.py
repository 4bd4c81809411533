#!/usr/bin/env python3
"""Golden files for cm's FID and Inception Score (tests/test_eval_fid.cpp), made by the reference code.

The oracles are the references themselves, imported from local copies given on the command line
(never committed here):
  --pytorch-fid     a copy of mseitzer/pytorch-fid: its src/pytorch_fid/inception.py builds the FID
                    Inception (fid_inception_v3(), with its weight download switched off) and its
                    fid_score.calculate_frechet_distance (scipy.linalg.sqrtm) gives the reference FIDs;
  --torch-fidelity  a copy of toshas/torch-fidelity: interpolate_bilinear_2d_like_tensorflow1x (the
                    TF1 resize, bit-exact on the CPU) and isc_features_to_metric (the Inception Score).

Files written to --out:
  fid_inception_small.safetensors  pytorch-fid's FID Inception built from its own block classes with
        every channel count c (but the 3 image channels) reduced to ceil(c/32) and a 16-class fc (the
        full network is 95 MB), random weights (seeded) and batch-norm running statistics calibrated on
        noise images then perturbed; "input.images" u8 [3, 3, 32, 32] and "input.gray" u8 [1, 1, 28, 28];
        their features through the reference input path (the TF1 resize to 299, (x - 128)/128; the gray
        image repeated to 3 channels) and the network run in f64: "output.pool", "output.logits"
        (pool @ fc.weight.T, torch-fidelity's logits_unbiased), "output.logits_biased", "gray.pool".
        Weights are f32, outputs f64.
  fid_inception_names.json  the full-width state dict: {"parameters": {name: shape}, "buffers": {...}}
        (num_batches_tracked left out, as tools/convert_fid_inception.py drops it) and the counts.
  fid_resize.safetensors  the TF1 resize of u8 images ("<case>.input") as torch-fidelity computes it
        ("<case>.tf1"), as a NumPy transcription of TensorFlow's kernel ("<case>.numpy", f32 throughout),
        and as openai's th_evaluator emulates it with affine_grid/grid_sample ("<case>.grid"); outputs
        of 299x299 cases are stored at every 13th row and column (metadata "cases").
  fid_frechet.safetensors  random statistics (mu f64 [D], sigma f64 [D, D] from numpy.cov of correlated
        samples) in pairs "<case>.mu1/.sigma1/.mu2/.sigma2" with pytorch-fid's FID "<case>.fid"; one
        pair has a rank-deficient sigma1 (fewer samples than dimensions); and "stats.features" [100, 16]
        (offset by 1000) with numpy's mean and cov ("stats.mu", "stats.sigma").
  fid_stats_numpy.npz  np.savez(mu=, sigma=) of the "small" pair's first statistics.
  npz_numpy_mixed.npz  np.savez_compressed of every dtype cm reads (f32 in Fortran order).
  npz_numpy_uint16.npz  an array of a dtype cm lacks (uint16) named mu.
  npz_not_npy.npz  mu.npy (zeros(2)), sigma.npy (eye(2)) and readme.txt, an entry that is not .npy.
  fid_is.json  random logits with torch-fidelity's Inception Score (default splits 10, shuffled with
        seed 2020, and splits 3 unshuffled), and numpy.random.RandomState(seed).permutation(n).

  /usr/bin/python3 tools/gen_fid_goldens.py --pytorch-fid /path/to/pytorch-fid \\
      --torch-fidelity /path/to/torch-fidelity --out tests/golden
(needs torch, torchvision, numpy, scipy and PIL: Debian's python3-torch, python3-torchvision, python3-scipy;
tqdm, which torch-fidelity imports for progress bars only, is stubbed when missing).
"""
import argparse
import io
import json
import os
import sys
import tempfile
import types
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_fid_inception import save_safetensors, convert  # noqa: E402

SEED = 20151205
WIDTH_DIVISOR = 32
NUM_CLASSES = 16
SUBSAMPLE = 13  # stored rows/columns of 299x299 resize outputs


# ---- the reference modules -------------------------------------------------------------------------

def import_references(pytorch_fid, torch_fidelity):
    sys.path.insert(0, os.path.join(os.path.abspath(pytorch_fid), "src"))
    sys.path.insert(0, os.path.abspath(torch_fidelity))
    try:
        import tqdm  # noqa: F401
    except ImportError:
        stub = types.ModuleType("tqdm")
        stub.tqdm = lambda it=None, **kw: it
        sys.modules["tqdm"] = stub
    import pytorch_fid.inception as pfid_inception
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torch_fidelity.metric_isc import isc_features_to_metric
    return (pfid_inception, calculate_frechet_distance, interpolate_bilinear_2d_like_tensorflow1x,
            isc_features_to_metric)


def build_fid_inception(pfid, divisor):
    """pytorch-fid's InceptionV3 (blocks 0-3) and the Inception3 it wraps, built by its own
    fid_inception_v3() with the weight download switched off; with divisor > 1, torchvision's
    BasicConv2d (which every block builds its convolutions with) is swapped for one whose channel
    counts are ceil(c/divisor) (3, the image channels, kept)."""
    import torchvision.models.inception as tv_inception
    captured = {}
    real_builder = pfid.fid_inception_v3
    real_download = pfid.load_state_dict_from_url
    real_load = tv_inception.Inception3.load_state_dict
    real_conv = tv_inception.BasicConv2d

    def reduced(c):
        return c if c == 3 else -(-c // divisor)

    class ReducedBasicConv2d(real_conv):
        def __init__(self, in_channels, out_channels, **kwargs):
            super().__init__(reduced(in_channels), reduced(out_channels), **kwargs)

    def capture():
        captured["inception"] = real_builder()
        return captured["inception"]

    pfid.fid_inception_v3 = capture
    pfid.load_state_dict_from_url = lambda *a, **k: None
    tv_inception.Inception3.load_state_dict = lambda self, state, *a, **k: None
    if divisor > 1:
        tv_inception.BasicConv2d = ReducedBasicConv2d
    try:
        wrapper = pfid.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False)
    finally:
        pfid.fid_inception_v3 = real_builder
        pfid.load_state_dict_from_url = real_download
        tv_inception.Inception3.load_state_dict = real_load
        tv_inception.BasicConv2d = real_conv
    inception = captured["inception"]
    return wrapper, inception


# ---- the TF1 resize three ways -----------------------------------------------------------------------

def resize_tf1_numpy(x_u8, out_h, out_w):
    """TensorFlow's resize_bilinear (align_corners=False, legacy scaler) transcribed in NumPy f32:
    in = i * (in_size/out_size) (f32), lower = floor(in), upper = min(ceil(in), in_size - 1),
    lerp = in - floor(in); top/bottom along x, then along y, each a + (b - a) * lerp."""
    x = x_u8.astype(np.float32)

    def taps(n_in, n_out):
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.arange(n_out).astype(np.float32) * scale
        lower = np.floor(src).astype(np.int64)
        upper = np.minimum(np.ceil(src).astype(np.int64), n_in - 1)
        return lower, upper, (src - np.floor(src)).astype(np.float32)

    yl, yu, ty = taps(x.shape[2], out_h)
    xl, xu, tx = taps(x.shape[3], out_w)
    rows_top, rows_bottom = x[:, :, yl, :], x[:, :, yu, :]
    top = rows_top[:, :, :, xl] + (rows_top[:, :, :, xu] - rows_top[:, :, :, xl]) * tx
    bottom = rows_bottom[:, :, :, xl] + (rows_bottom[:, :, :, xu] - rows_bottom[:, :, :, xl]) * tx
    return (top + (bottom - top) * ty[:, None]).astype(np.float32)


def resize_affine_grid(x_u8, out_h, out_w):
    """openai's th_evaluator (consistency_models evaluations/inception_v3.py): tf.image.resize_bilinear
    emulated with affine_grid/grid_sample, border padding."""
    x = torch.from_numpy(x_u8).float()
    n, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / out_w
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / out_h
    theta = theta.unsqueeze(0).repeat([n, 1, 1])
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).numpy()


def resize_goldens(tf1_resize, rng):
    cases = [("up", (2, 3, 8, 10), (17, 23)), ("down", (1, 2, 40, 36), (11, 13)),
             ("same", (1, 1, 9, 9), (9, 9)), ("cifar", (1, 3, 32, 32), (299, 299)),
             ("mnist", (1, 1, 28, 28), (299, 299))]
    tensors, meta = {}, []
    for name, in_shape, (oh, ow) in cases:
        x = rng.integers(0, 256, size=in_shape, dtype=np.uint8)
        ref = tf1_resize(torch.from_numpy(x).float(), size=(oh, ow), align_corners=False,
                         method="slow").numpy()
        ours = resize_tf1_numpy(x, oh, ow)
        grid = resize_affine_grid(x, oh, ow)
        assert np.array_equal(ref, ours), f"{name}: torch-fidelity and the NumPy transcription differ"
        print(f"resize {name}: tf1 == numpy; |tf1 - affine_grid| max {np.abs(ref - grid).max():.3g}")
        stride = SUBSAMPLE if oh == 299 else 1
        tensors[f"{name}.input"] = torch.from_numpy(x)
        for key, out in (("tf1", ref), ("numpy", ours), ("grid", grid)):
            tensors[f"{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(out[:, :, ::stride, ::stride]))
        meta.append({"name": name, "out": [oh, ow], "stride": stride})
    return tensors, {"cases": json.dumps(meta)}


# ---- the network -------------------------------------------------------------------------------------

def tf1_input(tf1_resize, images_u8):
    """The reference input path: u8 -> TF1 resize to 299 (f32) -> (x - 128)/128."""
    x = torch.from_numpy(images_u8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = tf1_resize(x.float(), size=(299, 299), align_corners=False, method="slow")
    return (x - 128) / 128


def randomise(inception, wrapper, tf1_resize, rng, gen):
    """Random conv/fc weights (PyTorch's default init), random batch-norm affine parameters, and
    running statistics set from a train-mode pass over noise images, then perturbed."""
    with torch.no_grad():
        for name, m in inception.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.3, 0.3, generator=gen)
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one batch gives its own statistics
    calib = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    wrapper.train()
    with torch.no_grad():
        wrapper(tf1_input(tf1_resize, calib))
    wrapper.eval()
    with torch.no_grad():
        for m in inception.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
                noise = torch.randn(m.running_mean.shape, generator=gen)
                m.running_mean.add_(0.05 * m.running_var.sqrt() * noise)
                m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.8, 1.25, generator=gen))


def inception_goldens(pfid, tf1_resize, rng, gen):
    wrapper, inception = build_fid_inception(pfid, WIDTH_DIVISOR)
    inception.fc = torch.nn.Linear(-(-2048 // WIDTH_DIVISOR), NUM_CLASSES)
    randomise(inception, wrapper, tf1_resize, rng, gen)
    state = {k: v.detach().clone() for k, v in inception.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    images = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(1, 1, 28, 28), dtype=np.uint8)
    wrapper.double()
    inception.double()
    with torch.no_grad():
        pool = wrapper(tf1_input(tf1_resize, images).double())[0].flatten(1)
        gray_pool = wrapper(tf1_input(tf1_resize, gray).double())[0].flatten(1)
        logits = pool @ inception.fc.weight.T
        logits_biased = inception.fc(pool)
    print(f"inception (1/{WIDTH_DIVISOR} width): pool {tuple(pool.shape)} std {pool.std():.3g}, "
          f"logits std {logits.std():.3g}, {sum(v.numel() for v in state.values())} weights")
    tensors = dict(state)
    tensors.update({"input.images": torch.from_numpy(images), "input.gray": torch.from_numpy(gray),
                    "output.pool": pool, "output.logits": logits, "output.logits_biased": logits_biased,
                    "gray.pool": gray_pool})
    return tensors, {"width_divisor": str(WIDTH_DIVISOR), "num_classes": str(NUM_CLASSES)}


def full_width_names(pfid):
    _, inception = build_fid_inception(pfid, 1)
    params = {k: list(v.shape) for k, v in inception.named_parameters()}
    buffers = {k: list(v.shape) for k, v in inception.named_buffers()
               if not k.endswith("num_batches_tracked")}
    n_params = sum(v.numel() for v in inception.parameters())
    n_buffers = sum(v.numel() for k, v in inception.named_buffers() if not k.endswith("num_batches_tracked"))
    print(f"full width: {n_params} parameters + {n_buffers} buffer values = {n_params + n_buffers}")
    # The converter on a full-size state dict of this very network (random values, with the
    # num_batches_tracked counters a torchvision state dict carries) must keep every other tensor.
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "pt_inception-test.pth"), os.path.join(d, "out.safetensors")
        torch.save(inception.state_dict(), src)
        convert(src, dst)
        with open(dst, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__")
        assert {k: v["shape"] for k, v in header.items()} == {**params, **buffers}
    return {"parameters": params, "buffers": buffers, "num_parameters": n_params,
            "num_buffer_values": n_buffers}


# ---- statistics, FID and IS --------------------------------------------------------------------------

def random_features(rng, n, d, offset=0.0):
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    scales = np.exp(rng.normal(size=d))
    return rng.normal(size=(n, d)) @ (mix * scales) + rng.normal(size=d) + offset


def frechet_goldens(frechet, rng):
    tensors = {}
    for name, d, n1, n2 in (("small", 8, 40, 50), ("mid", 64, 400, 300), ("lowrank", 64, 40, 300)):
        f1, f2 = random_features(rng, n1, d), random_features(rng, n2, d) * 1.5 + 0.3
        mu1, sigma1 = f1.mean(0), np.cov(f1, rowvar=False)
        mu2, sigma2 = f2.mean(0), np.cov(f2, rowvar=False)
        fid = frechet(mu1, sigma1, mu2, sigma2)
        print(f"frechet {name}: D {d}, rank(sigma1) {np.linalg.matrix_rank(sigma1)}, FID {fid!r}")
        for key, v in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2),
                       ("fid", np.array([fid]))):
            tensors[f"{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
    feats = random_features(rng, 100, 16, offset=1000.0)
    tensors["stats.features"] = torch.from_numpy(feats)
    tensors["stats.mu"] = torch.from_numpy(feats.mean(0))
    tensors["stats.sigma"] = torch.from_numpy(np.cov(feats, rowvar=False))
    return tensors


def npz_goldens(out, frechet_tensors):
    np.savez(os.path.join(out, "fid_stats_numpy.npz"), mu=frechet_tensors["small.mu1"].numpy(),
             sigma=frechet_tensors["small.sigma1"].numpy())
    np.savez_compressed(
        os.path.join(out, "npz_numpy_mixed.npz"),
        f32_fortran=np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3) / 4),
        f64=np.array([0.1, -2.5, 1e300]), f16=np.array([1.5, -0.25], dtype=np.float16),
        u8=np.array([[0, 255], [7, 8]], dtype=np.uint8), b=np.array([True, False, True]),
        i32=np.array([-3, 2**31 - 1], dtype=np.int32), i64=np.array([-(2**40), 5], dtype=np.int64),
        scalar=np.float64(3.25))
    np.savez(os.path.join(out, "npz_numpy_uint16.npz"), mu=np.array([1, 2], dtype=np.uint16))
    with zipfile.ZipFile(os.path.join(out, "npz_not_npy.npz"), "w") as z:  # mu, sigma and a text file
        entries = []
        for key, v in (("mu", np.zeros(2)), ("sigma", np.eye(2))):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, v)
            entries.append((key + ".npy", buf.getvalue()))
        entries.append(("readme.txt", b"not an array\n"))
        for name, data in entries:  # fixed timestamps: the file is the same on every run
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def is_goldens(isc, rng):
    cases = []
    for name, n, c, scale, splits, shuffle in (("default", 53, 7, 3.0, 10, True),
                                               ("unshuffled", 20, 5, 2.0, 3, False)):
        logits = rng.normal(size=(n, c)) * scale
        r = isc(torch.from_numpy(logits), splits=splits, shuffle=shuffle, rng_seed=2020)
        cases.append({"name": name, "shape": [n, c], "splits": splits, "shuffle": shuffle, "seed": 2020,
                      "logits": logits.flatten().tolist(), "mean": r["inception_score_mean"],
                      "std": r["inception_score_std"]})
        print(f"IS {name}: {r}")
    perms = [{"n": n, "seed": s, "perm": np.random.RandomState(s).permutation(n).tolist()}
             for n, s in ((53, 2020), (1000, 2020), (17, 0), (1, 5))]
    return {"inception_score": cases, "permutations": perms}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pytorch-fid", required=True, help="a copy of mseitzer/pytorch-fid")
    ap.add_argument("--torch-fidelity", required=True, help="a copy of toshas/torch-fidelity")
    ap.add_argument("--out", default="tests/golden")
    args = ap.parse_args()
    pfid, frechet, tf1_resize, isc = import_references(args.pytorch_fid, args.torch_fidelity)
    rng = np.random.default_rng(SEED)
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    os.makedirs(args.out, exist_ok=True)

    tensors, meta = resize_goldens(tf1_resize, rng)
    save_safetensors(os.path.join(args.out, "fid_resize.safetensors"), tensors, meta)
    tensors, meta = inception_goldens(pfid, tf1_resize, rng, gen)
    save_safetensors(os.path.join(args.out, "fid_inception_small.safetensors"), tensors, meta)
    with open(os.path.join(args.out, "fid_inception_names.json"), "w") as f:
        json.dump(full_width_names(pfid), f, indent=0, sort_keys=True)
    tensors = frechet_goldens(frechet, rng)
    save_safetensors(os.path.join(args.out, "fid_frechet.safetensors"), tensors, {})
    npz_goldens(args.out, tensors)
    with open(os.path.join(args.out, "fid_is.json"), "w") as f:
        json.dump(is_goldens(isc, rng), f)


if __name__ == "__main__":
    main()
