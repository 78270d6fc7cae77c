#!/usr/bin/env python3
"""Top SASS lines of an ncu source-page CSV (`ncu -i REP --page source --csv
--print-source sass`) by sampled warp stalls: each line's share of all
samples, its largest stall reasons, and the instruction.
Usage: ncu_src_top.py CSV [N]"""
import csv
import sys


def num(s):
    try:
        return float(str(s).replace(",", ""))
    except ValueError:
        return 0.0


def main():
    path, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"#') or l.startswith('"Address')), 0)
    rows = list(csv.reader(lines[start:]))
    head, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    print("columns:", " | ".join(head))
    tot_col = next((i for i, h in enumerate(head) if h.startswith("Warp Stall Sampling (All")), None)
    src_col = next((i for i, h in enumerate(head) if h == "Source"), 1)
    if tot_col is None:
        print("no stall-sampling column")
        return
    reason = [i for i, h in enumerate(head) if h.startswith("stall_") or "Stall" in h and i != tot_col
              and "Not-issued" not in h]
    total = sum(num(r[tot_col]) for r in body) or 1.0
    print(f"{len(body)} SASS lines, {total:.0f} samples")
    sums = sorted(((sum(num(r[c]) for r in body), head[c]) for c in reason if "Not Issued" not in head[c]),
                  reverse=True)
    print("by reason: " + ", ".join(f"{h.replace('stall_', '')} {100 * v / total:.1f}%" for v, h in sums
                                    if v >= 0.01 * total))
    order = sorted(range(len(body)), key=lambda i: -num(body[i][tot_col]))
    for i in sorted(order[:n]):
        r = body[i]
        rs = sorted(((num(r[c]), head[c]) for c in reason), reverse=True)[:3]
        why = ", ".join(f"{h.replace('stall_', '')} {v:.0f}" for v, h in rs if v > 0)
        print(f"{i:5d} {100 * num(r[tot_col]) / total:5.1f}%  {r[src_col][:70]:70s} {why}")


if __name__ == "__main__":
    main()
