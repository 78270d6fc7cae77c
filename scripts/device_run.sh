#!/usr/bin/env bash
# One device-machine call (docs/CUDA.md): unpack the library .debs carried in
# .debs/ (the GPU machine has no network and no jansson/oniguruma/utf8proc),
# build with CUDA for sm_90a, run the CUDA tests, compute-sanitizer memcheck
# on a fixture, and the kernel benchmarks. Logs go to $OUT.
# Usage: scripts/device_run.sh [tests|sanitize|bench|all]...
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-all}"

echo "== machine"
uname -m
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
nvcc --version | tail -1

echo "== build"
b="$root/build-cuda"
dr_device_build "$b" test_cuda test_golden bench_cuda
echo "built"
make -C "$b" -j"$(nproc)" deltarun_cli > "$OUT/build_cli.log" 2>&1 || echo "CLI did not build (see build_cli.log)"
rc=0
if [[ "$what" == *all* || "$what" == *tests* ]]; then
  echo "== test_cuda (every slot vs the CPU reference)"
  "$b/tests/test_cuda" 2>&1 | tee "$OUT/test_cuda.log" || rc=1
  for fx in dense-f32 moe-bf16 moe-bf16-fused next-f32 long-bf16; do
    echo "== cuda golden $fx"
    "$b/tests/test_golden" "tests/data/$fx" --device cuda 2>&1 | tee -a "$OUT/golden.log" || rc=1
  done
fi
if [[ "$what" == *all* || "$what" == *sanitize* ]]; then
  echo "== compute-sanitizer memcheck (moe-bf16, quick)"
  compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    "$b/tests/test_golden" tests/data/moe-bf16 --device cuda --quick > "$OUT/memcheck.log" 2>&1
  echo "memcheck exit $?"; tail -5 "$OUT/memcheck.log"
fi
if [[ "$what" == *all* || "$what" == *bench* ]]; then
  echo "== bench_cuda"
  "$b/tests/bench_cuda" 2>&1 | tee "$OUT/bench.log"
fi
if [[ "$what" == *e2e* ]]; then
  echo "== deltarun bench --device cuda (synthetic shapes)"
  cli="$b/deltarun"
  run() { echo "-- $*"; timeout 240 "$cli" bench --device cuda "$@" 2>"$OUT/e2e_err.log" | tee -a "$OUT/e2e.log" || tail -3 "$OUT/e2e_err.log"; }
  run --synthetic bench/configs/qwen3.5-0.8b.json -p 512 -n 128 --json
  run --synthetic bench/configs/qwen3.5-9b.json -p 512 -n 128 --json
  run --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 512 -n 128 --json
  run --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 8192 -n 32 --json
  run --synthetic bench/configs/qwen3.5-35b-a3b.json -p 8192 -n 64 --json
fi
exit $rc
