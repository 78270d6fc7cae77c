#!/usr/bin/env bash
# One device-machine call for the prefill kernels (docs/CUDA.md "Prefill"):
# build (sm_90a), test_cuda_prefill, test_cuda, the CUDA goldens, bench_cuda,
# and the 35B-A3B prefill bench with the new kernels and with
# DR_CUDA_PREFILL=0 (the previous kernels) in the same run. Logs in $OUT.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
b=build-cuda
dr_device_build "$b" test_cuda_prefill test_cuda test_golden bench_cuda deltarun_cli
echo "== built"
what="${*:-tests bench e2e}"
if [[ "$what" == *tests* ]]; then
  timeout 180 $b/tests/test_cuda_prefill > "$OUT/prefill.log" 2>&1; echo "test_cuda_prefill rc=$?"
  grep -v "^ok " "$OUT/prefill.log" | head -40; grep "rel err" "$OUT/prefill.log" | head -40
  timeout 180 $b/tests/test_cuda > "$OUT/test_cuda.log" 2>&1; echo "test_cuda rc=$?"; grep -iE "fail|passed" "$OUT/test_cuda.log" | head
  for fx in dense-f32 moe-bf16 moe-bf16-fused next-f32 long-bf16; do
    timeout 120 $b/tests/test_golden tests/data/$fx --device cuda >> "$OUT/golden.log" 2>&1; echo "golden $fx rc=$?"
  done
  grep -iE "fail|max" "$OUT/golden.log" | head -30
fi
if [[ "$what" == *bench* ]]; then
  timeout 240 $b/tests/bench_cuda 2>&1 | tee "$OUT/bench.log"
fi
if [[ "$what" == *e2e* ]]; then
  for e in 1 0; do
    for L in 8 40; do
      echo "-- DR_CUDA_PREFILL=$e layers $L"
      DR_CUDA_PREFILL=$e timeout 200 $b/deltarun bench --device cuda --synthetic bench/configs/qwen3.5-35b-a3b.json \
        --layers $L -p 8192 -n 16 --json 2>>"$OUT/e2e_err.log" | tee -a "$OUT/e2e.log" || tail -3 "$OUT/e2e_err.log"
    done
  done
fi
