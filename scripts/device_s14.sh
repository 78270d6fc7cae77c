#!/usr/bin/env bash
# Session 14's device call: the persistent-kernel probe
# (bench/cuda/persist_probe.cu), then (bench) the engine's decode of the
# same shape for context.
# Usage: scripts/device_s14.sh [probe] [bench]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-probe}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
targets="persist_probe"
[[ "$what" == *bench* ]] && targets="$targets deltarun_cli"
dr_device_build "$b" $targets
echo "built in $(( $(date +%s) - t0 )) s"
if [[ "$what" == *probe* ]]; then
  for l in ${PROBE_LAYERS:-8 4}; do timeout 120 "$b/persist_probe" "$l" 20 2>&1 | tee -a "$OUT/probe.log"; done
fi
if [[ "$what" == *bench* ]]; then
  for s in 35b8 08b; do
    case $s in 35b8) a="--synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8";; 08b) a="--synthetic bench/configs/qwen3.5-0.8b.json";; esac
    timeout 200 "$b/deltarun" bench --device cuda $a -p 128 -n 256 --json 2>>"$OUT/bench_err.log" | tee -a "$OUT/bench.log"
  done
fi
