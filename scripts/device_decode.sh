#!/usr/bin/env bash
# One device-machine call for the decode work (docs/CUDA.md, "Decode"):
# build with CUDA for sm_90a, run the decode tests, the slot tests and the
# fixture goldens, then `deltarun bench --device cuda` on the synthetic
# shapes with step graphs on and, as the same-run baseline, off
# (DR_CUDA_GRAPHS=0). Logs under $OUT; a summary table is printed last.
# Usage: scripts/device_decode.sh [tests] [bench] [full35]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests bench}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda test_cuda_decode test_golden deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
rc=0
if [[ "$what" == *tests* ]]; then
  "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 tests/data/long-bf16 > "$OUT/test_decode.log" 2>&1 || rc=1
  grep -E "FAIL|graphs|passed" "$OUT/test_decode.log"
  grep -E "gdn_decode" "$OUT/test_decode.log" | head -20
  "$b/tests/test_cuda" > "$OUT/test_cuda.log" 2>&1 || rc=1
  grep -E "FAIL|passed" "$OUT/test_cuda.log"
  for fx in dense-f32 moe-bf16 moe-bf16-fused next-f32 long-bf16; do
    "$b/tests/test_golden" "tests/data/$fx" --device cuda >> "$OUT/golden.log" 2>&1 || { rc=1; echo "golden $fx FAILED"; }
  done
  grep -E "FAIL|passed" "$OUT/golden.log"
  grep -E "incremental|greedy" "$OUT/golden.log" | head -12
fi
cli="$b/deltarun"
one() { # name, graphs (1/0), args...
  local nm="$1" g="$2"; shift 2
  echo "-- $nm graphs=$g $*" >> "$OUT/e2e_err.log"
  local j
  j=$(DR_CUDA_GRAPHS=$g timeout 300 "$cli" bench --device cuda "$@" --json 2>>"$OUT/e2e_err.log")
  echo "$nm graphs=$g $j" >> "$OUT/e2e.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-12s graphs=%s decode %8.1f tok/s  %6.0f GB/s of %6.0f  floor %7.1f tok/s  %5.1f%%  prefill %7.0f tok/s (p=%d)' % (sys.argv[2], sys.argv[3], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], d['floor_tok_s'], 100*d['floor_fraction'], d['prefill_tok_s'], d['prompt_tokens']))" "$j" "$nm" "$g" 2>/dev/null || echo "$nm graphs=$g: failed ($(tail -1 "$OUT/e2e_err.log"))"
}
if [[ "$what" == *bench* ]]; then
  for g in 0 1; do
    one 0.8B $g --synthetic bench/configs/qwen3.5-0.8b.json -p 128 -n 256
    one 9B $g --synthetic bench/configs/qwen3.5-9b.json -p 128 -n 128
    one 35B-A3B-8L $g --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
  done 2>&1 | tee "$OUT/summary.txt"
fi
if [[ "$what" == *full35* ]]; then
  one 35B-A3B-40L 1 --synthetic bench/configs/qwen3.5-35b-a3b.json -p 128 -n 128 | tee -a "$OUT/summary.txt"
fi
echo "total $(( $(date +%s) - t0 )) s"
exit $rc
