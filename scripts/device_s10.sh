#!/usr/bin/env bash
# Session 10's device call: the CUDA tests and goldens, then decode of this
# tree against build-old/deltarun (the previous commit, built on the dev box
# and carried) and against the settings in AB_ENV (default DR_CUDA_PDL_GDN=2),
# alternated, then (tl) the kernel timeline of this tree, with the defaults
# and with AB_ENV. Usage: scripts/device_s10.sh [tests] [ab] [big] [tl] [memcheck]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests ab tl}"
ab_env="${AB_ENV:-DR_CUDA_PDL_GDN=2}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda test_cuda_decode test_cuda_fused test_cuda_prefill test_golden deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
C=bench/configs
if [[ "$what" == *tests* ]]; then
  T="$OUT/tests.log"
  timeout 120 "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 tests/data/long-bf16 >> "$T" 2>&1 || echo "test_cuda_decode FAILED"
  timeout 90 "$b/tests/test_cuda" >> "$T" 2>&1 || echo "test_cuda FAILED"
  timeout 60 "$b/tests/test_cuda_fused" >> "$T" 2>&1 || echo "test_cuda_fused FAILED"
  timeout 60 "$b/tests/test_cuda_prefill" >> "$T" 2>&1 || echo "test_cuda_prefill FAILED"
  env $ab_env timeout 120 "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 tests/data/long-bf16 >> "$T" 2>&1 || echo "test_cuda_decode $ab_env FAILED"
  env $ab_env timeout 120 "$b/tests/test_golden" tests/data/moe-bf16 --device cuda >> "$T" 2>&1 || echo "golden moe-bf16 $ab_env FAILED"
  for fx in dense-f32 moe-bf16 moe-bf16-fused next-f32 long-bf16; do
    timeout 120 "$b/tests/test_golden" "tests/data/$fx" --device cuda >> "$T" 2>&1 || echo "golden $fx FAILED"
  done
  grep -E "^FAIL|passed" "$T" | head -20
fi
if [[ "$what" == *memcheck* ]]; then
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$b/tests/test_cuda" > "$OUT/memcheck_cuda.log" 2>&1
  echo "memcheck test_cuda exit $?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck_cuda.log" | head -3
  timeout 150 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    "$b/tests/test_golden" tests/data/moe-bf16 --device cuda --quick > "$OUT/memcheck_moe.log" 2>&1
  echo "memcheck moe-bf16 exit $?"; grep -E "ERROR SUMMARY|LEAK" "$OUT/memcheck_moe.log" | head -3
fi
one() { # label, binary, env, bench arguments
  local nm="$1" cli="$2" e="$3"; shift 3
  local j
  j=$(env $e timeout 200 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $* $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-26s decode %7.1f tok/s  %5.1f%% of the floor' % (sys.argv[2], d['decode_tok_s'], 100*d['floor_fraction']))" "$j" "$nm" 2>/dev/null || { echo "$nm: failed"; tail -2 "$OUT/bench_err.log"; }
}
if [[ "$what" == *ab* ]]; then
  for sh in "35B-8L --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256" \
            "0.8B --synthetic $C/qwen3.5-0.8b.json -p 128 -n 256"; do
    set -- $sh; nm=$1; shift
    for r in 1 2; do
      one "$nm-old" "$root/build-old/deltarun" "" "$@"
      one "$nm-new" "$b/deltarun" "" "$@"
      one "$nm-new-$ab_env" "$b/deltarun" "$ab_env" "$@"
    done
  done
fi
if [[ "$what" == *big* ]]; then
  for r in 1; do
    one "35B-40L-old" "$root/build-old/deltarun" "" --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 128
    one "35B-40L-new" "$b/deltarun" "" --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 128
    one "35B-40L-new-$ab_env" "$b/deltarun" "$ab_env" --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 128
  done
fi
if [[ "$what" == *tl* ]]; then
  DR_CMAKE_EXTRA=-DDR_CUDA_TIMELINE=ON dr_device_build "$root/build-tl" deltarun_cli
  for sh in "35b8 --synthetic $C/qwen3.5-35b-a3b.json --layers 8" "08b --synthetic $C/qwen3.5-0.8b.json" \
            "35b8e --synthetic $C/qwen3.5-35b-a3b.json --layers 8" "08be --synthetic $C/qwen3.5-0.8b.json"; do
    set -- $sh; nm=$1; shift
    e=""; [[ $nm == *e ]] && e="$ab_env"
    f="$OUT/tl_$nm.bin"
    env $e DR_CUDA_TIMELINE="$f" timeout 150 "$root/build-tl/deltarun" bench --device cuda "$@" -p 128 -n 48 --json > /dev/null 2>>"$OUT/err.log"
    python3 scripts/timeline.py "$f" --steps 30 > "$OUT/tl_$nm.txt" 2>&1
    echo "== timeline $nm $e"; head -1 "$OUT/tl_$nm.txt"; sed -n '/critical-path/,$p' "$OUT/tl_$nm.txt" | head -24
    rm -f "$f"
  done
fi
