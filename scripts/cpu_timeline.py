#!/usr/bin/env python3
"""Where a CPU decode step spends its time, from a DR_CPU_TIMELINE build.

usage: scripts/cpu_timeline.py BINARY RECORDS [--steps N] [--marker FN] [--list]

BINARY is the deltarun executable of a build configured with
-DDR_CPU_TIMELINE=ON and RECORDS the file it wrote when run with
DR_CPU_TIMELINE=RECORDS in its environment (src/util/threadpool.c): one line
per parallel job with its start, end, task count and task function (as an
offset from dr_pool_run, named here through `nm BINARY`).

Steps end at each job of the marker function (default am_task, the greedy
pick of the fast CPU backend; give another for models whose vocabulary is
too small to be picked in parallel). Over the last N whole steps it prints
the step's mean length, each task function's share of it and jobs per step,
and the share spent between jobs: work the calling thread does alone
(norms, preparing x, single-threaded ops) while the other threads wait.
--list also prints the jobs of the last step in order, with the gap before
each.

    cmake -S . -B build-tl -DDR_CUDA=OFF -DDR_CPU_TIMELINE=ON && cmake --build build-tl
    DR_CPU_TIMELINE=/tmp/tl.txt build-tl/deltarun bench --synthetic \\
        bench/configs/qwen3.5-0.8b.json --quant q4 --quant-random -p 16 -n 64
    scripts/cpu_timeline.py build-tl/deltarun /tmp/tl.txt --list
"""
import argparse
import collections
import subprocess
import sys


def symbols(binary):
    """Address -> name of the binary's functions, and dr_pool_run's address."""
    out = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    names = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 3 and f[1] in "tT":
            names[int(f[0], 16)] = f[2]
    base = [a for a, n in names.items() if n == "dr_pool_run"]
    if not base:
        sys.exit(f"{binary}: no dr_pool_run symbol (stripped, or not deltarun?)")
    return names, base[0]


def read_jobs(path, names, base):
    jobs = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            t0, t1, n, off = line.split()
            addr = base + int(off)
            jobs.append((float(t0), float(t1), int(n), names.get(addr, hex(addr))))
    return jobs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary")
    ap.add_argument("records")
    ap.add_argument("--steps", type=int, default=10, help="whole steps to average (the last N)")
    ap.add_argument("--marker", default="am_task", help="task function of the job that ends a step")
    ap.add_argument("--list", action="store_true", help="print the last step's jobs in order")
    a = ap.parse_args()
    names, base = symbols(a.binary)
    jobs = read_jobs(a.records, names, base)
    ends = [i for i, j in enumerate(jobs) if j[3] == a.marker]
    if len(ends) < 2:
        sys.exit(f"{a.records}: fewer than two {a.marker} jobs; pass --marker (functions seen: "
                 f"{', '.join(sorted(set(j[3] for j in jobs)))})")
    n = min(a.steps, len(ends) - 1)
    i0, i1 = ends[-n - 1], ends[-1]
    span = jobs[i1][1] - jobs[i0][1]
    busy = collections.defaultdict(float)
    count = collections.Counter()
    gaps = 0.0
    for i in range(i0 + 1, i1 + 1):
        t0, t1, _, fn = jobs[i]
        busy[fn] += t1 - t0
        count[fn] += 1
        gaps += t0 - jobs[i - 1][1]
    print(f"{n} steps (jobs {i0 + 1}..{i1} of {len(jobs)}): {1e3 * span / n:.2f} ms a step, "
          f"{(i1 - i0) / n:.0f} jobs a step")
    print(f"  {'between jobs (calling thread alone)':36s} {1e3 * gaps / n:8.3f} ms {100 * gaps / span:5.1f}%")
    for fn, t in sorted(busy.items(), key=lambda x: -x[1]):
        print(f"  {fn:36s} {1e3 * t / n:8.3f} ms {100 * t / span:5.1f}%  {count[fn] / n:.0f} jobs a step")
    if a.list:
        print("the last step, job by job (us):")
        for i in range(ends[-2] + 1, i1 + 1):
            t0, t1, nt, fn = jobs[i]
            print(f"  gap {1e6 * (t0 - jobs[i - 1][1]):7.1f} | {fn:20s} {nt:4d} tasks {1e6 * (t1 - t0):8.1f}")


if __name__ == "__main__":
    main()
