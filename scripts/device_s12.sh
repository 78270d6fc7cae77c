#!/usr/bin/env bash
# Session 12's device call: kernel timelines (timeline.cuh) of replayed
# decode steps for this tree and for a second source tree (SRC2, default
# wt0e: commit 0e041fa unpacked there, session 11's unexplained fast 0.8B),
# shape by shape (TL_SHAPES: 08b and / or 35b8), the second tree's runs
# named "b"; TL_ENVS: settings for extra runs of this tree (VAR=val[,..]).
# Prints each run's critical-path table and keeps the full text in $OUT.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
src2="$root/${SRC2:-wt0e}"
t0=$(date +%s)
DR_CMAKE_EXTRA=-DDR_CUDA_TIMELINE=ON dr_device_build "$root/build-tl" deltarun_cli
[[ -d "$src2" ]] && (root="$src2"; DR_CMAKE_EXTRA=-DDR_CUDA_TIMELINE=ON dr_device_build "/tmp/build-tl2" deltarun_cli)
echo "built in $(( $(date +%s) - t0 )) s"
read -r -a envs <<< "${TL_ENVS-}"
run() { # name, binary, kernel sources, env, bench arguments
  local nm="$1" cli="$2" srcd="$3" e="$4"; shift 4
  local f="$OUT/tl_$nm.bin"
  env ${e//,/ } DR_CUDA_TIMELINE="$f" timeout 150 "$cli" bench --device cuda --synthetic "$@" -p 128 -n 48 --json \
    > "$OUT/tl_$nm.json" 2>>"$OUT/err.log"
  python3 scripts/timeline.py "$f" --steps 30 --src "$srcd" > "$OUT/tl_$nm.txt" 2>&1
  echo "== $nm $e"; head -1 "$OUT/tl_$nm.txt"; sed -n '/critical-path/,$p' "$OUT/tl_$nm.txt" | head -16
  rm -f "$f"
}
for s in ${TL_SHAPES:-08b 35b8}; do
  case $s in
    08b) args="bench/configs/qwen3.5-0.8b.json" ;;
    35b8) args="bench/configs/qwen3.5-35b-a3b.json --layers 8" ;;
  esac
  run "${s}_a" "$root/build-tl/deltarun" src/ops/cuda "" $args
  [[ -x "/tmp/build-tl2/deltarun" ]] && run "${s}_b" "/tmp/build-tl2/deltarun" "$src2/src/ops/cuda" "" $args
  for e in "${envs[@]}"; do run "${s}_a_${e//[^A-Za-z0-9]/_}" "$root/build-tl/deltarun" src/ops/cuda "$e" $args; done
done
tail -3 "$OUT/err.log" 2>/dev/null
