#!/usr/bin/env python3
"""Writes the safetensors files that tests/test_safetensors.cpp reads (tests/golden/safetensors_*).

  safetensors_handmade.safetensors      every cm dtype, a 0-d and a zero-size tensor, names that need
                                        JSON escaping, two metadata entries; laid out byte by byte
                                        here (struct + json) following the reference writer: compact
                                        JSON, "__metadata__" first (keys sorted), tensors by descending
                                        dtype rank then name, header space-padded to a multiple of 8.
  safetensors_extra_dtypes.safetensors  I8 I16 U16 U32 U64 (no cm equivalent), plus F64 and BOOL at
                                        unaligned offsets: header not padded, tensors in name order.
                                        Valid, but not what the reference writer makes.
  safetensors_reference.safetensors     the tensors of the handmade file written by the `safetensors`
                                        package itself (metadata {"format": "pt"}), when it imports;
                                        otherwise the committed file is left as it is.

Values are given as bit patterns so that the C++ test can rebuild the very same tensors and compare
files byte for byte. Usage: /usr/bin/python3 tools/gen_safetensors_goldens.py --out tests/golden
(no third-party package is needed for the first two files).
"""
import argparse
import json
import os
import struct

# The reference's Dtype enum order (safetensors/src/tensor.rs); its writer sorts by descending rank.
RANK = {"BOOL": 0, "U8": 1, "I8": 2, "F8_E5M2": 3, "F8_E4M3": 4, "I16": 5, "U16": 6, "F16": 7,
        "BF16": 8, "I32": 9, "U32": 10, "F32": 11, "F64": 12, "I64": 13, "U64": 14}
PACK = {"BOOL": "B", "U8": "B", "I8": "b", "I16": "h", "U16": "H", "F16": "H", "BF16": "H",
        "I32": "i", "U32": "I", "F32": "I", "F64": "Q", "I64": "q", "U64": "Q"}

# name -> (dtype, shape, values); float values are bit patterns (unsigned ints of the element size).
TENSORS = {
    "f32": ("F32", [2, 4], [0x00000000, 0x80000000, 0x3FC00000, 0xC0100000,   # 0, -0, 1.5, -2.25
                            0x7F7FFFFF, 0x00000001, 0x7F800000, 0x7FC00000]),  # max, min subnormal, inf, nan
    "f64": ("F64", [3], [0x3FD5555555555555, 0xFFE1CCF385EBC8A0, 0x0000000000000001]),  # 1/3, -1e308, 5e-324
    "f16": ("F16", [5], [0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00]),  # 1, -2, 65504, 2^-24, inf
    "bf16": ("BF16", [5], [0x3F80, 0xC040, 0x7F7F, 0x0001, 0xFF80]),  # 1, -3, max, min subnormal, -inf
    "i32": ("I32", [2, 2], [0, -1, 2147483647, -2147483648]),
    "i64": ("I64", [3], [0, -9223372036854775808, 9223372036854775807]),
    "u8": ("U8", [4], [0, 1, 127, 255]),
    "bool": ("BOOL", [3], [1, 0, 1]),
    "scalar": ("F32", [], [0x40200000]),  # 2.5, 0-d
    "empty": ("F32", [0, 3], []),
    "nested.name.\u00e9": ("F64", [1], [0xBFE0000000000000]),  # -0.5, non-ASCII name
    'q"\\': ("I32", [1], [7]),  # a name JSON must escape
}
METADATA = {"format": "pt", "note": 'line1\nline2 "q" \u00e9'}

EXTRA = {  # name order, unaligned on purpose
    "a_i8": ("I8", [3], [-128, -1, 127]),
    "b_f64": ("F64", [2], [0x3FF8000000000000, 0xC004000000000000]),  # 1.5, -2.5 at offset 3
    "c_i16": ("I16", [3], [-32768, 300, 32767]),
    "d_u16": ("U16", [3], [0, 40000, 65535]),
    "e_bool": ("BOOL", [2], [0, 1]),
    "f_u32": ("U32", [2], [7, 4000000000]),
    "g_u64": ("U64", [3], [1, 9223372036854775807, 18446744073709551615]),
}


def data_bytes(dtype, values):
    return struct.pack("<%d%s" % (len(values), PACK[dtype]), *values)


def serialize(tensors, metadata, reference_layout=True):
    """tensors: name -> (dtype, shape, values). Returns the file's bytes."""
    names = list(tensors)
    if reference_layout:
        names.sort(key=lambda n: (-RANK[tensors[n][0]], n.encode("utf-8")))
    parts = []
    if metadata:
        parts.append('"__metadata__":' + json.dumps(dict(sorted(metadata.items())), separators=(",", ":"),
                                                    ensure_ascii=False))
    buffer = b""
    for n in names:
        dtype, shape, values = tensors[n]
        data = data_bytes(dtype, values)
        info = {"dtype": dtype, "shape": shape, "data_offsets": [len(buffer), len(buffer) + len(data)]}
        parts.append(json.dumps(n, ensure_ascii=False) + ":" + json.dumps(info, separators=(",", ":")))
        buffer += data
    header = ("{" + ",".join(parts) + "}").encode("utf-8")
    if reference_layout:
        header += b" " * ((8 - len(header) % 8) % 8)
    return struct.pack("<Q", len(header)) + header + buffer


def reference_file(path):
    """The handmade tensors written by the safetensors package, when it imports."""
    try:
        import numpy as np
        import torch
        from safetensors.torch import save_file
    except ImportError as e:
        print("skipping %s: %s" % (path, e))
        return
    np_types = {"F32": np.uint32, "F64": np.uint64, "F16": np.uint16, "BF16": np.uint16}
    view_as = {"F32": (np.int32, torch.float32), "F64": (np.int64, torch.float64),
               "F16": (np.int16, torch.float16), "BF16": (np.int16, torch.bfloat16)}
    plain = {"I32": torch.int32, "I64": torch.int64, "U8": torch.uint8, "BOOL": torch.bool}
    out = {}
    for n, (dtype, shape, values) in TENSORS.items():
        if dtype in view_as:
            signed, tdt = view_as[dtype]
            arr = np.array(values, dtype=np_types[dtype]).view(signed).reshape(shape)
            out[n] = torch.from_numpy(arr.copy()).view(tdt)
        else:
            out[n] = torch.tensor(values, dtype=plain[dtype]).reshape(shape)
    save_file(out, path, metadata={"format": "pt"})
    print("wrote", path, "with the safetensors package")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/golden")
    args = ap.parse_args()
    with open(os.path.join(args.out, "safetensors_handmade.safetensors"), "wb") as f:
        f.write(serialize(TENSORS, METADATA))
    with open(os.path.join(args.out, "safetensors_extra_dtypes.safetensors"), "wb") as f:
        f.write(serialize(EXTRA, {}, reference_layout=False))
    reference_file(os.path.join(args.out, "safetensors_reference.safetensors"))


if __name__ == "__main__":
    main()
