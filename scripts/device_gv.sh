#!/usr/bin/env bash
# Decode round 4 (docs/CUDA.md, "Decode round 4: GEMV epilogue fusions"):
# build (sm_90a), the fused-slot test, the decode/graph test and every CUDA
# ctest (goldens included) with the fusions on (default), memcheck of
# test_cuda_fused, then the decode benches with DR_CUDA_FUSE=0 (off) and the
# default (on) in the same call. Optional: ncu per-kernel sums of a few
# decode steps. Logs under $OUT.
# Usage: scripts/device_gv.sh [tests] [memcheck] [bench] [ncu]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests memcheck bench}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda_fused test_cuda_decode test_cuda test_cuda_prefill test_cuda_quant test_golden deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
if [[ "$what" == *tests* ]]; then
  timeout 60 "$b/tests/test_cuda_fused" > "$OUT/fused.log" 2>&1; echo "test_cuda_fused exit $?"
  grep -E "passed|FAIL" "$OUT/fused.log" | head -20
  awk '/rel err/ {for(i=1;i<=NF;i++) if($i=="err") print $(i+1), $0}' "$OUT/fused.log" | sort -g | tail -4
  timeout 120 "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 tests/data/long-bf16 > "$OUT/decode.log" 2>&1
  echo "test_cuda_decode exit $?"; grep -E "graphs|passed|FAIL" "$OUT/decode.log" | head -12
  for f in 3 0; do # every CUDA test and golden, 4 at a time, fusions on (default) and off
    (cd "$b" && DR_CUDA_FUSE=$f timeout 200 ctest -R cuda -j4 --output-on-failure > "$OUT/ctest_$f.log" 2>&1)
    echo "ctest -R cuda -j4 DR_CUDA_FUSE=$f exit $?"
    grep -E "tests passed|\*\*\*|^FAIL" "$OUT/ctest_$f.log" | head -8
  done
  DR_CUDA_FUSE=3 timeout 120 "$b/tests/test_cuda_quant" > "$OUT/quant_3.log" 2>&1
  echo "test_cuda_quant alone exit $?"; grep -E "^FAIL|passed" "$OUT/quant_3.log" | head -4
  echo "tests done at $(( $(date +%s) - t0 )) s"
fi
if [[ "$what" == *memcheck* ]]; then
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$b/tests/test_cuda_fused" > "$OUT/memcheck.log" 2>&1
  echo "memcheck test_cuda_fused exit $?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log" | head -3
fi
cli="$b/deltarun"
one() { # label, then bench arguments
  local nm="$1"; shift
  local j
  j=$(timeout 150 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $* $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-14s decode %7.1f tok/s %5.0f GB/s of %5.0f floor %7.1f tok/s %5.1f%%' % (sys.argv[2], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], d['floor_tok_s'], 100*d['floor_fraction']))" "$j" "$nm" 2>/dev/null || { echo "$nm: failed"; tail -2 "$OUT/bench_err.log"; }
}
C=bench/configs
if [[ "$what" == *bench* ]]; then
  for rep in 1 2; do # off / on interleaved, twice
    DR_CUDA_FUSE=0 one 0.8B-off --synthetic $C/qwen3.5-0.8b.json -p 128 -n 256
    one 0.8B-on --synthetic $C/qwen3.5-0.8b.json -p 128 -n 256
    DR_CUDA_FUSE=0 one 9B-off --synthetic $C/qwen3.5-9b.json -p 128 -n 128
    one 9B-on --synthetic $C/qwen3.5-9b.json -p 128 -n 128
    DR_CUDA_FUSE=0 one 35B-8L-off --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
    one 35B-8L-on --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
  done
  [[ "$what" == *split* ]] && for f in 1 2; do
    DR_CUDA_FUSE=$f one 0.8B-fuse$f --synthetic $C/qwen3.5-0.8b.json -p 128 -n 256
    DR_CUDA_FUSE=$f one 9B-fuse$f --synthetic $C/qwen3.5-9b.json -p 128 -n 128
  done
fi
if [[ "$what" == *ncu* ]]; then
  NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv"
  for f in 0 3; do
    DR_CUDA_FUSE=$f timeout 70 $NCU "$cli" bench --device cuda --synthetic $C/qwen3.5-0.8b.json -p 1 -n 3 --json \
      > "$OUT/ncu_08b_$f.csv" 2>> "$OUT/ncu_err.log"
    echo "== ncu 0.8B DR_CUDA_FUSE=$f"; python3 scripts/ncu_sum.py "$OUT/ncu_08b_$f.csv" 4 | head -14
  done
fi
echo "total $(( $(date +%s) - t0 )) s"
