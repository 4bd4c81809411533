#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<name>/ (Python's standard
library only): small valid files of each format, made the way the reference tools write them
(zipfile for .npz and EDM zips, NumPy's .npy layout, libpng-style PNG chunks), plus broken variants
(truncated, bad magic, inconsistent sizes). Regression inputs of findings are added by hand as
corpus/<name>/regress-*; this script never removes files. Run from anywhere:
    python3 tests/fuzz/make_seeds.py
"""
import gzip
import io
import json
import os
import shutil
import struct
import zipfile
import warnings
import zlib

warnings.filterwarnings("ignore", "Duplicate name")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


def put(name, fname, data):
    d = os.path.join(CORPUS, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, fname), "wb") as f:
        f.write(data)


def npy(descr, shape, data, fortran=False, major=1):
    shape_s = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape_s)
    pre = 10 if major == 1 else 12
    d += " " * ((64 - (pre + len(d) + 1) % 64) % 64) + "\n"
    head = b"\x93NUMPY" + bytes([major, 0])
    head += struct.pack("<H", len(d)) if major == 1 else struct.pack("<I", len(d))
    return head + d.encode() + data


def zip_bytes(entries, method=zipfile.ZIP_STORED):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", method) as z:
        for name, data in entries:
            z.writestr(name, data)
    return b.getvalue()


def chunk(t, data):
    return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))


def png(w, h, depth, color, rows, extra=(), interlace=0):
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace))
    for t, d in extra:
        out += chunk(t, d)
    raw = b"".join(b"\x00" + r for r in rows)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def rgb_png(w, h, seed=0):
    return png(w, h, 8, 2, [bytes((seed + 7 * x + 13 * y + c) % 256 for x in range(w) for c in range(3)) for y in range(h)])


# ---- safetensors ----------------------------------------------------------------------------
def st(header, buf):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + buf


for f in ["safetensors_reference.safetensors", "safetensors_handmade.safetensors",
          "safetensors_extra_dtypes.safetensors"]:
    with open(os.path.join(ROOT, "tests/golden", f), "rb") as g:
        put("safetensors", f, g.read())
put("safetensors", "f32_2x2", st({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
                                   struct.pack("<4f", 1, 2, 3, 4)))
put("safetensors", "meta_and_three",
    st({"__metadata__": {"format": "pt"}, "a": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]},
        "b": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [16, 20]},
        "c": {"dtype": "BOOL", "shape": [3], "data_offsets": [20, 23]}},
       struct.pack("<2q", -1, 7) + b"\x80\x3f\x00\x40" + b"\x01\x00\x01"))
put("safetensors", "u32_empty", st({"e": {"dtype": "U32", "shape": [0, 3], "data_offsets": [0, 0]},
                                     "u": {"dtype": "U32", "shape": [1], "data_offsets": [0, 4]}},
                                    struct.pack("<I", 4000000000)))
put("safetensors", "bad_offsets", st({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12))
put("safetensors", "truncated", st({"w": {"dtype": "F64", "shape": [4], "data_offsets": [0, 32]}}, b"\0" * 20))
put("safetensors", "huge_len", struct.pack("<Q", 1 << 60) + b"{}")
put("safetensors", "short", b"\x02\0\0")

# ---- npz / npy ------------------------------------------------------------------------------
for f in ["npz_numpy_uint16.npz", "npz_not_npy.npz", "fid_stats_numpy.npz", "npz_numpy_mixed.npz"]:
    with open(os.path.join(ROOT, "tests/golden", f), "rb") as g:
        put("npz", f, g.read())
data = npy("|u1", (4, 12), bytes(range(48)))
labels = npy("<i8", (4,), struct.pack("<4q", 1, 1000, 5, 2))
put("npz", "imagenet_stored.npz", zip_bytes([("data.npy", data), ("labels.npy", labels)]))
put("npz", "imagenet_deflated.npz", zip_bytes([("data.npy", data), ("labels.npy", labels)], zipfile.ZIP_DEFLATED))
put("npz", "fortran_f4.npz", zip_bytes([("a.npy", npy("<f4", (2, 3), struct.pack("<6f", *range(6)), True)),
                                         ("b.npy", npy("|b1", (3,), b"\x01\x00\x01", major=2))]))
put("npz", "data.npy", data)
put("npz", "labels_v3.npy", npy("<i4", (2,), struct.pack("<2i", 1, 2), major=3))
put("npz", "not_zip", b"PK\x03\x04 not really")

# ---- IDX (u32 LE length of the images file, images, labels) ---------------------------------
imgs = struct.pack(">IIII", 0x803, 3, 2, 2) + bytes(range(12))
labs = struct.pack(">II", 0x801, 3) + bytes([0, 9, 4])
put("idx", "raw", struct.pack("<I", len(imgs)) + imgs + labs)
gi, gl = gzip.compress(imgs, mtime=0), gzip.compress(labs, mtime=0)
put("idx", "gzip", struct.pack("<I", len(gi)) + gi + gl)
put("idx", "gzip_two_members", struct.pack("<I", 2 * len(gi)) + gzip.compress(imgs[:9], mtime=0) +
    gzip.compress(imgs[9:], mtime=0) + gl)
put("idx", "count_mismatch", struct.pack("<I", len(imgs)) + imgs + struct.pack(">II", 0x801, 2) + b"\0\1")
put("idx", "bad_magic", struct.pack("<I", 16) + struct.pack(">IIII", 0x802, 1, 1, 1) + labs)
put("idx", "huge_header", struct.pack("<I", 16) + struct.pack(">IIII", 0x803, 0xffffffff, 0xffffffff, 0xffff) + labs)

# ---- CIFAR-10 binary batches ----------------------------------------------------------------
rec = lambda label, s: bytes([label]) + bytes((s + i) % 256 for i in range(3072))
put("cifar10", "two_records", rec(3, 0) + rec(9, 5))
put("cifar10", "label_10", rec(10, 0))
put("cifar10", "truncated", rec(1, 0)[:3000])
put("cifar10", "empty", b"")

# ---- PNG --------------------------------------------------------------------------------------
put("png", "rgb_3x2.png", rgb_png(3, 2))
put("png", "gray8.png", png(2, 2, 8, 0, [b"\x00\xff", b"\x80\x40"]))
put("png", "gray1.png", png(9, 1, 1, 0, [b"\xa5\x80"]))
put("png", "gray4.png", png(3, 1, 4, 0, [b"\x1f\x80"]))
put("png", "gray16.png", png(1, 2, 16, 0, [b"\x12\x34", b"\xff\xff"]))
put("png", "rgba.png", png(1, 1, 8, 6, [b"\x01\x02\x03\x04"]))
put("png", "gray_alpha16.png", png(1, 1, 16, 4, [b"\x01\x02\x03\x04"]))
put("png", "palette_trns.png", png(2, 1, 8, 3, [b"\x00\x01"], [(b"PLTE", b"\xff\x00\x00\x00\xff\x00"), (b"tRNS", b"\x80")]))
put("png", "interlaced.png", png(1, 1, 8, 0, [b"\x07"], interlace=1))
p = rgb_png(3, 2)
put("png", "truncated.png", p[:len(p) - 15])
put("png", "bad_crc.png", p[:20] + bytes([p[20] ^ 1]) + p[21:])

# ---- ZIP archives (EDM data set zips) ---------------------------------------------------------
labels_json = json.dumps({"labels": [["00000/img00000000.png", 1], ["00000/img00000001.png", 0]]}).encode()
edm = [("00000/", b""), ("00000/img00000000.png", rgb_png(2, 2, 0)), ("00000/img00000001.png", rgb_png(2, 2, 9)),
       ("dataset.json", labels_json)]
put("zip", "edm_stored.zip", zip_bytes(edm))
put("zip", "edm_deflated.zip", zip_bytes(edm, zipfile.ZIP_DEFLATED))
put("zip", "edm_null_labels.zip", zip_bytes(edm[:3] + [("dataset.json", b'{"labels": null}')]))
put("zip", "jpg_entry.zip", zip_bytes([("a.jpg", b"\xff\xd8")]))
put("zip", "empty.zip", zip_bytes([]))
z = zip_bytes([("a.bin", b"hello" * 20)], zipfile.ZIP_DEFLATED)
put("zip", "truncated.zip", z[:-30])

# ---- run configurations -----------------------------------------------------------------------
for f in sorted(os.listdir(os.path.join(ROOT, "configs"))):
    with open(os.path.join(ROOT, "configs", f), "rb") as g:
        put("config", f, g.read())
put("config", "empty_object.json", b"{}")
put("config", "unknown_key.json", b'{"mode": "ct", "trian": {"steps": 10}}')
put("config", "wrong_types.json", b'{"mode": "cd", "train": {"steps": "ten", "lr": -1, "ema": [2]}, "seed": -3}')
put("config", "not_json.json", b'{"mode": ')

# ---- EDM dataset.json -------------------------------------------------------------------------
put("dataset_json", "labels.json", labels_json)
put("dataset_json", "null.json", b'{"labels": null}')
put("dataset_json", "missing_image.json", b'{"labels": [["00000/img00000000.png", 3]]}')
put("dataset_json", "wrong_types.json", b'{"labels": [["00000/img00000000.png", 1.5], [2, 3]]}')
put("dataset_json", "backslash.json", b'{"labels": [["00000\\\\img00000000.png", 1], ["00000/img00000001.png", 2]]}')
put("dataset_json", "not_json.json", b'{"labels": [')

# ---- regression inputs of the parser bugs of issue 11 -----------------------------------------
put("dataset_json", "regress-deep-nesting.json", b"[" * 5000 + b"]" * 5000)
put("config", "regress-deep-nesting.json", b'{"train": ' + b"[" * 5000 + b"]" * 5000 + b"}")
put("zip", "regress-duplicate-names.zip", zip_bytes([("a.png", rgb_png(1, 1)), ("dataset.json", b"{}"),
                                                    ("dataset.json", b'{"labels": null}')]))
put("npz", "regress-duplicate-names.npz", zip_bytes([("data.npy", data), ("labels.npy", labels),
                                                    ("data.npy", data)]))
bomb = bytearray(zip_bytes([("big.bin", b"\0" * 3000)], zipfile.ZIP_DEFLATED))
cd = bomb.rfind(b"PK\x01\x02")
bomb[cd + 24:cd + 28] = struct.pack("<I", 0xfffffff0)  # declared uncompressed size
put("zip", "regress-declared-size-bomb.zip", bytes(bomb))
huge = bytearray(png(30000, 4, 8, 0, [b"\0" * 30000] * 4))
huge[20:24] = struct.pack(">I", 30000)  # IHDR height
huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
put("png", "regress-huge-header.png", bytes(huge))
