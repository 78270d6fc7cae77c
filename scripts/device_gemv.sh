#!/usr/bin/env bash
# One device call for the GEMV round (docs/CUDA.md, "GEMV rows kernel + PDL"):
# build (sm_90a), every CUDA test and golden, bench_cuda's GEMV shapes with
# the default kernel / without PDL / the previous kernel, and the decode
# bench (0.8B, 9B, 35B-A3B 8 and 40 layers) in the same three settings.
# Usage: scripts/device_gemv.sh [tests] [gemv] [bench] [big]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests gemv bench big}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda test_cuda_decode test_cuda_prefill test_golden deltarun_cli bench_cuda
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
  echo "tests done at $(( $(date +%s) - t0 )) s"
fi
if [[ "$what" == *gemv* ]]; then
  for v in "" "DR_CUDA_GEMV_WARPS=4" "DR_CUDA_PDL=0" "DR_CUDA_GEMV_ROWS=0 DR_CUDA_PDL=0"; do
    echo "== bench_cuda GEMV ${v:-default}"
    env $v DR_BENCH_GEMV_ONLY=1 timeout 120 "$b/tests/bench_cuda" 2>&1 | tee -a "$OUT/gemv.log"
  done
fi
cli="$b/deltarun"
one() {
  local nm="$1"; shift
  local j
  j=$(timeout 300 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-26s decode %8.1f tok/s  %6.0f GB/s of %6.0f  floor %7.1f tok/s  %5.1f%%' % (sys.argv[2], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], d['floor_tok_s'], 100*d['floor_fraction']))" "$j" "$nm" 2>/dev/null || echo "$nm: failed"
}
vars=("" "DR_CUDA_GEMV_WARPS=4" "DR_CUDA_GEMV_ROWS=0 DR_CUDA_PDL=0")
[[ -n "${GEMV_VARS:-}" ]] && IFS=',' read -r -a vars <<< "$GEMV_VARS"
if [[ "$what" == *bench* ]]; then
  for v in "${vars[@]}"; do
    (if [[ -n "$v" ]]; then export $v; fi; one "0.8B ${v:-default}" --synthetic bench/configs/qwen3.5-0.8b.json -p 128 -n 256)
    (if [[ -n "$v" ]]; then export $v; fi; one "9B ${v:-default}" --synthetic bench/configs/qwen3.5-9b.json -p 128 -n 128)
    (if [[ -n "$v" ]]; then export $v; fi; one "35B-8L ${v:-default}" --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256)
  done
fi
if [[ "$what" == *big* ]]; then
  for v in "" "DR_CUDA_GEMV_ROWS=0 DR_CUDA_PDL=0"; do
    (if [[ -n "$v" ]]; then export $v; fi; one "35B-40L ${v:-default}" --synthetic bench/configs/qwen3.5-35b-a3b.json -p 128 -n 128)
  done
fi
echo "total $(( $(date +%s) - t0 )) s"
exit $rc
