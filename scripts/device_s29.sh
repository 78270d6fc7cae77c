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
#       TL_SHAPES (default "35b8"), same QUANT, then for each kernel of
#       TL_BLOCKS (e.g. "q2_moe_gate_up_kernel:64") the per-block spread of
#       scripts/timeline_blocks.py (grid width after the colon). Each
#       variant of VARIANTS gets a timeline build and timelines too
#       (TL_BLOCKS_name, where set, instead of TL_BLOCKS).
#   kern: DR_BENCH_QUANT=1 tests/bench_cuda of this tree (q4 T=1 rows).
#   memcheck: compute-sanitizer memcheck of tests/test_cuda_quant (MC_T s).
# Usage: [OLDSRC=build-oldsrc] [ENVS=..] [TEST_ENVS=..] scripts/device_s29.sh [tests] [ab] [tl] [kern] [memcheck]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests ab}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
t0=$(date +%s)
b="$root/build-dev"
old=""
declare -A vbin=()
# Everything else builds beside this tree's build (each is one long nvcc of
# quant.cu, so they run side by side) and the tests: the timeline builds of
# this tree and its variants, the variants, the old tree.
vb() { # NAME DIR FLAGS [CMAKE_EXTRA]: this tree with nvcc FLAGS (commas for spaces) into DIR
  ( OUT="$OUT/$1"; mkdir -p "$OUT"; export DR_CMAKE_EXTRA="${4:-}"
    export CUDAFLAGS="${3//,/ }"; dr_device_build "$2" deltarun_cli ) &
}
if [[ "$what" == *tl* ]]; then
  for v in "tl:" ${VARIANTS:-}; do vb "tlb_${v%%:*}" "$root/build-tl-${v%%:*}" "${v#*:}" -DDR_CUDA_TIMELINE=ON; done
fi
if [[ "$what" == *ab* ]]; then
  for v in ${VARIANTS:-}; do vb "var_${v%%:*}" "$root/build-var-${v%%:*}" "${v#*:}"; done
  [[ -n "${OLDSRC:-}" ]] && { dr_device_build_old "$OLDSRC" > "$OUT/old_bin" & }
fi
dr_device_build "$b" deltarun_cli $dr_test_targets \
  $([[ "$what" == *kern* ]] && echo bench_cuda)
echo "built in $(( $(date +%s) - t0 )) s"
if [[ "$what" == *tests* ]]; then
  for e in "" ${TEST_ENVS:-}; do
    log="$OUT/tests${e:+_$e}.log"
    dr_device_tests "$b" "$log" $e
    echo "tests ${e:-default}: $(grep -h -E '^[0-9]+ passed, [0-9]+ failed' "$log" | awk '{p+=$1; f+=$3} END {print p " passed, " f " failed"}')"
  done
fi
wait
if [[ "$what" == *ab* ]]; then
  old=$(cat "$OUT/old_bin" 2>/dev/null)
  for v in ${VARIANTS:-}; do
    n=${v%%:*}; f="$root/build-var-$n/deltarun"
    [[ -x "$f" ]] && vbin[$n]="$f" || echo "variant $n failed to build"
  done
  echo "old tree and variants built by $(( $(date +%s) - t0 )) s: old ${old:-none} variants ${!vbin[*]}"
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
  for v in "tl:" ${VARIANTS:-}; do
    n=${v%%:*}
    [[ -x "$root/build-tl-$n/deltarun" ]] || { echo "timeline build $n failed"; continue; }
    rm -rf "$root/build-tl"; ln -s "build-tl-$n" "$root/build-tl"
    for s in ${TL_SHAPES:-35b8}; do
      echo "== $n $s"
      DR_TL_KEEP=1 dr_timeline "${n}_$s" "$s" "${QUANT:---quant q4 --quant-random}"
      kbs="TL_BLOCKS_$n"
      for kb in ${!kbs:-${TL_BLOCKS:-}}; do
        python3 scripts/timeline_blocks.py "$OUT/tl_${n}_$s.bin" "${kb%%:*}" --gridx "${kb#*:}" --launches 160
      done
      rm -f "$OUT/tl_${n}_$s.bin"
    done
  done
fi
if [[ "$what" == *kern* ]]; then
  DR_BENCH_QUANT=1 timeout 300 "$b/tests/bench_cuda" > "$OUT/kern.log" 2>&1
  grep -E "floor|q4   T=1 |status" "$OUT/kern.log"
fi
if [[ "$what" == *memcheck* ]]; then
  dr_device_memcheck "$b"
fi
