#!/usr/bin/env bash
# One device-machine call for the GDN chunked tensor-core scan (docs/CUDA.md,
# "GDN chunked on tensor cores"): build (sm_90a); test_cuda_prefill (every
# GDN shape on both paths), test_cuda, the five goldens on the device;
# the goldens also with DR_CUDA_GDN_TC=0 and DR_CUDA_GDN_SPLIT=3 (logit
# errors side by side); bench_cuda (GDN chunked: FMA kernels, tensor cores
# with split 2 and 3, one process); ncu per-kernel times of one 8192-token
# GDN layer per path; the 40-layer 35B-A3B 8192-token prefill, alternating.
# Logs under $OUT. Usage: scripts/device_gdn_tc.sh [tests] [bench] [ncu] [e2e]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests bench ncu e2e}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda test_cuda_prefill test_golden bench_cuda deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
rc=0
T="$OUT/tests.log"
if [[ "$what" == *tests* ]]; then
  timeout 200 "$b/tests/test_cuda_prefill" > "$OUT/prefill.log" 2>&1 || { rc=1; echo "test_cuda_prefill FAILED"; }
  grep -E "gdn|FAIL|passed" "$OUT/prefill.log" | head -70
  timeout 120 "$b/tests/test_cuda" >> "$T" 2>&1 || { rc=1; echo "test_cuda FAILED"; }
  for fx in dense-f32 moe-bf16 moe-bf16-fused next-f32 long-bf16; do
    timeout 120 "$b/tests/test_golden" "tests/data/$fx" --device cuda >> "$T" 2>&1 || { rc=1; echo "golden $fx FAILED"; }
  done
  grep -E "FAIL|passed|gdn" "$T" | head -30
  grep -E "max" "$T" | grep -v "state\|CPU" | sort -t'|' -k2 | head -40 > "$OUT/golden_tc1.txt"
  # the same goldens on the fp32 FMA kernels: the logit error the tensor-core path adds
  for fx in dense-f32 moe-bf16 next-f32 long-bf16; do
    DR_CUDA_GDN_TC=0 timeout 120 "$b/tests/test_golden" "tests/data/$fx" --device cuda >> "$OUT/golden_tc0.log" 2>&1 || { rc=1; echo "golden $fx (TC=0) FAILED"; }
    DR_CUDA_GDN_SPLIT=3 timeout 120 "$b/tests/test_golden" "tests/data/$fx" --device cuda >> "$OUT/golden_s3.log" 2>&1 || { rc=1; echo "golden $fx (SPLIT=3) FAILED"; }
  done
  python3 - "$T" "$OUT/golden_tc0.log" "$OUT/golden_s3.log" <<'PY'
import re, sys
def worst(path):
    w = {}
    for ln in open(path, errors="replace"):
        m = re.search(r"cuda (\S+) p\d+ (logits_full|logits_incremental).*max \|dlogit\| ([0-9.e+-]+)", ln)
        if m:
            k = (m.group(1), m.group(2) + (" vs CPU" if "CPU" in ln else ""))
            w[k] = max(w.get(k, 0.0), float(m.group(3)))
    return w
a, b, c = worst(sys.argv[1]), worst(sys.argv[2]), worst(sys.argv[3])
for k in sorted(b):
    print("golden %-14s %-25s max |dlogit|  TC split 2 %.3g  TC split 3 %.3g  fp32 FMA %.3g" % (k[0], k[1], a.get(k, -1), c.get(k, -1), b[k]))
PY
  echo "tests done at $(( $(date +%s) - t0 )) s"
fi
if [[ "$what" == *bench* ]]; then
  timeout 120 "$b/tests/bench_cuda" > "$OUT/bench_cuda.log" 2>&1 || echo "bench_cuda rc $?"
  grep -E "gdn|floor|copy" "$OUT/bench_cuda.log"
fi
cli="$b/deltarun"
if [[ "$what" == *ncu* ]]; then
  NCU="ncu --clock-control none --cache-control none -k regex:^gc --metrics gpu__time_duration.sum --csv"
  for tc in 1 0 s3; do
    mb=2; [[ $tc == s3 ]] && { tc=1; mb=3; }
    DR_CUDA_GDN_SPLIT=$mb DR_CUDA_GDN_TC=$tc timeout 100 $NCU "$cli" bench --device cuda --synthetic bench/configs/qwen3.5-35b-a3b.json \
      --layers 1 -p 8192 -n 1 --json > "$OUT/ncu_tc$tc$mb.csv" 2>/dev/null
    echo "ncu DR_CUDA_GDN_TC=$tc SPLIT=$mb (one GDN layer, T=8192)"
    python3 scripts/ncu_sum.py "$OUT/ncu_tc$tc$mb.csv" 1 2>/dev/null | head -6
  done
fi
one() {
  local nm="$1"; shift
  local j
  j=$(timeout 150 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $j" >> "$OUT/e2e.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-24s prefill %7.0f tok/s (p=%d, ttft %.0f ms)  decode %6.1f tok/s' % (sys.argv[2], d['prefill_tok_s'], d['prompt_tokens'], d['ttft_ms'], d['decode_tok_s']))" "$j" "$nm" 2>/dev/null || echo "$nm: failed"
}
if [[ "$what" == *e2e* ]]; then
  for m in s2 fma s3 s2 fma; do
    tc=1; sp=2; [[ $m == fma ]] && tc=0; [[ $m == s3 ]] && sp=3
    DR_CUDA_GDN_TC=$tc DR_CUDA_GDN_SPLIT=$sp one "35B-A3B-40L GDN_TC=$tc SPLIT=$sp" --synthetic bench/configs/qwen3.5-35b-a3b.json -p 8192 -n 16
    [[ $(( $(date +%s) - t0 )) -gt 250 ]] && { echo "stopping e2e (time)"; break; }
  done
fi
echo "total $(( $(date +%s) - t0 )) s"
exit $rc
