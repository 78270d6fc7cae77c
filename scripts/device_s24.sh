#!/usr/bin/env bash
# Session 24 on the GPU machine: the whole ctest suite of a CUDA build (as
# device_s15.sh ctest), then the host CPU at quant level avx2 (an AVX2-only
# CPU's kernels, DR_CPU_QLEVEL=avx2): q4 decode with the 8-bit-digit GEMV
# and with the FMA one (DR_CPU_QDIGITS=1 / 0, one CPU-only build,
# alternated), and test_quant on that CPU (every level it has).
# Usage: scripts/device_s24.sh [ctest] [avx2]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-ctest avx2}"
if [[ "$what" == *ctest* ]]; then
  bash scripts/device_s15.sh ctest
fi
decode() { # CONFIG THREADS [extra]: decode tok/s and floor fraction
  local c=$1 t=$2; shift 2
  "$root/build-cpu24/deltarun" bench --synthetic "bench/configs/qwen3.5-$c.json" --quant q4 --quant-random -p 4 -n 32 \
    -r 3 -t "$t" --json "$@" 2>/dev/null | tail -1 |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f (%.1f%%)" % (d["decode_tok_s"], 100 * d["floor_fraction"]))' 2>/dev/null ||
    echo failed
}
if [[ "$what" == *avx2* ]]; then
  dr_cpu_builds "$root/build-cpu24:$root"
  make -C "$root/build-cpu24" -j"$(nproc)" test_quant > "$OUT/make_tq.log" 2>&1 || echo "test_quant build failed"
  "$root/build-cpu24/tests/test_quant" > "$OUT/test_quant.log" 2>&1; echo "test_quant rc $?"
  grep -E "FAIL|matmul_q avx2|best level" "$OUT/test_quant.log" | head -6
  for r in 1 2; do
    for ct in "0.8b 16" "0.8b 4" "2b 16" "35b-a3b 16"; do
      set -- $ct; x=""; [ "$1" = 35b-a3b ] && x="--layers 8"
      echo "round $r $1 t=$2 fma $(DR_CPU_QLEVEL=avx2 DR_CPU_QDIGITS=0 decode "$1" "$2" $x) digits $(DR_CPU_QLEVEL=avx2 DR_CPU_QDIGITS=1 decode "$1" "$2" $x)"
    done
  done
fi
