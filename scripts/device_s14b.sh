#!/usr/bin/env bash
# Session 14's A/B of an engine change: this tree's CUDA tests and goldens,
# then decode of this tree against the tree in .s14old (git archive of the
# commit before, carried), alternated ROUNDS times (default 3) on SHAPES
# (35b8 35b40 08b by default).
# Usage: scripts/device_s14b.sh [tests] [ab]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests ab}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
t0=$(date +%s)
b="$root/build-dev"
dr_device_build "$b" test_cuda test_cuda_decode test_cuda_fused test_cuda_prefill test_golden deltarun_cli
(root="$root/.s14old"; dr_device_build /tmp/b_old deltarun_cli)
echo "built in $(( $(date +%s) - t0 )) s"
if [[ "$what" == *tests* ]]; then
  T="$OUT/tests.log"
  dr_device_tests "$b" "$T"
  echo "tests: $(grep -c '^ok' "$T") ok lines, $(grep -c -E '^FAIL|not ok' "$T") failures"
  grep -E "^FAIL|not ok" "$T" | head -10
fi
one() { # label, binary, bench arguments
  local nm="$1" cli="$2"; shift 2
  local j
  j=$(timeout 200 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $* $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-12s decode %7.1f tok/s  %5.1f%% of the floor' % (sys.argv[2], d['decode_tok_s'], 100*d['floor_fraction']))" "$j" "$nm" 2>/dev/null || { echo "$nm: failed"; tail -2 "$OUT/bench_err.log"; }
}
if [[ "$what" == *ab* ]]; then
  C=bench/configs
  for r in $(seq "${ROUNDS:-3}"); do
    for s in ${SHAPES:-35b8 35b40 08b}; do
      case $s in
        35b8) a="--synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256";;
        35b40) a="--synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 128";;
        08b) a="--synthetic $C/qwen3.5-0.8b.json -p 128 -n 256";;
      esac
      one "$s-old" /tmp/b_old/deltarun $a
      one "$s-new" "$b/deltarun" $a
    done
  done
fi
