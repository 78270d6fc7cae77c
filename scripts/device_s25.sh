#!/usr/bin/env bash
# Session 25 on the GPU machine.
#   avx2: the host CPU at quant level avx2 (an AVX2-only CPU's kernels,
#     DR_CPU_QLEVEL=avx2): q4 decode of this tree against an older one
#     unpacked in old25/ (git archive REV | tar -x -C old25), alternated,
#     and test_quant on that CPU (every level it has).
#   ctest / bench: as device_s15.sh (the CUDA build's whole ctest suite;
#     decode of the four shapes of PERFORMANCE.md).
#   prefill: 35B-A3B (40 layers) prefill of 512 and 8192 tokens on the GPU.
# Usage: scripts/device_s25.sh [avx2] [ctest] [bench] [prefill]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-avx2}"
if [[ "$what" == *ctest* || "$what" == *bench* ]]; then
  bash scripts/device_s15.sh $(echo "$what" | grep -o -E 'ctest|bench' | tr '\n' ' ')
fi
if [[ "$what" == *prefill* ]]; then
  [ -x "$root/build-dev/deltarun" ] || dr_device_build "$root/build-dev" deltarun_cli
  for p in 512 8192; do
    j=$(timeout 300 "$root/build-dev/deltarun" bench --device cuda --synthetic bench/configs/qwen3.5-35b-a3b.json -p $p -n 8 -r 2 \
      --json 2>>"$OUT/bench_err.log")
    echo "prefill $p $j" >> "$OUT/bench.log"
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('35B-A3B prefill %s: %.0f tok/s' % (sys.argv[2], d['prefill_tok_s']))" "$j" "$p" 2>/dev/null ||
      { echo "prefill $p failed"; tail -2 "$OUT/bench_err.log"; }
  done
fi
[[ "$what" == *avx2* ]] || exit 0
decode() { # BUILD CONFIG THREADS [extra]: decode tok/s and floor fraction
  local b=$1 c=$2 t=$3; shift 3
  DR_CPU_QLEVEL=avx2 "$b/deltarun" bench --synthetic "bench/configs/qwen3.5-$c.json" --quant q4 --quant-random -p 4 \
    -n 32 -r 3 -t "$t" --json "$@" 2>/dev/null | tail -1 |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f (%.1f%%)" % (d["decode_tok_s"], 100 * d["floor_fraction"]))' 2>/dev/null ||
    echo failed
}
dr_cpu_builds "$root/build-new25:$root" "$root/build-old25:$root/old25"
make -C "$root/build-new25" -j"$(nproc)" test_quant > "$OUT/make_tq.log" 2>&1 || echo "test_quant build failed"
"$root/build-new25/tests/test_quant" > "$OUT/test_quant.log" 2>&1; echo "test_quant rc $?"
grep -E "FAIL|matmul_q avx2|best level" "$OUT/test_quant.log" | head -6
for r in 1 2 3; do
  for ct in "0.8b 16" "0.8b 4" "2b 16" "2b 4" "35b-a3b 16"; do
    set -- $ct; x=""; [ "$1" = 35b-a3b ] && x="--layers 8"
    echo "round $r $1 t=$2 old $(decode "$root/build-old25" "$1" "$2" $x) new $(decode "$root/build-new25" "$1" "$2" $x)"
  done
done
