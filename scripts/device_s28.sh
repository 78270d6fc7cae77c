#!/usr/bin/env bash
# Session 28 on the GPU machine: this tree against an older one, same call.
#   tests: every CUDA test and golden of this tree (default settings).
#   ab: decode of this tree's deltarun and of the older one's, alternated in
#       each round (ROUNDS, default 2) over SHAPES (default "35b8 9b 08b"),
#       with QUANT (default "--quant q4 --quant-random").
#   kern: DR_BENCH_QUANT=1 tests/bench_cuda of this tree (q4 T=1 rows).
#   memcheck: compute-sanitizer memcheck of tests/test_cuda_quant (MC_T s).
# OLDSRC: the older source tree, unpacked under the repo (e.g. `git archive
# REV | tar -x -C build-oldsrc --exclude=tests/data`, carried as build-oldsrc).
# Usage: OLDSRC=build-oldsrc scripts/device_s28.sh [tests] [ab] [kern] [memcheck]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests ab kern}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
t0=$(date +%s)
b="$root/build-dev"
dr_device_build "$b" deltarun_cli test_cuda test_cuda_decode test_cuda_fused test_cuda_prefill test_cuda_quant test_golden bench_cuda
echo "built in $(( $(date +%s) - t0 )) s"
old=""
if [[ -n "${OLDSRC:-}" && "$what" == *ab* ]]; then
  old=$(dr_device_build_old "$OLDSRC")
  echo "old tree built in $(( $(date +%s) - t0 )) s: ${old:-FAILED}"
fi
if [[ "$what" == *tests* ]]; then
  dr_device_tests "$b" "$OUT/tests.log"
  echo "tests: $(grep -h -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/tests.log" | awk '{p+=$1; f+=$3} END {print p " passed, " f " failed"}')"
fi
declare -A args=([08b]="qwen3.5-0.8b.json -p 128 -n 256" [35b8]="qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256"
                 [35b]="qwen3.5-35b-a3b.json -p 128 -n 128" [9b]="qwen3.5-9b.json -p 128 -n 128")
rate() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%.1f (%.1f%%)' % (d['decode_tok_s'], 100*d['floor_fraction']))" "$1" 2>/dev/null || echo failed; }
if [[ "$what" == *ab* ]]; then
  for r in $(seq 1 "${ROUNDS:-2}"); do
    for s in ${SHAPES:-35b8 9b 08b}; do
      line="round $r $s:"
      for bin in ${old:+$old} "$b/deltarun"; do
        j=$(timeout 300 "$bin" bench --device cuda --synthetic bench/configs/${args[$s]} ${QUANT:---quant q4 --quant-random} \
          --json 2>>"$OUT/bench_err.log")
        echo "$s $bin $j" >> "$OUT/bench.log"
        line="$line  $([[ $bin == "$old" ]] && echo old || echo new) $(rate "$j")"
      done
      echo "$line"
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
