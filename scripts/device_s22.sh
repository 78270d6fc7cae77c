#!/usr/bin/env bash
# Session 22 on the GPU machine: the whole ctest suite of a CUDA build (as
# device_s15.sh ctest), then the host CPU's q4 decode with the weights on
# 2 MiB pages and without (DR_CPU_HUGE_WEIGHTS=1 / 0, one CPU-only build,
# alternated): 0.8B, 2B and 35B-A3B's first 8 layers.
# Usage: scripts/device_s22.sh [ctest] [decode]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-ctest decode}"
if [[ "$what" == *ctest* ]]; then
  bash scripts/device_s15.sh ctest
fi
if [[ "$what" == *decode* ]]; then
  dr_cpu_builds "$root/build-cpu22:$root"
  lscpu | grep -E "Model name|^CPU\(s\)"; cat /sys/kernel/mm/transparent_hugepage/enabled
  for r in 1 2; do for c in "0.8b" "2b" "35b-a3b"; do for hw in 0 1; do
    x=""; [ "$c" = 35b-a3b ] && x="--layers 8"
    j=$(DR_CPU_HUGE_WEIGHTS=$hw "$root/build-cpu22/deltarun" bench --synthetic bench/configs/qwen3.5-$c.json $x --quant q4 --quant-random -p 16 -n 64 --json 2>/dev/null | tail -1)
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('round %s %-8s huge %s decode %.2f tok/s floor %.1f%% bw %.1f GB/s' % (sys.argv[2], sys.argv[3], sys.argv[4], d['decode_tok_s'], 100 * d['floor_fraction'], d['measured_bandwidth_gb_s']))" "$j" $r $c $hw 2>/dev/null || echo "$c huge $hw failed"
  done; done; done
fi
