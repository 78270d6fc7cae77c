#!/usr/bin/env bash
# Session 27 on the GPU machine: the per-block spread of the routing MoE
# gate/up kernel (scripts/timeline_blocks.py: when each grid row's blocks
# start, wait, route, stage x, finish their dot and end) and the step's
# timeline, on a -DDR_CUDA_TIMELINE=ON build. The A/Bs of the session used
# scripts/device_s26.sh with VAR=DR_CUDA_MOE_NORM / DR_CUDA_MOE_SHFIRST,
# switches that exist only at commits 368c818-918e9f4 (MOE_NORM; 62d7f3a also
# has DR_CUDA_CARVEOUT) and 129acf9 (SHFIRST)
# (docs/CUDA.md, session 27).
# Usage: scripts/device_s27.sh [SHAPE_CONFIG] (default qwen3.5-35b-a3b.json --layers 8)
set -uo pipefail
here="$(dirname "$0")"
source "$here/device_env.sh"
DR_CMAKE_EXTRA=-DDR_CUDA_TIMELINE=ON dr_device_build "$root/build-tl" deltarun_cli
f="$OUT/blk.bin"
DR_CUDA_TIMELINE="$f" timeout 120 "$root/build-tl/deltarun" bench --device cuda --synthetic \
  bench/configs/${*:-qwen3.5-35b-a3b.json --layers 8} -p 128 -n 48 --json > /dev/null 2>> "$OUT/err.log"
python3 "$here/timeline_blocks.py" "$f" moe_gu_route_bf16_kernel --gridx 64 --launches 160
python3 "$here/timeline.py" "$f" --steps 30 | sed -n '1,9p'
rm -f "$f"
