#!/usr/bin/env python3
"""Read the records of a DR_CUDA_TIMELINE build (src/ops/cuda/timeline.cuh)
and print where a replayed decode step spends its time.

usage: scripts/timeline.py RECORDS [--steps N] [--src DIR]

A launch is the records of one %gridid and kernel (split where a graph
replay reuses the id); its start is its first block's start, "last st"
its last block's (late blocks could not be resident early), "wait" the
first return from its PDL wait (blank: it has none), its end the last
block's end. Decode steps begin at an embedding kernel (embed_kernel,
q2_embed_kernel, qembed_kernel); the steps with the most common launch count are kept and, position by position, the medians over
the last N of them are printed (us, relative to the step's first launch).
"adds" is how much later a launch ends than the ones before it: its share
of the critical path.
"""
import glob
import os
import re
import struct
import sys
from collections import Counter, defaultdict

REC = struct.Struct("<QQQQQQQQIIII")


def fnv(name):
    h = 2166136261
    for c in name.encode():
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return h


def kernel_names(src):
    """kid -> kernel name, by the same hash the device side uses."""
    names = {}
    for path in glob.glob(os.path.join(src, "*.cu")):
        base = os.path.basename(path)
        h = (fnv(base) << 16) & 0xFFFFFFFF
        lines = open(path).read().split("\n")
        last = "?"
        for i, line in enumerate(lines, 1):
            if "__global__" in line:
                text = " ".join(lines[i - 1:i + 3])
                text = re.sub(r"__launch_bounds__\s*\([^)]*\)", "", text)
                m = re.search(r"(\w+)\s*\(", text.split("__global__", 1)[1])
                last = m.group(1) if m else "?"
            if "DR_TL_SCOPE()" in line:
                names[(h | i) & 0xFFFFFFFF] = last
    return names


def launches(path):
    by = defaultdict(list)
    data = open(path, "rb").read()
    for off in range(0, len(data) - REC.size + 1, REC.size):
        g, t0, tw, t1, m0, m1, m2, m3, kid, blk, sm, nb = REC.unpack_from(data, off)
        by[g].append((t0, tw, t1, kid, nb, (m0, m1, m2, m3)))
    groups = []
    for rs in by.values():  # a %gridid that repeats (graph replays): split at gaps of > 100 us and kernel changes
        rs.sort()
        cur = [rs[0]]
        for r in rs[1:]:
            if r[0] - cur[-1][0] > 100000 or r[3] != cur[-1][3]:
                groups.append(cur)
                cur = []
            cur.append(r)
        groups.append(cur)
    out = []
    for rs in groups:
        tws = [r[1] for r in rs if r[1]]
        out.append(dict(kid=rs[0][3], nb=rs[0][4], t0=min(r[0] for r in rs), t0max=max(r[0] for r in rs),
                        tw=min(tws) if tws else None, t1=max(r[2] for r in rs),
                        marks=[max((r[5][k] for r in rs if r[5][k]), default=None) for k in range(4)]))
    out.sort(key=lambda l: l["t0"])
    return out


def med(v):
    v = sorted(v)
    return v[len(v) // 2] if v else None


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        return 2
    nsteps, src = 20, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "ops", "cuda")
    if "--steps" in args:
        nsteps = int(args[args.index("--steps") + 1])
    if "--src" in args:
        src = args[args.index("--src") + 1]
    names = kernel_names(src)
    ls = launches(args[0])
    for l in ls:
        l["name"] = names.get(l["kid"], "kid%x" % l["kid"])
    steps, cur = [], None
    for l in ls:
        if l["name"].endswith("embed_kernel"):
            cur = []
            steps.append(cur)
        if cur is not None:
            cur.append(l)
    if not steps:
        print("no embed_kernel launches: not a decode run?")
        return 1
    mode = Counter(len(s) for s in steps).most_common(1)[0][0]
    keep = [s for s in steps if len(s) == mode]
    periods = [b[0]["t0"] - a[0]["t0"] for a, b in zip(steps, steps[1:]) if len(a) == mode]
    keep = keep[-nsteps:]
    print("%d steps of %d launches (kept the last %d); step period median %.1f us" %
          (len(steps), mode, len(keep), (med(periods) or 0) / 1e3))
    print("%3s %-28s %5s %8s %8s %8s %8s %8s %8s" % ("#", "kernel", "blks", "start", "last st", "wait", "end", "adds",
                                                   "run"))
    per_kernel = defaultdict(float)
    prev_end = 0.0
    for i in range(mode):
        rows = [s[i] for s in keep]
        base = [s[0]["t0"] for s in keep]
        st = med([r["t0"] - b for r, b in zip(rows, base)]) / 1e3
        st1 = med([r["t0max"] - b for r, b in zip(rows, base)]) / 1e3  # last block's start: residency
        en = med([r["t1"] - b for r, b in zip(rows, base)]) / 1e3
        tw = [r["tw"] - b for r, b in zip(rows, base) if r["tw"]]
        wt = med(tw) / 1e3 if tw else None
        run = en - (wt if wt is not None else st)
        adds = en - prev_end
        prev_end = max(prev_end, en)
        per_kernel[rows[0]["name"]] += adds
        print("%3d %-28s %5d %8.1f %8.1f %8s %8.1f %8.1f %8.1f" % (i, rows[0]["name"][:28], rows[0]["nb"], st, st1,
              "%.1f" % wt if wt is not None else "-", en, adds, run))
    print("\ncritical-path time per kernel (sum of 'adds' over the step, us):")
    for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1]):
        print("  %-30s %8.1f" % (k, v))
    marks = defaultdict(list)
    for s_ in keep:
        for l in s_:
            if any(m is not None for m in l["marks"]):
                ref = l["tw"] if l["tw"] else l["t0"]
                marks[l["name"]].append([(m - ref) / 1e3 if m else None for m in l["marks"]] + [(l["t1"] - ref) / 1e3])
    if marks:
        print("\nDR_TL_MARK points, latest block, us after the first wait (or start); medians:")
        for k, v in marks.items():
            cols = []
            for i in range(5):
                xs = [r[i] for r in v if r[i] is not None]
                cols.append("%7.2f" % med(xs) if xs else "      -")
            print("  %-30s %s   (end)" % (k, " ".join(cols)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
