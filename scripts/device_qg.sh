#!/usr/bin/env bash
# One device call for the repacked 4/8-bit decode GEMV (docs/CUDA.md, "Decode
# round 4: quantized GEMV on a repacked layout"): build (sm_90a),
# test_cuda_quant on the repacked layout and on the file layout
# (DR_CUDA_QGEMV_V2=0), the GEMV kernel bench old vs new, end-to-end decode
# benches old vs new (same call), compute-sanitizer memcheck. Logs under $OUT.
# Usage: scripts/device_qg.sh [tests] [kern] [e2e] [q8] [memcheck] [tests_old]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests tests_old kern e2e}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
b="${QG_BUILD:-/tmp/qg-build}"
t0=$(date +%s)
dr_device_build "$b" test_cuda_quant deltarun_cli bench_cuda
echo "built in $(( $(date +%s) - t0 )) s"
SUM="$OUT/summary.txt"
: > "$SUM"
LIMIT="${QG_LIMIT:-100000}" # seconds: later steps are skipped past this (one device call)
left() { echo $(( LIMIT - ($(date +%s) - t0) )); }
if [[ "$what" == *tests* ]]; then
  timeout 200 "$b/tests/test_cuda_quant" > "$OUT/test_quant_v2.log" 2>&1; echo "test_cuda_quant v2 rc=$?" | tee -a "$SUM"
  grep -E "^FAIL|passed" "$OUT/test_quant_v2.log" | head -30 | tee -a "$SUM"
fi
if [[ "$what" == *tests_old* ]]; then
  DR_CUDA_QGEMV_V2=0 timeout 200 "$b/tests/test_cuda_quant" > "$OUT/test_quant_v1.log" 2>&1; echo "test_cuda_quant v1 (file layout) rc=$?" | tee -a "$SUM"
  grep -E "^FAIL|passed" "$OUT/test_quant_v1.log" | head -10 | tee -a "$SUM"
fi
if [[ "$what" == *kern* ]]; then
  for v in 1 0; do
    echo "== bench_cuda quant DR_CUDA_QGEMV_V2=$v" >> "$OUT/kern.log"
    DR_CUDA_QGEMV_V2=$v DR_BENCH_QUANT=1 timeout 70 "$b/tests/bench_cuda" >> "$OUT/kern.log" 2>&1 || echo "bench_cuda v2=$v rc=$?"
    echo "kern v2=$v done at $(( $(date +%s) - t0 )) s" | tee -a "$SUM"
  done
fi
cli="$b/deltarun"
one() { # label, then bench arguments
  local nm="$1"; shift
  local j
  if (( $(left) < 25 )); then echo "$nm: skipped (time)" | tee -a "$SUM"; return; fi
  j=$(timeout 60 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $* $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-18s decode %7.1f tok/s %5.0f GB/s of %5.0f floor %7.1f tok/s %5.1f%%  prefill %6.0f tok/s' % (sys.argv[2], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], d['floor_tok_s'], 100*d['floor_fraction'], d['prefill_tok_s']))" "$j" "$nm" 2>/dev/null | tee -a "$SUM" || { echo "$nm: failed" | tee -a "$SUM"; tail -2 "$OUT/bench_err.log"; }
}
C=bench/configs
if [[ "$what" == *e2e* ]]; then
  qs="q4"; [[ "$what" == *q8* ]] && qs="q4 q8"
  for q in $qs; do
    for v in 1 0; do
      export DR_CUDA_QGEMV_V2=$v
      one "9B-$q-v$v" --synthetic $C/qwen3.5-9b.json --quant $q --quant-random -p 128 -n 128
    done
    for v in 1 0; do
      export DR_CUDA_QGEMV_V2=$v
      one "35B-8L-$q-v$v" --synthetic $C/qwen3.5-35b-a3b.json --layers 8 --quant $q --quant-random -p 128 -n 128
    done
    for v in 1 0; do
      export DR_CUDA_QGEMV_V2=$v
      one "0.8B-$q-v$v" --synthetic $C/qwen3.5-0.8b.json --quant $q --quant-random -p 128 -n 128
    done
  done
  unset DR_CUDA_QGEMV_V2
fi
if [[ "$what" == *memcheck* ]]; then
  mt=$(left); (( mt > ${MC_T:-240} )) && mt=${MC_T:-240}; (( mt < 10 )) && mt=10
  echo "memcheck limit $mt s" | tee -a "$SUM"
  timeout "$mt" compute-sanitizer --tool memcheck --error-exitcode 9 "$b/tests/test_cuda_quant" > "$OUT/memcheck_quant.log" 2>&1
  echo "memcheck test_cuda_quant exit $?" | tee -a "$SUM"
  echo "memcheck: $(grep -c "^ok" "$OUT/memcheck_quant.log") checks ok, $(grep -c "^FAIL" "$OUT/memcheck_quant.log") failed, $(grep -c "^========= [A-Z]" "$OUT/memcheck_quant.log") sanitizer lines" | tee -a "$SUM"
  grep -E "^========= " "$OUT/memcheck_quant.log" | head -5 | tee -a "$SUM"
fi
echo "total $(( $(date +%s) - t0 )) s"
echo "==== summary"
cat "$SUM"
if [[ -s "$OUT/kern.log" ]]; then
  python3 - "$OUT/kern.log" <<'PY'
import re, sys
cur = None; rows = {}
for l in open(sys.argv[1]):
    m = re.match(r"== bench_cuda quant DR_CUDA_QGEMV_V2=(\d)", l)
    if m: cur = m.group(1); continue
    if l.startswith("copy"): print(cur, l.strip()); continue
    m = re.match(r"(.{40}) (q\d|bf16)\s+T=(\d+)\s+([\d.]+) ms\s+(\d+) GB/s", l)
    if m and m.group(2) != "bf16":
        rows.setdefault((m.group(1).strip(), m.group(2), m.group(3)), {})[cur] = m.group(5)
    m2 = re.match(r"(35B moe decode.*?)\s+q4\s+T=1\s+([\d.]+) ms\s+(\d+) GB/s", l)
    if m2: rows.setdefault((m2.group(1).strip(), "q4", "1"), {})[cur] = m2.group(3)
print("%-40s %-3s %-2s %8s %8s" % ("shape", "q", "T", "new GB/s", "old GB/s"))
for k, v in rows.items():
    print("%-40s %-3s %-2s %8s %8s" % (k[0], k[1], k[2], v.get("1", "-"), v.get("0", "-")))
PY
fi
