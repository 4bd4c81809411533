#!/usr/bin/env python3
"""Sums Nsight Compute's kernel times by kernel, from `ncu --metrics gpu__time_duration.sum --csv
--page raw` output (tools/gpu_device_run.sh's profile stage writes it as profile.csv).

  python3 tools/kernel_times.py profile.csv [--top 30] [--full-names]

Prints the total GPU time, then each kernel family's share: time, calls, mean time per call. Names
are cut at the template arguments unless --full-names; cm's own elementwise kernels keep their
scalar functor (sop::Add, sop::Silu, ...) so that the op shows.
"""
import argparse
import collections
import csv
import io
import re


def family(name, full):
    if full:
        return name
    op = re.search(r"sop::(\w+)", name)
    base = re.sub(r"^void\s+", "", name.replace("(anonymous namespace)::", "").replace("<unnamed>::", ""))
    base = re.split(r"[<(]", base, maxsplit=1)[0].strip()
    base = re.sub(r"^cm::(cuda_impl::)?", "", base)
    return f"{base}[{op.group(1)}]" if op else base


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--full-names", action="store_true")
    a = p.parse_args()
    text = open(a.csv, encoding="utf-8", errors="replace").read()
    start = text.find('"ID","Process ID"')
    if start < 0:
        raise SystemExit(f"{a.csv}: no ncu CSV header found")
    rows = list(csv.reader(io.StringIO(text[start:])))
    header, rows = rows[0], rows[1:]
    name_col = header.index("Kernel Name")
    time_col = header.index("gpu__time_duration.sum")
    times = collections.defaultdict(float)
    calls = collections.Counter()
    total = 0.0
    unit_scale = 1.0
    for r in rows:
        if len(r) <= time_col:
            continue
        try:
            t = float(r[time_col].replace(",", ""))
        except ValueError:  # the units row ("nsecond", "usecond", ...)
            u = r[time_col].strip()
            unit_scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "ns": 1e-3, "us": 1.0}.get(u, unit_scale)
            continue
        t *= unit_scale  # microseconds
        f = family(r[name_col], a.full_names)
        times[f] += t
        calls[f] += 1
        total += t
    print(f"{sum(calls.values())} kernels, {total / 1e3:.2f} ms of GPU time")
    print(f"{'share':>6} {'ms':>9} {'calls':>6} {'us/call':>8}  kernel")
    for f, t in sorted(times.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"{100 * t / total:5.1f}% {t / 1e3:9.3f} {calls[f]:6d} {t / calls[f]:8.1f}  {f}")


if __name__ == "__main__":
    main()
