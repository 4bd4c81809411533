#!/usr/bin/env python3
"""The error of `cm edit`'s generated region against the true images, beside simple baselines.

    python3 tools/edit_quality.py EDITS.npz [--patch P | --colorize]

Reads the uint8 NHWC arrays `reference`, `result` and `mask` (1 = generated; one mask for all
images or one per image) that cm edit writes and prints the RMSE in [0, 1] units over the
generated pixels (inpainting) or all pixels (super-resolution, `--patch P`, where the mask is in
the patch basis) of:
  - the result;
  - inpainting: a flat fill with the mean of each image's known pixels, and the mean image of the
    file's references (the data set's mean, pixel by pixel);
  - super-resolution: the patch means upsampled, nearest-neighbour and bilinear (between the
    patches' centres, edges clamped);
  - colorization (`--colorize`, RGB, all pixels and channels): the gray image of the reference's
    luma (R = G = B = 0.2989 R + 0.5870 G + 0.1140 B), and the reference's own luma component
    plus the references' mean chroma at that pixel (the chroma being what is orthogonal to the
    luma vector, as in cm's colorization transform).
Standard library only (no numpy): the .npz is a zip of .npy files.
"""
import argparse
import ast
import math
import struct
import zipfile


def read_npy(data):
    assert data[:6] == b"\x93NUMPY", "not an .npy"
    major = data[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", data[8:10])
        start = 10
    else:
        (hlen,) = struct.unpack("<I", data[8:12])
        start = 12
    header = ast.literal_eval(data[start:start + hlen].decode("latin1"))
    assert header["descr"] == "|u1" and not header["fortran_order"], header
    return header["shape"], data[start + hlen:]


def patch_means(r, h, w, c, p):
    """Per channel, the mean of each p×p patch: [h/p][w/p][c]."""
    return [[[sum(r[((pi * p + u) * w + pj * p + v) * c + ch] for u in range(p) for v in range(p)) / (p * p)
              for ch in range(c)] for pj in range(w // p)] for pi in range(h // p)]


def bilinear(means, i, j, ch, p, hp, wp):
    """The patch means interpolated at pixel (i, j): patch centres at (k + 1/2)·p − 1/2."""
    y = min(max((i + 0.5) / p - 0.5, 0.0), hp - 1.0)
    x = min(max((j + 0.5) / p - 0.5, 0.0), wp - 1.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, hp - 1), min(x0 + 1, wp - 1)
    fy, fx = y - y0, x - x0
    return ((1 - fy) * ((1 - fx) * means[y0][x0][ch] + fx * means[y0][x1][ch]) +
            fy * ((1 - fx) * means[y1][x0][ch] + fx * means[y1][x1][ch]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("edits")
    ap.add_argument("--patch", type=int, default=0, help="super-resolution factor (0: inpainting)")
    ap.add_argument("--colorize", action="store_true", help="score a colorization")
    a = ap.parse_args()
    z = zipfile.ZipFile(a.edits)
    (n, h, w, c), ref = read_npy(z.read("reference.npy"))
    _, res = read_npy(z.read("result.npy"))
    per = h * w * c
    errs = {"result": 0.0, "flat": 0.0, "mean_image": 0.0, "nearest": 0.0, "bilinear": 0.0,
            "gray": 0.0, "mean_chroma": 0.0}
    count = 0
    luma_err = 0.0
    if a.colorize:
        assert c == 3, "colorization needs RGB images"
        luma = (0.2989, 0.5870, 0.1140)
        norm = math.sqrt(sum(v * v for v in luma))
        u = [v / norm for v in luma]

        def split(px):  # the luma component and the chroma (the rest)
            d = sum(px[i] * u[i] for i in range(3))
            return [d * u[i] for i in range(3)], [px[i] - d * u[i] for i in range(3)]

        mean_chroma = [[0.0] * 3 for _ in range(h * w)]
        for k in range(n):
            for p in range(h * w):
                _, ch = split([ref[k * per + p * 3 + i] / 255.0 for i in range(3)])
                for i in range(3):
                    mean_chroma[p][i] += ch[i] / n
        for k in range(n):
            for p in range(h * w):
                t = [ref[k * per + p * 3 + i] / 255.0 for i in range(3)]
                x = [res[k * per + p * 3 + i] / 255.0 for i in range(3)]
                lum, _ = split(t)
                y = sum(luma[i] * t[i] for i in range(3))
                for i in range(3):
                    errs["result"] += (x[i] - t[i]) ** 2
                    errs["gray"] += (y - t[i]) ** 2
                    errs["mean_chroma"] += (lum[i] + mean_chroma[p][i] - t[i]) ** 2
                    count += 1
                luma_err = max(luma_err, abs(sum(luma[i] * (x[i] - t[i]) for i in range(3))))
    elif a.patch:
        p = a.patch
        for k in range(n):
            r = ref[k * per:(k + 1) * per]
            x = res[k * per:(k + 1) * per]
            means = patch_means(r, h, w, c, p)
            for i in range(h):
                for j in range(w):
                    for ch in range(c):
                        idx = (i * w + j) * c + ch
                        t = r[idx] / 255.0
                        errs["result"] += (x[idx] / 255.0 - t) ** 2
                        errs["nearest"] += (means[i // p][j // p][ch] / 255.0 - t) ** 2
                        errs["bilinear"] += (bilinear(means, i, j, ch, p, h // p, w // p) / 255.0 - t) ** 2
                        count += 1
    else:
        mshape, mask = read_npy(z.read("mask.npy"))
        per_image = mshape[0] == n and n > 1
        mean_image = [sum(ref[k * per + i] for k in range(n)) / n for i in range(per)]
        for k in range(n):
            r = ref[k * per:(k + 1) * per]
            x = res[k * per:(k + 1) * per]
            m = mask[k * per:(k + 1) * per] if per_image else mask[:per]
            known = [r[i] for i in range(per) if m[i] == 0]
            fill = sum(known) / max(len(known), 1)
            for i in range(per):
                if m[i] == 1:
                    t = r[i] / 255.0
                    errs["result"] += (x[i] / 255.0 - t) ** 2
                    errs["flat"] += (fill / 255.0 - t) ** 2
                    errs["mean_image"] += (mean_image[i] / 255.0 - t) ** 2
                    count += 1
    rmse = lambda e: math.sqrt(e / max(count, 1))
    print(f"images {n}, pixels scored {count}")
    print(f"  cm edit result                       RMSE {rmse(errs['result']):.4f}")
    if a.colorize:
        print(f"  gray (the luma in R, G and B)        RMSE {rmse(errs['gray']):.4f}")
        print(f"  the luma plus the mean chroma        RMSE {rmse(errs['mean_chroma']):.4f}")
        print(f"  largest luma difference, result - reference: {luma_err * 255:.2f} of 255")
    elif a.patch:
        print(f"  patch means, nearest-neighbour       RMSE {rmse(errs['nearest']):.4f}")
        print(f"  patch means, bilinear                RMSE {rmse(errs['bilinear']):.4f}")
    else:
        print(f"  flat fill (mean of the known pixels) RMSE {rmse(errs['flat']):.4f}")
        print(f"  the references' mean image           RMSE {rmse(errs['mean_image']):.4f}")


if __name__ == "__main__":
    main()
