#!/usr/bin/env bash
# Session 27 on the GPU machine: the shared expert's gate/up blocks first in
# the routing gate/up kernel's grid (DR_CUDA_MOE_SHFIRST 0 / 1): every CUDA
# test and golden under both, decode A/Bs alternated within each round, and
# the per-block spread of the gate/up kernel (scripts/timeline_blocks.py).
# Usage: scripts/device_s27.sh [tests] [ab] [blocks]  (SHAPES, ROUNDS as device_s26.sh)
set -uo pipefail
here="$(dirname "$0")"
what="${*:-tests ab blocks}"
export VAR=DR_CUDA_MOE_SHFIRST VALS="${VALS:-0 1}"
if [[ "$what" == *tests* || "$what" == *ab* ]]; then
  bash "$here/device_s26.sh" $(echo "$what" | grep -o -E "tests|ab" | tr '\n' ' ')
fi
if [[ "$what" == *blocks* ]]; then
  source "$here/device_env.sh"
  DR_CMAKE_EXTRA=-DDR_CUDA_TIMELINE=ON dr_device_build "$root/build-tl" deltarun_cli
  for m in $VALS; do
    echo "== DR_CUDA_MOE_SHFIRST=$m"
    f="$OUT/blk_$m.bin"
    DR_CUDA_MOE_SHFIRST=$m DR_CUDA_TIMELINE="$f" timeout 120 "$root/build-tl/deltarun" bench --device cuda --synthetic \
      bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 48 --json > /dev/null 2>> "$OUT/err.log"
    python3 "$here/timeline_blocks.py" "$f" moe_gu_route_bf16_kernel --gridx 64 --launches 160
    python3 "$here/timeline.py" "$f" --steps 30 | sed -n '3,9p'
    rm -f "$f"
  done
fi
