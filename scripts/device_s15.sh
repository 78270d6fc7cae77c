#!/usr/bin/env bash
# Session 15's check of the tree on a GPU: build every target, run the whole
# ctest suite (CPU and CUDA tests, goldens, the persistent-kernel probe's
# bit-identity check), compute-sanitizer memcheck of one golden, then the
# decode/prefill benches of the four shapes of PERFORMANCE.md.
# Usage: scripts/device_s15.sh [ctest] [memcheck] [bench]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-ctest memcheck bench}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
t0=$(date +%s)
b="$root/build-dev"
dr_device_build "$b" all
echo "built in $(( $(date +%s) - t0 )) s"
if [[ "$what" == *ctest* ]]; then
  (cd "$b" && ctest -j8 --timeout 600 > "$OUT/ctest.log" 2>&1)
  tail -5 "$OUT/ctest.log"
  grep -E "Failed|Not Run|\*\*\*" "$OUT/ctest.log" | head -20
  (cd "$b" && ctest -R cuda_persist_probe -V 2>&1 | tail -20 > "$OUT/probe.log")
  grep -i -E "identical|differ|sep|per_pf" "$OUT/probe.log" | head -12
fi
if [[ "$what" == *memcheck* ]]; then
  timeout 300 compute-sanitizer --tool memcheck --leak-check full "$b/tests/test_golden" tests/data/moe-bf16 --device cuda \
    > "$OUT/memcheck.log" 2>&1; echo "memcheck rc $?"
  grep -E "ERROR SUMMARY|LEAK SUMMARY|bytes leaked" "$OUT/memcheck.log" | head -5
fi
if [[ "$what" == *bench* ]]; then
  C=bench/configs
  for a in "--synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 128" \
           "--synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256" \
           "--synthetic $C/qwen3.5-9b.json -p 128 -n 128" \
           "--synthetic $C/qwen3.5-0.8b.json -p 128 -n 256"; do
    j=$(timeout 300 "$b/deltarun" bench --device cuda $a --json 2>>"$OUT/bench_err.log")
    echo "$a $j" >> "$OUT/bench.log"
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-60s decode %7.1f tok/s %5.1f%% of the floor' % (sys.argv[2], d['decode_tok_s'], 100*d['floor_fraction']))" "$j" "$a" 2>/dev/null || { echo "$a: failed"; tail -2 "$OUT/bench_err.log"; }
  done
fi
