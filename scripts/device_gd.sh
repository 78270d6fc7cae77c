#!/usr/bin/env bash
# One device-machine call for decode round 4 (docs/CUDA.md, "Decode round 4:
# gdn_decode over column slices"): build (sm_90a), test_cuda_decode (both
# gdn_decode kernels on every shape, graphs on three fixtures), the CUDA
# goldens, compute-sanitizer memcheck + racecheck on the gdn_decode cases,
# then the decode benches with the head kernel (DR_CUDA_GDN_SLICES=0) and the
# sliced one (default; DR_CUDA_GDN_KCLUSTER=0: clusters of one v head) alternated
# in the same call, ncu of the kernels, optionally ncu stall reasons + SASS
# (detail). The logs come back as logs.tgz.
# Logs under $OUT.
# Usage: scripts/device_gd.sh [tests] [bench] [san] [ncu] [wide] [detail]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests bench san ncu}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda_decode test_golden deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
T="$OUT/tests.log"
if [[ "$what" == *tests* ]]; then
  DR_TEST_GDN_ONLY=1 timeout 60 "$b/tests/test_cuda_decode" > "$OUT/gdn.log" 2>&1; echo "gdn cases exit $?"
  grep -E "gdn_decode Hk|FAIL|ran|passed" "$OUT/gdn.log" | awk '{print}' | cut -c1-150 | head -80
  timeout 150 "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 tests/data/long-bf16 >> "$T" 2>&1 || echo "test_cuda_decode FAILED"
  for fx in dense-f32 moe-bf16 moe-bf16-fused next-f32 long-bf16; do
    timeout 60 "$b/tests/test_golden" "tests/data/$fx" --device cuda >> "$T" 2>&1 || echo "golden $fx FAILED"
  done
  grep -cE "^ok" "$T" | sed 's/^/ok lines: /'
  grep -E "^FAIL|passed|graphs" "$T" | cut -c1-160 | head -30
  echo "tests at $(( $(date +%s) - t0 )) s"
fi
cli="$b/deltarun"
one() { # label, then bench arguments
  local nm="$1"; shift
  local j
  j=$(timeout 100 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $* $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-18s decode %7.1f tok/s %5.0f GB/s of %5.0f floor %7.1f tok/s %5.1f%%' % (sys.argv[2], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], d['floor_tok_s'], 100*d['floor_fraction']))" "$j" "$nm" 2>/dev/null || { echo "$nm: failed"; tail -2 "$OUT/bench_err.log"; }
}
C=bench/configs
if [[ "$what" == *bench* ]]; then
  for rep in 1 2; do
    for mode in head slices vclu; do # vclu: clusters of one v head's slices + the q/k counter
      unset DR_CUDA_GDN_SLICES DR_CUDA_GDN_KCLUSTER
      [[ $mode == head ]] && export DR_CUDA_GDN_SLICES=0
      [[ $mode == vclu ]] && export DR_CUDA_GDN_KCLUSTER=0
      one "0.8B-$mode" --synthetic $C/qwen3.5-0.8b.json -p 128 -n 256
      one "9B-$mode" --synthetic $C/qwen3.5-9b.json -p 128 -n 128
      one "35B-8L-$mode" --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
    done
  done
  unset DR_CUDA_GDN_SLICES DR_CUDA_GDN_KCLUSTER
  if [[ "$what" == *wide* ]]; then # 8 slices of 16 columns on the Hv = 32 shapes (256 CTAs)
    export DR_CUDA_GDN_SLICES=8
    one "9B-s8" --synthetic $C/qwen3.5-9b.json -p 128 -n 128
    one "35B-8L-s8" --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
    unset DR_CUDA_GDN_SLICES
  fi
  echo "bench at $(( $(date +%s) - t0 )) s"
fi
if [[ "$what" == *san* ]]; then
  DR_TEST_GDN_ONLY=1 timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 "$b/tests/test_cuda_decode" > "$OUT/memcheck.log" 2>&1
  echo "memcheck gdn exit $?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log" | head -3
  DR_TEST_GDN_ONLY=1 timeout 90 compute-sanitizer --tool racecheck --error-exitcode 9 "$b/tests/test_cuda_decode" > "$OUT/racecheck.log" 2>&1
  echo "racecheck gdn exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed" "$OUT/racecheck.log" | head -3
  echo "sanitizers at $(( $(date +%s) - t0 )) s"
fi
if [[ "$what" == *ncu* ]]; then
  NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv -k regex:gdn_decode -c 40"
  runs="0.8b:0 0.8b:auto 9b:0 9b:auto 9b:vclu 9b:8"
  for run in $runs; do
    sh=${run%%:*} mode=${run##*:}
    {
      unset DR_CUDA_GDN_SLICES DR_CUDA_GDN_KCLUSTER
      if [[ $mode == vclu ]]; then export DR_CUDA_GDN_KCLUSTER=0
      elif [[ $mode != auto ]]; then export DR_CUDA_GDN_SLICES=$mode; fi
      timeout 60 $NCU "$cli" bench --device cuda --synthetic $C/qwen3.5-$sh.json -p 1 -n 3 --json \
        > "$OUT/ncu_${sh}_$mode.csv" 2>> "$OUT/ncu_err.log"
      echo "== ncu $sh slices=$mode: rc $?"
      python3 scripts/ncu_sum.py "$OUT/ncu_${sh}_$mode.csv" 1 | head -4
    }
  done
  unset DR_CUDA_GDN_SLICES DR_CUDA_GDN_KCLUSTER
fi
if [[ "$what" == *detail* ]]; then # stall reasons of one sliced launch (9B) and the SASS
  timeout 60 ncu --clock-control none --cache-control none --section WarpStateStats --section SourceCounters \
    --section LaunchStats -k regex:gdn_decode_sliced -s 8 -c 1 "$cli" bench --device cuda \
    --synthetic $C/qwen3.5-9b.json -p 1 -n 2 --json > "$OUT/ncu_detail.txt" 2>&1
  echo "detail rc $?"; grep -iE "stall|warp cycles|duration|cluster" "$OUT/ncu_detail.txt" | head -20
  cuobjdump -sass -fun '_Z24gdn_decode_sliced_kernelILi32ELi32EEvPfPKfS2_S2_S2_S0_S0_S2_iS2_S2_S2_iiiifPiiii' \
    "$b/libdeltarun.a" > "$OUT/sass_32_32.txt" 2>&1; echo "sass lines $(wc -l < "$OUT/sass_32_32.txt")"
  grep -A12 -i "warp stall\|smsp__pcsamp" "$OUT/ncu_detail.txt" | head -40
fi
echo "total $(( $(date +%s) - t0 )) s"
# only a few files come back from the device: the logs in one archive
(cd "$OUT" && tar czf logs.tgz --exclude logs.tgz --exclude build.log --exclude cmake.log * && \
  find . -maxdepth 1 -type f ! -name logs.tgz ! -name bench.log ! -name gdn.log -delete)
