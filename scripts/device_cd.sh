#!/usr/bin/env bash
# One device call for decode round 3 (docs/CUDA.md, "Decode round 3"): build
# (sm_90a), the CUDA decode tests and the five goldens, the decode bench of
# 0.8B / 9B / 35B-A3B (8 and 40 layers) with the round-3 kernels and with
# DR_CUDA_DEC3=0 (the previous kernels, same build, same machine) and with
# the PDL settings in CD_VARS, then ncu per-kernel sums of a few 35B-A3B
# (8 layers) decode steps (CD_NCU_OLD=1: also with the previous kernels).
# Usage: scripts/device_cd.sh [tests] [bench] [ncu]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests bench ncu}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda test_cuda_decode test_golden deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
rc=0
T="$OUT/tests.log"
if [[ "$what" == *tests* ]]; then
  timeout 120 "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 tests/data/long-bf16 >> "$T" 2>&1 || { rc=1; echo "test_cuda_decode FAILED"; }
  timeout 120 "$b/tests/test_cuda" >> "$T" 2>&1 || { rc=1; echo "test_cuda FAILED"; }
  for fx in dense-f32 moe-bf16 moe-bf16-fused next-f32 long-bf16; do
    timeout 120 "$b/tests/test_golden" "tests/data/$fx" --device cuda >> "$T" 2>&1 || { rc=1; echo "golden $fx FAILED"; }
  done
  grep -E "FAIL|passed|graphs|moe_decode|moe_experts" "$T" | head -40
  # the MoE fixture under each switch (which part a failure comes from)
  for v in DR_CUDA_GRAPHS=0 DR_CUDA_PDL=0 DR_CUDA_MOE_DEC=0 DR_CUDA_PDL_NORM=1,DR_CUDA_PDL_GDN=1 DR_CUDA_DEC3=0; do
    (export ${v//,/ }; timeout 60 "$b/tests/test_golden" tests/data/moe-bf16 --device cuda > "/tmp/g_$v.log" 2>&1; echo "golden moe-bf16 $v: rc $? $(grep -c FAIL /tmp/g_$v.log) FAIL lines")
  done
  echo "tests done at $(( $(date +%s) - t0 )) s"
fi
cli="$b/deltarun"
one() {
  local nm="$1"; shift
  local j
  j=$(timeout 150 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-22s decode %8.1f tok/s  %6.0f GB/s of %6.0f  floor %7.1f tok/s  floor_fraction %.3f' % (sys.argv[2], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], d['floor_tok_s'], d['floor_fraction']))" "$j" "$nm" 2>/dev/null || echo "$nm: failed"
}
# settings compared (comma-separated env assignments per setting, space between settings)
vars="${CD_VARS:-DR_CUDA_DEC3=0 DR_CUDA_DEC3=1 DR_CUDA_DEC3=0 DR_CUDA_DEC3=1}"
big="${CD_BIG:-DR_CUDA_DEC3=0 DR_CUDA_DEC3=1}"
if [[ "$what" == *bench* ]]; then
  for v in $vars; do
    (export ${v//,/ }; one "0.8B $v" --synthetic bench/configs/qwen3.5-0.8b.json -p 128 -n 256)
    (export ${v//,/ }; one "9B $v" --synthetic bench/configs/qwen3.5-9b.json -p 128 -n 128)
    (export ${v//,/ }; one "35B-8L $v" --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256)
  done
  for v in $big; do
    (export ${v//,/ }; one "35B-40L $v" --synthetic bench/configs/qwen3.5-35b-a3b.json -p 128 -n 64)
  done
  echo "bench done at $(( $(date +%s) - t0 )) s"
fi
if [[ "$what" == *ncu* ]]; then
  NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv"
  prof() { # name steps args...
    local nm="$1" st="$2"; shift 2
    timeout 60 $NCU "$cli" bench --device cuda "$@" --json > "/tmp/ncu_$nm.csv" 2>> "/tmp/ncu_err.log"
    echo "== $nm ($*): rc $?"
    python3 scripts/ncu_sum.py "/tmp/ncu_$nm.csv" "$st" 2>/dev/null | head -16
  }
  [[ -n "${CD_NCU_OLD:-}" ]] && (export DR_CUDA_DEC3=0; prof d35b8_old 4 --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 1 -n 3)
  prof d35b8_new 4 --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 1 -n 3
fi
echo "total $(( $(date +%s) - t0 )) s"
exit $rc
