#!/usr/bin/env python3
"""Writes Fashion-MNIST in CIFAR-10's binary layout, as a stand-in where CIFAR-10 itself is absent.

Each 28x28 grey image is padded by 2 pixels of black to 32x32 and repeated over the three colour
planes; each record is 1 label byte + 3072 pixel bytes (R plane, G plane, B plane), as in
cifar-10-batches-bin. The records are split evenly over data_batch_1..5.bin and test_batch.bin holds
the first 1000. The CIFAR-10 configs (configs/cifar10-*.json) then run unchanged with
--set data.dataset=cifar10:DIR:train, which is how cm's CIFAR-sized training was first exercised on a
GPU machine that cannot download CIFAR-10. Standard library only.

  python3 tools/fashion_as_cifar10.py IMAGES.gz LABELS.gz OUT_DIR [--count N]
"""
import argparse
import gzip
import os
import struct


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    (got,) = struct.unpack(">I", data[:4])
    if got != magic:
        raise SystemExit(f"{path}: magic {got:#x}, expected {magic:#x}")
    return data


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images")
    p.add_argument("labels")
    p.add_argument("out_dir")
    p.add_argument("--count", type=int, default=0, help="use the first N images (default all)")
    a = p.parse_args()

    img = read_idx(a.images, 0x00000803)
    lab = read_idx(a.labels, 0x00000801)
    n, rows, cols = struct.unpack(">III", img[4:16])
    (nl,) = struct.unpack(">I", lab[4:8])
    if (rows, cols) != (28, 28) or nl != n:
        raise SystemExit(f"unexpected sizes: {n} images of {rows}x{cols}, {nl} labels")
    if a.count:
        n = min(n, a.count)
    pixels, labels = img[16:], lab[8:]

    records = []
    for i in range(n):
        src = pixels[i * 784:(i + 1) * 784]
        plane = bytearray(1024)
        for r in range(28):
            plane[(r + 2) * 32 + 2:(r + 2) * 32 + 30] = src[r * 28:(r + 1) * 28]
        records.append(bytes([labels[i]]) + bytes(plane) * 3)

    os.makedirs(a.out_dir, exist_ok=True)
    per = (n + 4) // 5
    for b in range(5):
        with open(os.path.join(a.out_dir, f"data_batch_{b + 1}.bin"), "wb") as f:
            f.write(b"".join(records[b * per:(b + 1) * per]))
    with open(os.path.join(a.out_dir, "test_batch.bin"), "wb") as f:
        f.write(b"".join(records[:1000]))
    print(f"wrote {n} images as CIFAR-10 binary batches to {a.out_dir}")


if __name__ == "__main__":
    main()
