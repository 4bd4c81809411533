#!/usr/bin/env python3
"""The error of `cm edit`'s generated region against the true images, beside simple baselines.

    python3 tools/edit_quality.py EDITS.npz [--baseline-mean TRAIN_EDITS.npz]

Reads the uint8 NHWC arrays `reference`, `result` and `mask` (1 = generated) that cm edit writes
and prints, over the generated pixels (inpainting) or all pixels (super-resolution, where the mask
is in the patch basis), the RMSE in [0, 1] units of: the result, the mean of the known pixels of
each image (a flat fill), and for super-resolution the nearest-neighbour upsampling of the patch
means. Standard library only (no numpy): the .npz is a zip of .npy files.
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("edits")
    ap.add_argument("--patch", type=int, default=0, help="super-resolution factor (0: inpainting)")
    a = ap.parse_args()
    z = zipfile.ZipFile(a.edits)
    (n, h, w, c), ref = read_npy(z.read("reference.npy"))
    _, res = read_npy(z.read("result.npy"))
    _, mask = read_npy(z.read("mask.npy"))
    per = h * w * c
    err_result = err_flat = err_up = 0.0
    count = 0
    for k in range(n):
        r = ref[k * per:(k + 1) * per]
        x = res[k * per:(k + 1) * per]
        if a.patch:
            p = a.patch
            for i in range(h):
                for j in range(w):
                    for ch in range(c):
                        idx = (i * w + j) * c + ch
                        # the patch mean (known to the edit): nearest-neighbour upsampling
                        pi, pj = i - i % p, j - j % p
                        m = sum(r[((pi + u) * w + pj + v) * c + ch] for u in range(p) for v in range(p)) / (p * p)
                        err_result += ((x[idx] - r[idx]) / 255.0) ** 2
                        err_up += ((m - r[idx]) / 255.0) ** 2
                        count += 1
        else:
            known = [r[i] for i in range(per) if mask[i % len(mask)] == 0]
            fill = sum(known) / max(len(known), 1)
            for i in range(per):
                if mask[i % len(mask)] == 1:
                    err_result += ((x[i] - r[i]) / 255.0) ** 2
                    err_flat += ((fill - r[i]) / 255.0) ** 2
                    count += 1
    rmse = lambda e: math.sqrt(e / max(count, 1))
    print(f"images {n}, pixels scored {count}")
    print(f"  cm edit result      RMSE {rmse(err_result):.4f}")
    if a.patch:
        print(f"  patch-mean upsample RMSE {rmse(err_up):.4f}")
    else:
        print(f"  flat fill (mean of the known pixels) RMSE {rmse(err_flat):.4f}")


if __name__ == "__main__":
    main()
