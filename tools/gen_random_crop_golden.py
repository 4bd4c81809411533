#!/usr/bin/env python3
"""Golden file for cm's random crop (datasets/resize.h random_crop_arr; ImageDataset::
read_random_crop; the Loader's random_crop), made by the reference's own code.

Imports openai/consistency_models' cm/image_datasets.py from a local copy (--ref, never committed
here; its blobfile and mpi4py imports stubbed as tools/gen_reference_folder_golden.py stubs them)
and replaces the `random` module it draws from with a recorder: randrange(start, stop) returns
start + a seeded uniform draw in [0, stop − start) and logs (stop − start, draw). Then
  - the reference's ImageDataset(random_crop=True, random_flip=False) reads every image of the
    committed tests/golden/reference_folder (cm's reference-folder test writes those with PIL) at
    sizes 16 and 8 (8 makes the large images halve with BOX first), three times each;
  - random_crop_arr crops a random square 16×16 RGB image and a 12×12 gray one to their own size
    (the case of a data set cm stores already cropped) five times each.
Writes --out/random_crop.npz:
  "crop_<k>"   u8 [size, size, C]: trial k's crop (the reference's float batch mapped back by
               (x + 1)·127.5, exact)
  "trials"     i64 [K, 3]: trial k's (source, size, image index): source 0 = the folder image of
               that index in the reference's file order (reference_folder.json), 1 = "square_rgb",
               2 = "square_gray"
  "draws"      i64 [K, 3, 2]: trial k's three draws as (n, value), value in [0, n)
  "square_rgb" u8 [16, 16, 3], "square_gray" u8 [12, 12]: the square sources

  python3 tools/gen_random_crop_golden.py --ref /path/to/consistency_models --out tests/golden
(needs numpy, pillow and torch: the reference's module imports torch's Dataset).
"""
import argparse
import json
import os
import sys
import types

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_reference_folder_golden import stub_modules  # noqa: E402


class Recorder:
    """Stands in for the `random` module inside image_datasets: seeded, and logs every draw."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.log = []

    def randrange(self, start, stop=None):
        if stop is None:
            start, stop = 0, start
        n = stop - start
        v = int(self.rng.integers(0, n))
        self.log.append((n, v))
        return start + v

    def random(self):
        raise AssertionError("random() drawn: random_flip must be off")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="a copy of openai/consistency_models")
    ap.add_argument("--out", required=True, help="tests/golden")
    args = ap.parse_args()
    stub_modules()
    sys.path.insert(0, args.ref)
    from cm import image_datasets  # the reference's code

    rec = Recorder(20261205)
    image_datasets.random = rec
    root = os.path.join(args.out, "reference_folder")
    with open(os.path.join(args.out, "reference_folder.json")) as f:
        files = [os.path.join(root, p) for p in json.load(f)["files"]]
    assert files == image_datasets._list_image_files_recursively(root), "file order changed"

    arrays, trials, draws = {}, [], []

    def record(source, size, index, arr):
        assert len(rec.log) == 3, rec.log
        arrays[f"crop_{len(trials)}"] = arr
        trials.append((source, size, index))
        draws.append(list(rec.log))
        rec.log.clear()

    for size in (16, 8):
        ds = image_datasets.ImageDataset(size, files, random_crop=True, random_flip=False)
        for index in range(len(files)):
            for _ in range(3):
                chw, _ = ds[index]
                x = (chw.astype(np.float64) + 1) * 127.5
                img = np.round(x)
                assert np.abs(x - img).max() < 1e-3
                record(0, size, index, img.astype(np.uint8).transpose(1, 2, 0))

    rng = np.random.default_rng(5)
    square_rgb = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    square_gray = rng.integers(0, 256, size=(12, 12), dtype=np.uint8)
    arrays["square_rgb"], arrays["square_gray"] = square_rgb, square_gray
    for source, sq in ((1, square_rgb), (2, square_gray)):
        for _ in range(5):
            arr = image_datasets.random_crop_arr(Image.fromarray(sq), sq.shape[0])
            record(source, sq.shape[0], 0, np.asarray(arr, dtype=np.uint8))

    arrays["trials"] = np.asarray(trials, dtype=np.int64)
    arrays["draws"] = np.asarray(draws, dtype=np.int64)
    np.savez(os.path.join(args.out, "random_crop.npz"), **arrays)
    print(f"{len(trials)} trials; draw ranges {sorted({n for d in draws for n, _ in d})}")


if __name__ == "__main__":
    main()
