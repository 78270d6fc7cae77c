#!/usr/bin/env python3
"""Per-block spread of one kernel in a DR_CUDA_TIMELINE record file: for
each launch of KERNEL (the last --launches of them), every block's start,
PDL wait, DR_TL_MARK points and end in us after the launch's first wait
return, grouped by blockIdx.y (rows of the grid; --gridx gives the grid's
width, else all blocks are one row), as percentiles over the blocks (p0
p50 p90 p100). Session 27 (docs/CUDA.md): where the routing
gate/up kernel's blocks spend the time before their dot.

usage: scripts/timeline_blocks.py RECORDS KERNEL [--gridx N] [--launches N]
"""
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timeline  # noqa: E402


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().split("\n")[-1], file=sys.stderr)
        return 2
    path, kernel = argv[1], argv[2]
    gx = int(argv[argv.index("--gridx") + 1]) if "--gridx" in argv else 0
    nl = int(argv[argv.index("--launches") + 1]) if "--launches" in argv else 40
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "ops", "cuda")
    names = timeline.kernel_names(src)
    by = defaultdict(list)
    data = open(path, "rb").read()
    for off in range(0, len(data) - timeline.REC.size + 1, timeline.REC.size):
        r = timeline.REC.unpack_from(data, off)
        if names.get(r[8]) == kernel:
            by[r[0]].append(r)
    if not by:
        print("%s: no records of kernel %s (a -DDR_CUDA_TIMELINE=ON build's file?)" % (path, kernel), file=sys.stderr)
        return 1
    runs = []
    for rs in by.values():  # a %gridid repeats across graph replays: split at gaps of > 100 us, as timeline.py
        rs.sort(key=lambda r: r[1])
        cur = [rs[0]]
        for r in rs[1:]:
            if r[1] - cur[-1][1] > 100000:
                runs.append(cur)
                cur = []
            cur.append(r)
        runs.append(cur)
    full = max(len(rs) for rs in runs)
    runs = sorted((rs for rs in runs if len(rs) == full), key=lambda rs: rs[0][1])[-nl:]
    cols = ["start", "wait", "m0", "m1", "m2", "m3", "end"]
    acc = defaultdict(lambda: defaultdict(list))
    for rs in runs:
        ref = min(r[2] for r in rs if r[2]) if any(r[2] for r in rs) else min(r[1] for r in rs)
        for r in rs:
            row = r[9] // gx if gx else 0
            vals = [r[1], r[2], r[4], r[5], r[6], r[7], r[3]]
            for c, v in zip(cols, vals):
                if v:
                    acc[row][c].append((v - ref) / 1e3)
    print("%s: %d launches of %d blocks; us after the launch's first wait; p0 p50 p90 p100" %
          (kernel, len(runs), len(runs[0]) if runs else 0))
    for row in sorted(acc):
        line = "  y=%-3d" % row
        for c in cols:
            v = acc[row][c]
            line += "  %s %s" % (c, "/".join("%.1f" % pct(v, p) for p in (0, .5, .9, 1)) if v else "-")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
