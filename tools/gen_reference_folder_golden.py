#!/usr/bin/env python3
"""Golden files for cm's reading of the reference's image folders (datasets/dataset.h,
load_reference_folder; datasets/resize.h; datasets/jpeg.h), made by the reference's own pipeline.

Imports openai/consistency_models' cm/image_datasets.py from a local copy (--ref, never committed
here; its blobfile and mpi4py imports are stubbed by local-file and one-process equivalents) and
runs its load_data(class_cond=True, deterministic=True, random_flip=False) over a small folder of
images written here with PIL: JPEGs (4:2:0 baseline, gray, CMYK, progressive 4:4:4), a PNG named
.JPEG (as one of ImageNet's files is), an RGBA PNG, a palette PNG, a file that is no image by its
extension, in nested directories. Writes to --out:
  reference_folder/...        the images (committed: cm's test reads the same bytes)
  reference_folder.npz        "arr_0" u8 [N, 16, 16, 3]: the reference's batch of all N images, in
                              its order ((x + 1)·127.5 of its float batch, exact); "arr_1" i64 [N]:
                              its class labels; and PIL's resampling of one random RGB image
                              "resize_src" u8 [17, 23, 3] to several sizes with BOX and BICUBIC,
                              "resize_<filter>_<w>x<h>" u8 [h, w, 3]
  reference_folder.json       {"files": the reference's file order, relative, "size": 16}

  python3 tools/gen_reference_folder_golden.py --ref /path/to/consistency_models --out tests/golden
(needs numpy, pillow and torch: the reference builds a torch DataLoader).
"""
import argparse
import io
import json
import os
import sys
import types

import numpy as np
from PIL import Image

SIZE = 16
RESIZES = [(11, 7), (23, 9), (40, 31), (5, 17), (1, 1), (23, 34)]


def stub_modules():
    bf = types.ModuleType("blobfile")
    bf.listdir = os.listdir
    bf.join = os.path.join
    bf.isdir = os.path.isdir
    bf.basename = os.path.basename
    bf.BlobFile = open
    sys.modules["blobfile"] = bf

    class World:
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 1

    mpi = types.ModuleType("mpi4py")
    mpi.MPI = types.SimpleNamespace(COMM_WORLD=World())
    sys.modules["mpi4py"] = mpi
    sys.modules["mpi4py.MPI"] = mpi.MPI


def smooth_image(rng, w, h, channels):
    # smooth content with some texture (JPEG of white noise says little)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        a, b, p = rng.uniform(0.05, 0.4, size=3)
        v = 127 + 90 * np.sin(a * x + p * 7) * np.cos(b * y + c) + rng.normal(0, 12, size=(h, w))
        planes.append(np.clip(v, 0, 255).astype(np.uint8))
    return np.stack(planes, -1) if channels > 1 else planes[0]


def write_images(root, rng):
    def save(rel, img, fmt, **kw):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        with open(path, "wb") as f:
            f.write(buf.getvalue())

    save("n01440764_10026.JPEG", Image.fromarray(smooth_image(rng, 75, 52, 3)), "JPEG",
         quality=90)
    save("n01440764_2.jpg", Image.fromarray(smooth_image(rng, 40, 61, 1)), "JPEG", quality=85)
    save("n01443537_5.jpg", Image.fromarray(smooth_image(rng, 130, 64, 3)), "JPEG", quality=80,
         progressive=True, subsampling=0)
    cmyk = Image.fromarray(smooth_image(rng, 33, 35, 3)).convert("CMYK")
    save("sub/n02102040_7.jpeg", cmyk, "JPEG", quality=92)
    rgba = np.concatenate([smooth_image(rng, 20, 18, 3), smooth_image(rng, 20, 18, 1)[..., None]], -1)
    save("sub/n02102040_99.JPEG", Image.fromarray(rgba, "RGBA"), "PNG")  # a PNG named .JPEG
    pal = Image.fromarray(smooth_image(rng, 12, 9, 3)).convert("P", palette=Image.ADAPTIVE, colors=16)
    save("a_dir/n01443537_1.png", pal, "PNG")
    with open(os.path.join(root, "readme.txt"), "w") as f:
        f.write("not an image\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="a copy of openai/consistency_models")
    ap.add_argument("--out", required=True, help="tests/golden")
    args = ap.parse_args()
    stub_modules()
    sys.path.insert(0, args.ref)
    from cm import image_datasets  # the reference's code

    rng = np.random.default_rng(20261203)
    root = os.path.join(args.out, "reference_folder")
    if os.path.exists(root):
        raise SystemExit(f"{root} exists: remove it first")
    write_images(root, rng)

    files = image_datasets._list_image_files_recursively(root)
    n = len(files)
    batch, cond = next(image_datasets.load_data(data_dir=root, batch_size=n, image_size=SIZE,
                                                class_cond=True, deterministic=True,
                                                random_flip=False))
    x = (batch.numpy().astype(np.float64) + 1) * 127.5
    images = np.round(x)
    assert np.abs(x - images).max() < 1e-3
    arrays = {"arr_0": images.astype(np.uint8).transpose(0, 2, 3, 1),
              "arr_1": cond["y"].numpy().astype(np.int64)}

    src = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    arrays["resize_src"] = src
    for w, h in RESIZES:
        for name, f in (("box", Image.BOX), ("bicubic", Image.BICUBIC)):
            arrays[f"resize_{name}_{w}x{h}"] = np.asarray(Image.fromarray(src).resize((w, h), f))
    np.savez(os.path.join(args.out, "reference_folder.npz"), **arrays)
    with open(os.path.join(args.out, "reference_folder.json"), "w") as f:
        json.dump({"files": [os.path.relpath(p, root) for p in files], "size": SIZE,
                   "resizes": RESIZES}, f, indent=1)
    print(f"{n} images: {[os.path.relpath(p, root) for p in files]}; labels {arrays['arr_1']}")


if __name__ == "__main__":
    main()
