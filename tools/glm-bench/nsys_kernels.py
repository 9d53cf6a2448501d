#!/usr/bin/env python3
"""Per-kernel durations and the idle gaps before them, from an Nsight Systems GPU trace.

Input: the CSV of `nsys stats --report cuda_gpu_trace --format csv REPORT` (one row per kernel or
memory operation; traced with --cuda-graph-trace=node so the kernels inside CUDA graphs appear one
by one), or the same columns from `glm-bench --kernel_trace FILE` (CUPTI, where nsys is
missing). Kernels are grouped by a short name and their grid, so the 256-wide decode step's
kernels (their own grids) stand apart from the same kernels in prefill steps. For each group:
launches, mean duration, and the mean gap between the previous operation's end on the same
stream and this kernel's start (launch latency plus the wait for its predecessor's drain). A first
line sums the timeline: operation time against the span it covers (pauses of 1 ms or more, a
host-side sync or tuning, left out), so the idle share is what launch gaps and host time cost.

Usage: nsys_kernels.py TRACE.csv [--top N] [--min-count C]
"""
import argparse
import csv
import re
import sys
from collections import defaultdict


def short_name(name):
    """'void glm::cuda::(anon)::AddRmsNormVecKernel<bf16, ...>(...)' -> 'AddRmsNormVecKernel<...>'."""
    name = re.sub(r"^void\s+", "", name.strip()).replace("(anonymous namespace)::", "")
    name = re.sub(r"^(\w+::)+", "", name)
    head = name.split("(", 1)[0] if not name.startswith("[") else name  # "[CUDA memcpy ...]"
    return head[:90]


def find(header, *candidates):
    for c in candidates:
        for i, h in enumerate(header):
            if h.strip().lower() == c.lower():
                return i
    raise KeyError("none of %s in the CSV header %s" % (candidates, header))


def load(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.strip()]
    # nsys stats may print notes before the CSV: start at the header line.
    start = next((i for i, l in enumerate(lines) if "Start (ns)" in l and "Name" in l), None)
    if start is None:
        raise ValueError("%s: no cuda_gpu_trace header (Start (ns), ..., Name)" % path)
    rows = list(csv.reader(lines[start:]))
    header, body = rows[0], rows[1:]
    col = {
        "start": find(header, "Start (ns)"),
        "dur": find(header, "Duration (ns)"),
        "gx": find(header, "GrdX"),
        "gy": find(header, "GrdY"),
        "gz": find(header, "GrdZ"),
        "strm": find(header, "Strm", "Stream"),
        "name": find(header, "Name"),
    }
    ops = []
    for r in body:
        if len(r) <= max(col.values()):
            continue
        try:
            start_ns, dur_ns = int(float(r[col["start"]])), int(float(r[col["dur"]]))
        except ValueError:
            continue
        grid = tuple(r[col[k]].strip() for k in ("gx", "gy", "gz"))
        is_kernel = all(g not in ("", "0") for g in grid)
        ops.append((start_ns, dur_ns, r[col["strm"]], grid if is_kernel else None, r[col["name"]]))
    ops.sort()
    return ops


def summarize(ops):
    groups = defaultdict(lambda: [0, 0, 0, 0])  # count, total dur, total gap, gaps counted
    last_end = {}
    for start, dur, stream, grid, name in ops:
        if grid is not None:
            key = (short_name(name), "x".join(grid))
            g = groups[key]
            g[0] += 1
            g[1] += dur
            if stream in last_end:
                gap = start - last_end[stream]
                if 0 <= gap < 1_000_000:  # a host-side pause (sync, tuning) is not a launch gap
                    g[2] += gap
                    g[3] += 1
        last_end[stream] = max(last_end.get(stream, 0), start + dur)
    return groups


def busy(ops):
    """(operation ns, span ns): spans split where the GPU idles 1 ms or more."""
    work = span = 0
    begin = end = None
    for start, dur, _stream, _grid, _name in ops:
        if end is not None and start - end >= 1_000_000:
            span += end - begin
            begin = None
        if begin is None:
            begin, end = start, start
        work += dur
        end = max(end, start + dur)
    if begin is not None:
        span += end - begin
    return work, span


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--min-count", type=int, default=1)
    args = ap.parse_args()
    try:
        ops = load(args.trace)
        groups = summarize(ops)
    except (OSError, ValueError, KeyError) as e:
        sys.exit("nsys_kernels.py: %s" % e)
    if not groups:
        sys.exit("no kernels in %s" % args.trace)
    total = sum(g[1] for g in groups.values())
    work, span = busy(ops)
    print("timeline: %.3f ms of GPU operations over %.3f ms: busy %.1f%%, idle %.3f ms" %
          (work / 1e6, span / 1e6, 100.0 * work / max(span, 1), (span - work) / 1e6))
    print("%-90s %-14s %8s %10s %9s %7s" % ("kernel", "grid", "launches", "mean us", "gap us", "share"))
    for (name, grid), (n, dur, gap, ngap) in sorted(groups.items(), key=lambda kv: -kv[1][1])[: args.top]:
        if n < args.min_count:
            continue
        print("%-90s %-14s %8d %10.2f %9s %6.1f%%" % (name, grid, n, dur / n / 1e3,
                                                    "%.2f" % (gap / ngap / 1e3) if ngap else "-",
                                                    100.0 * dur / total))


if __name__ == "__main__":
    main()
