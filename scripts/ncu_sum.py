#!/usr/bin/env python3
"""Sum ncu per-launch kernel times (ncu --csv --metrics gpu__time_duration.sum)
by kernel name. Usage: ncu_sum.py LOG [steps] - prints each kernel's launch
count, total and per-step time (total / steps), largest first."""
import csv
import sys


def main():
    path = sys.argv[1]
    steps = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    rows = []
    with open(path, newline="", errors="replace") as f:
        lines = [ln for ln in f if ln.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "ns")
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}.get(unit, 1e-3)
        name = r["Kernel Name"]
        short = name.split("(")[0][:70]
        rows.append((short, r.get("Grid Size", ""), r.get("Block Size", ""), v * scale))
    agg = {}
    for short, grid, block, us in rows:
        k = (short, grid, block)
        n, t = agg.get(k, (0, 0.0))
        agg[k] = (n + 1, t + us)
    total = sum(t for _, t in agg.values())
    print("launches %d, total %.1f us, per step %.1f us (steps %g)" % (len(rows), total, total / steps, steps))
    for (short, grid, block), (n, t) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:45]:
        print("%9.1f us/step %6.1f%% n=%5d avg %8.2f us  %-60s grid %s block %s" %
              (t / steps, 100 * t / total if total else 0, n, t / n, short, grid, block))


if __name__ == "__main__":
    main()
