#!/usr/bin/env bash
# Session 23 on the GPU machine: the whole ctest suite of a CUDA build (as
# device_s15.sh ctest), then the host CPU's quantized prefill of a few
# tokens with the multi-token GEMV and without (DR_CPU_QMULTI=1 / 0, one
# CPU-only build, alternated), and with x prepared on the calling thread
# (a second build with -DQ_PREP_POOL_T=100000).
# Usage: scripts/device_s23.sh [ctest] [prefill]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-ctest prefill}"
if [[ "$what" == *ctest* ]]; then
  bash scripts/device_s15.sh ctest
fi
bench() { # BINARY CONFIG QUANT P [extra]: prefill tok/s
  local b=$1 c=$2 q=$3 p=$4; shift 4
  "$b" bench --synthetic "bench/configs/qwen3.5-$c.json" --quant "$q" --quant-random -p "$p" -n 4 -r 3 --json "$@" \
    2>/dev/null | tail -1 | python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["prefill_tok_s"])' 2>/dev/null || echo failed
}
if [[ "$what" == *prefill* ]]; then
  dr_cpu_builds "$root/build-cpu23:$root"
  cmake -S "$root" -B "$root/build-cpu23s" -DCMAKE_BUILD_TYPE=Release -DDR_CUDA=OFF \
    -DDR_WERROR=OFF -DCMAKE_C_FLAGS=-DQ_PREP_POOL_T=100000 > "$OUT/cmake_s.log" 2>&1 &&
    make -C "$root/build-cpu23s" -j"$(nproc)" deltarun_cli > "$OUT/make_s.log" 2>&1 || echo "serial-prep build failed"
  grep -o -E "avx512_vnni|avx512_bf16|amx_bf16" /proc/cpuinfo | sort -u | tr '\n' ' '; echo
  b="$root/build-cpu23/deltarun" s="$root/build-cpu23s/deltarun"
  for r in 1; do
    for cq in "0.8b q4" "0.8b q8" "35b-a3b q4"; do
      set -- $cq; x=""; [ "$1" = 35b-a3b ] && x="--layers 8"
      for p in 2 4 8 16 32 64 256; do
        [ "$1" = 35b-a3b ] && [ "$p" -ne 16 ] && [ "$p" -ne 64 ] && [ "$p" -ne 256 ] && continue
        [ "$1" != 35b-a3b ] && [ "$p" -eq 256 ] && continue
        echo "round $r $1 $2 p=$p off $(DR_CPU_QMULTI=0 bench "$b" "$1" "$2" "$p" $x) on $(bench "$b" "$1" "$2" "$p" $x) serial-prep $(bench "$s" "$1" "$2" "$p" $x)"
      done
    done
  done
fi
