#!/usr/bin/env bash
# One device-machine call for the decode/prefill speed round (docs/CUDA.md,
# "Where the time goes"): build (sm_90a), every CUDA test and golden, the
# decode bench (0.8B, 9B, 35B-A3B 8 layers; graphs on), the 8192-token
# 35B-A3B prefill (40 layers), and an ncu per-kernel profile of 0.8B decode
# steps. Logs under $OUT (at most 8 files).
# Usage: scripts/device_perf.sh [tests] [bench] [prefill] [profile]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests bench prefill profile}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda test_cuda_decode test_cuda_prefill test_golden deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
rc=0
T="$OUT/tests.log"
if [[ "$what" == *tests* ]]; then
  timeout 240 "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 tests/data/long-bf16 >> "$T" 2>&1 || { rc=1; echo "test_cuda_decode FAILED"; }
  timeout 240 "$b/tests/test_cuda" >> "$T" 2>&1 || { rc=1; echo "test_cuda FAILED"; }
  timeout 240 "$b/tests/test_cuda_prefill" >> "$T" 2>&1 || { rc=1; echo "test_cuda_prefill FAILED"; }
  for fx in dense-f32 moe-bf16 moe-bf16-fused next-f32 long-bf16; do
    timeout 240 "$b/tests/test_golden" "tests/data/$fx" --device cuda >> "$T" 2>&1 || { rc=1; echo "golden $fx FAILED"; }
  done
  grep -E "FAIL|passed|graphs" "$T" | head -30
  grep -E "incremental|greedy|max" "$T" | head -16
fi
cli="$b/deltarun"
one() {
  local nm="$1"; shift
  local j
  j=$(timeout 300 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-12s decode %8.1f tok/s  %6.0f GB/s of %6.0f  floor %7.1f tok/s  %5.1f%%  prefill %7.0f tok/s (p=%d, ttft %.0f ms)' % (sys.argv[2], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], d['floor_tok_s'], 100*d['floor_fraction'], d['prefill_tok_s'], d['prompt_tokens'], d['ttft_ms']))" "$j" "$nm" 2>/dev/null || echo "$nm: failed"
}
if [[ "$what" == *bench* ]]; then
  one 0.8B --synthetic bench/configs/qwen3.5-0.8b.json -p 128 -n 256
  one 9B --synthetic bench/configs/qwen3.5-9b.json -p 128 -n 128
  one 35B-A3B-8L --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
fi
if [[ "$what" == *prefill* ]]; then
  one 35B-A3B-40L --synthetic bench/configs/qwen3.5-35b-a3b.json -p 8192 -n 64
  one 35B-A3B-40L --synthetic bench/configs/qwen3.5-35b-a3b.json -p 8192 -n 64
fi
if [[ "$what" == *profile* ]]; then
  NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv"
  timeout 120 $NCU "$cli" bench --device cuda --synthetic bench/configs/qwen3.5-0.8b.json -p 1 -n 3 --json > "$OUT/ncu_d08b.csv" 2>/dev/null
  python3 scripts/ncu_sum.py "$OUT/ncu_d08b.csv" 4 2>/dev/null | head -16
  timeout 120 $NCU "$cli" bench --device cuda --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 4 -p 8192 -n 1 --json > "$OUT/ncu_p35b4.csv" 2>/dev/null
  python3 scripts/ncu_sum.py "$OUT/ncu_p35b4.csv" 1 2>/dev/null | head -22
fi
echo "total $(( $(date +%s) - t0 )) s"
exit $rc
