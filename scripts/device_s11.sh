#!/usr/bin/env bash
# Session 11's device call: the CUDA tests and goldens (also under each
# setting of AB_ENVS), then decode of this tree against build-old/deltarun
# (the session's first commit, built on the dev box and carried) and against
# build-cur/deltarun when carried (an intermediate commit), and against each
# setting of AB_ENVS (space-separated settings, each VAR=val[,VAR=val];
# none by default), alternated (AB_SHAPES: 35b8 and / or 08b, default
# 35b8);
# (tl) the kernel timeline with the defaults and with the last setting.
# (sass) the SASS of the decode GEMV kernels, to see where their first
# weight loads sit against the PDL wait.
# (plain) also builds this tree with -DDR_CUDA_PRELOAD_PLAIN (a plain PDL
# wait; PLAIN_FLAG: other CUDA flags instead) and runs it in the A/B;
# NO_OLD=1 leaves build-old out; AB_ROUNDS: rounds (2). TEST_ENVS / BIG_ENVS: the settings for the
# tests / the 40-layer run instead of AB_ENVS.
# Usage: scripts/device_s11.sh [tests] [plain] [ab] [big] [tl] [memcheck] [sass]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests ab tl}"
read -r -a envs <<< "${AB_ENVS-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda test_cuda_decode test_cuda_fused test_cuda_prefill test_golden deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
if [[ "$what" == *plain* ]]; then # this tree with the weight preloads as plain loads (the baseline of dr_pdl_wait_fenced)
  DR_CMAKE_EXTRA=-DCMAKE_CUDA_FLAGS=${PLAIN_FLAG:--DDR_CUDA_PRELOAD_PLAIN} dr_device_build "$root/build-plain" deltarun_cli
fi
C=bench/configs
if [[ "$what" == *tests* ]]; then
  T="$OUT/tests.log"
  dr_device_tests "$b" "$T"
  read -r -a tenvs <<< "${TEST_ENVS-${AB_ENVS-}}"
  for e in "${tenvs[@]}"; do dr_device_tests "$b" "$T" ${e//,/ }; done
  echo "tests: $(grep -c '^ok' "$T") ok lines, $(grep -c -E '^FAIL|not ok' "$T") failures"
  grep -E "^FAIL|not ok" "$T" | head -10
fi
one() { # label, binary, env (VAR=val or empty), bench arguments
  local nm="$1" cli="$2" e="$3"; shift 3
  local j
  j=$(env ${e//,/ } timeout 200 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $* $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-32s decode %7.1f tok/s  %5.1f%% of the floor' % (sys.argv[2], d['decode_tok_s'], 100*d['floor_fraction']))" "$j" "$nm" 2>/dev/null || { echo "$nm: failed"; tail -2 "$OUT/bench_err.log"; }
}
variants() { # label, bench arguments: old, new, new + each setting
  local nm="$1"; shift
  [[ -z "${NO_OLD-}" ]] && one "$nm-old" "$root/build-old/deltarun" "" "$@"
  [[ -x "$root/build-cur/deltarun" ]] && one "$nm-cur" "$root/build-cur/deltarun" "" "$@"
  [[ -x "$root/build-plain/deltarun" ]] && one "$nm-plain" "$root/build-plain/deltarun" "" "$@"
  one "$nm-new" "$b/deltarun" "" "$@"
  for e in "${envs[@]}"; do one "$nm-new-$e" "$b/deltarun" "$e" "$@"; done
}
if [[ "$what" == *sass* ]]; then
  for f in matmul moe; do
    o=$(find "$b" -name "$f.cu.o" | head -1)
    cuobjdump -sass "$o" > "$OUT/sass_$f.txt" 2>&1
  done
  python3 - "$OUT/sass_matmul.txt" "$OUT/sass_moe.txt" <<'PY'
import re, sys
# per kernel with a PDL wait (ACQBULK): its 128-bit weight loads before and after the wait
for fn in sys.argv[1:]:
    stats = {}
    cur = None
    for line in open(fn):
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = m.group(1); stats[cur] = [0, 0, False]
            continue
        if cur is None or ";" not in line:
            continue
        st = stats[cur]
        if "ACQBULK" in line:
            st[2] = True
        elif "LDG.E.NA.128" in line:
            st[1 if st[2] else 0] += 1
    for k, (pre, post, w) in stats.items():
        if w and ("bfloat16" in k or "moe" in k) and ("gemv" in k or "moe" in k):
            print("sass %-70s weight loads before the wait %2d, after %3d" % (k[:70], pre, post))
PY
fi
if [[ "$what" == *ab* ]]; then
  for r in $(seq "${AB_ROUNDS:-2}"); do
    [[ "${AB_SHAPES:-35b8}" == *35b8* ]] && variants 35B-8L --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
    [[ "${AB_SHAPES:-35b8}" == *08b* ]] && variants 0.8B --synthetic $C/qwen3.5-0.8b.json -p 128 -n 256
  done
fi
if [[ "$what" == *big* ]]; then
  read -r -a envs <<< "${BIG_ENVS-${AB_ENVS-}}"
  variants 35B-40L --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 128
fi
if [[ "$what" == *tl* ]]; then
  DR_CMAKE_EXTRA=-DDR_CUDA_TIMELINE=ON dr_device_build "$root/build-tl" deltarun_cli
  e="${envs[${#envs[@]}-1]:-}"
  for nm in 35b8 35b8e; do
    [[ $nm == *e && -z "$e" ]] && continue
    f="$OUT/tl_$nm.bin"
    ee=""; [[ $nm == *e ]] && ee="$e"
    env ${ee//,/ } DR_CUDA_TIMELINE="$f" timeout 150 "$root/build-tl/deltarun" bench --device cuda --synthetic \
      $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 48 --json > /dev/null 2>>"$OUT/err.log"
    python3 scripts/timeline.py "$f" --steps 30 > "$OUT/tl_$nm.txt" 2>&1
    echo "== timeline $nm $ee"; head -1 "$OUT/tl_$nm.txt"; sed -n '/critical-path/,$p' "$OUT/tl_$nm.txt" | head -24
    rm -f "$f"
  done
fi
if [[ "$what" == *memcheck* ]]; then
  timeout 150 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    "$b/tests/test_golden" tests/data/moe-bf16 --device cuda --quick > "$OUT/memcheck_moe.log" 2>&1
  echo "memcheck moe-bf16 exit $?"; grep -E "ERROR SUMMARY|LEAK" "$OUT/memcheck_moe.log" | head -3
fi
