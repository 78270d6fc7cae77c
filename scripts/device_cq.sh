#!/usr/bin/env bash
# One device-machine call for the 4/8-bit CUDA work (docs/CUDA.md, "8/4-bit
# weights on the GPU"): build (sm_90a), test_cuda_quant, the other CUDA tests
# and goldens, and decode/prefill benches of q4 / q8 / bf16 (the baseline, same
# call). Logs under $OUT.
# Usage: scripts/device_cq.sh [quant] [tests] [kern] [bench08] [bench9] [bench35]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-quant tests kern bench08 bench9 bench35}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda_quant test_cuda test_cuda_decode test_cuda_prefill test_golden deltarun_cli bench_cuda
echo "built in $(( $(date +%s) - t0 )) s"
T="$OUT/tests.log"
if [[ "$what" == *quant* ]]; then
  timeout 200 "$b/tests/test_cuda_quant" > "$OUT/test_cuda_quant.log" 2>&1; echo "test_cuda_quant rc=$?"
  grep -E "FAIL|passed" "$OUT/test_cuda_quant.log" | head -40
  grep -E "greedy|prompt" "$OUT/test_cuda_quant.log" | head -14
fi
if [[ "$what" == *tests* ]]; then
  timeout 100 "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 >> "$T" 2>&1 || echo "test_cuda_decode FAILED"
  timeout 60 "$b/tests/test_cuda" >> "$T" 2>&1 || echo "test_cuda FAILED"
  timeout 60 "$b/tests/test_cuda_prefill" >> "$T" 2>&1 || echo "test_cuda_prefill FAILED"
  for fx in dense-f32 moe-bf16 moe-bf16-fused next-f32; do
    timeout 60 "$b/tests/test_golden" "tests/data/$fx" --device cuda >> "$T" 2>&1 || echo "golden $fx FAILED"
  done
  grep -E "^FAIL|passed" "$T" | head -20
fi
if [[ "$what" == *kern* ]]; then # quantized kernels beside bf16 (bench_cuda), default and forced rows per warp
  for v in "" DR_CUDA_QGEMV_XS=0; do
    echo "== bench_cuda quant ${v:-default}" | tee -a "$OUT/kern.log"
    env $v DR_BENCH_QUANT=1 timeout 60 "$b/tests/bench_cuda" >> "$OUT/kern.log" 2>&1
  done
  grep -vE "T=4|T=512" "$OUT/kern.log" | head -80
  grep -E "T=512|moe" "$OUT/kern.log" | head -20
fi
cli="$b/deltarun"
one() {
  local nm="$1"; shift
  local j
  j=$(timeout 120 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $* $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-16s decode %8.1f tok/s  %6.0f GB/s of %6.0f  floor %7.1f tok/s  %5.1f%%  prefill %7.0f tok/s (p=%d)  %.2f GB/tok' % (sys.argv[2], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], d['floor_tok_s'], 100*d['floor_fraction'], d['prefill_tok_s'], d['prompt_tokens'], d['bytes_per_token']/1e9))" "$j" "$nm" 2>/dev/null || { echo "$nm: failed"; tail -3 "$OUT/bench_err.log"; }
}
q() { # model-name config extra-args...
  local nm="$1" cfg="$2"; shift 2
  for qq in bf16 q8 q4; do
    local r=""; [[ $qq != bf16 ]] && r="--quant-random"
    one "$nm-$qq" --synthetic "bench/configs/$cfg" --quant $qq $r "$@"
  done
}
if [[ "$what" == *bench08* ]]; then
  q 0.8B qwen3.5-0.8b.json -p 512 -n 128
fi
if [[ "$what" == *bench9* ]]; then
  q 9B qwen3.5-9b.json -p 512 -n 64
fi
if [[ "$what" == *bench35* ]]; then
  q 35B-A3B-8L qwen3.5-35b-a3b.json --layers 8 -p 512 -n 128
fi
echo "total $(( $(date +%s) - t0 )) s"
