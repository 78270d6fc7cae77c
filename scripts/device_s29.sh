#!/usr/bin/env bash
# Session 29 on the GPU machine: this tree against an older one, switches of
# this tree, and a kernel timeline, in one call.
#   tests: every CUDA test and golden of this tree (default settings, then
#       again under each VAR=VAL in TEST_ENVS).
#   ab: decode of the older tree's deltarun (OLDSRC, as device_s28.sh) and
#       this tree's, then this tree's under each VAR=VAL in ENVS (e.g.
#       "DR_CUDA_QGEMV_RU=22"), alternated in each round (ROUNDS, default 2)
#       over SHAPES (default "35b8 35b 9b 08b") with QUANT (default
#       "--quant q4 --quant-random").
#       VARIANTS="name:-DFLAG=1[,..] ..": this tree built again with those
#       nvcc flags (CUDAFLAGS, commas for spaces) as more columns.
#   tl: kernel timelines of this tree (-DDR_CUDA_TIMELINE=ON build) for
#       TL_SHAPES (default "35b8"), same QUANT.
#   kern: DR_BENCH_QUANT=1 tests/bench_cuda of this tree (q4 T=1 rows).
#   memcheck: compute-sanitizer memcheck of tests/test_cuda_quant (MC_T s).
# Usage: [OLDSRC=build-oldsrc] [ENVS=..] [TEST_ENVS=..] scripts/device_s29.sh [tests] [ab] [tl] [kern] [memcheck]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests ab}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
t0=$(date +%s)
b="$root/build-dev"
dr_device_build "$b" deltarun_cli $dr_test_targets \
  $([[ "$what" == *kern* ]] && echo bench_cuda)
echo "built in $(( $(date +%s) - t0 )) s"
old=""
declare -A vbin=()
if [[ "$what" == *ab* ]]; then
  # compile-time variants of this tree, built beside the old tree at once
  # (each build is one long nvcc of quant.cu: they run side by side)
  for v in ${VARIANTS:-}; do
    ( OUT="$OUT/var_${v%%:*}"; mkdir -p "$OUT"
      export CUDAFLAGS="${v#*:}"; export CUDAFLAGS="${CUDAFLAGS//,/ }"; dr_device_build "$root/build-var-${v%%:*}" deltarun_cli ) &
  done
  [[ -n "${OLDSRC:-}" ]] && old=$(dr_device_build_old "$OLDSRC")
  wait
  for v in ${VARIANTS:-}; do
    n=${v%%:*}; f="$root/build-var-$n/deltarun"
    [[ -x "$f" ]] && vbin[$n]="$f" || echo "variant $n failed to build"
  done
  echo "old tree and variants built in $(( $(date +%s) - t0 )) s: old ${old:-none} variants ${!vbin[*]}"
fi
if [[ "$what" == *tests* ]]; then
  for e in "" ${TEST_ENVS:-}; do
    log="$OUT/tests${e:+_$e}.log"
    dr_device_tests "$b" "$log" $e
    echo "tests ${e:-default}: $(grep -h -E '^[0-9]+ passed, [0-9]+ failed' "$log" | awk '{p+=$1; f+=$3} END {print p " passed, " f " failed"}')"
  done
fi
if [[ "$what" == *ab* ]]; then
  for r in $(seq 1 "${ROUNDS:-2}"); do
    for s in ${SHAPES:-35b8 35b 9b 08b}; do
      line="round $r $s:"
      for v in ${old:+old} new ${!vbin[*]} ${ENVS:-}; do
        bin="$b/deltarun"; e=()
        [[ $v == old ]] && bin="$old"
        [[ -n "${vbin[$v]:-}" ]] && bin="${vbin[$v]}"
        [[ $v == *=* ]] && e=("$v")
        line="$line  $v $(dr_bench_rate "$v" "$s" "$bin" "${QUANT:---quant q4 --quant-random}" "${e[@]}")"
      done
      echo "$line"
    done
  done
fi
if [[ "$what" == *tl* ]]; then
  DR_CMAKE_EXTRA=-DDR_CUDA_TIMELINE=ON dr_device_build "$root/build-tl" deltarun_cli
  for s in ${TL_SHAPES:-35b8}; do
    echo "== $s"
    dr_timeline "$s" "$s" "${QUANT:---quant q4 --quant-random}"
  done
fi
if [[ "$what" == *kern* ]]; then
  DR_BENCH_QUANT=1 timeout 300 "$b/tests/bench_cuda" > "$OUT/kern.log" 2>&1
  grep -E "floor|q4   T=1 |status" "$OUT/kern.log"
fi
if [[ "$what" == *memcheck* ]]; then
  dr_device_memcheck "$b"
fi
