#!/usr/bin/env bash
# Session 26 on the GPU machine: one switch's settings against each other.
# VAR (default DR_CUDA_NORM_WAVE) takes each value of VALS (default "0 1"):
#   tests: every CUDA test and golden under each setting.
#   ab: decode A/B, the settings alternated within each round.
#   tl: kernel timelines of each setting (-DDR_CUDA_TIMELINE=ON build).
#   kern: DR_BENCH_QUANT=1 tests/bench_cuda under each setting (quantized GEMV
#   kernels; session 28).
# SHAPES (default "08b 35b8"): any of 08b 2b 35b8 35b 9b. ROUNDS (default 3).
# QUANT (default none): bench flags for ab and tl, e.g. "--quant q4 --quant-random".
# Usage: [VAR=.. VALS=..] scripts/device_s26.sh [tests] [ab] [tl] [kern]
# (DR_CUDA_PDL_GDN=3, measured with VAR=DR_CUDA_PDL_GDN VALS="0 3", exists
# only at commit c8aee09: docs/CUDA.md, session 26.)
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests ab}"
VAR="${VAR:-DR_CUDA_NORM_WAVE}"; VALS="${VALS:-0 1}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
t0=$(date +%s)
b="$root/build-dev"
dr_device_build "$b" deltarun_cli $dr_test_targets \
  $([[ "$what" == *kern* ]] && echo bench_cuda)
echo "built in $(( $(date +%s) - t0 )) s"
if [[ "$what" == *tests* ]]; then
  for m in $VALS; do
    dr_device_tests "$b" "$OUT/tests_$m.log" $VAR=$m
    echo "tests $VAR=$m: $(grep -h -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/tests_$m.log" | awk '{p+=$1; f+=$3} END {print p " passed, " f " failed"}')"
  done
fi
if [[ "$what" == *ab* ]]; then
  for r in $(seq 1 "${ROUNDS:-3}"); do
    for s in ${SHAPES:-08b 35b8}; do
      line="round $r $s:"
      for m in $VALS; do
        line="$line  mode $m $(dr_bench_rate "$m" "$s" "$b/deltarun" "${QUANT:-}" "$VAR=$m")"
      done
      echo "$line"
    done
  done
fi
if [[ "$what" == *kern* ]]; then
  for m in $VALS; do
    env $VAR=$m DR_BENCH_QUANT=1 timeout 300 "$b/tests/bench_cuda" > "$OUT/kern_$m.log" 2>&1
    echo "== kern $VAR=$m"; grep -E "floor|T=1 |T=4 |moe decode|status" "$OUT/kern_$m.log"
  done
fi
if [[ "$what" == *tl* ]]; then
  DR_CMAKE_EXTRA=-DDR_CUDA_TIMELINE=ON dr_device_build "$root/build-tl" deltarun_cli
  for s in ${SHAPES:-08b 35b8}; do
    for m in $VALS; do
      echo "== $s mode $m"
      dr_timeline "${s}_$m" "$s" "${QUANT:-}" "$VAR=$m"
    done
  done
fi
