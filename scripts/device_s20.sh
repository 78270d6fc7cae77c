#!/usr/bin/env bash
# Session 20 on the GPU machine: the whole ctest suite of a CUDA build (as
# device_s15.sh ctest), then the host CPU's q8 / q4 decode, this tree
# against an older one unpacked in exp20/old (both CPU-only builds),
# alternated, and their bf16 prefill of 512 tokens (AMX where the host has
# it). Usage: scripts/device_s20.sh [ctest] [cpu] [prefill]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-ctest cpu prefill}"
if [[ "$what" == *ctest* ]]; then
  bash scripts/device_s15.sh ctest
fi
if [[ "$what" == *cpu* || "$what" == *prefill* ]]; then
  dr_cpu_builds "$root/build-cpu20:$root" "$root/exp20/old/b:$root/exp20/old"
fi
if [[ "$what" == *cpu* ]]; then
  for r in 1 2 3; do for q in q8 q4; do for b in "$root/exp20/old/b/deltarun" "$root/build-cpu20/deltarun"; do
    j=$("$b" bench --synthetic bench/configs/qwen3.5-0.8b.json --quant $q --quant-random -p 16 -n 64 --json 2>/dev/null | tail -1)
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%s %s %-40s %7.2f tok/s %5.1f%% (bw %.1f)' % (sys.argv[3], sys.argv[2], sys.argv[4], d['decode_tok_s'], 100*d['floor_fraction'], d['measured_bandwidth_gb_s']))" "$j" $q $r "$b" 2>/dev/null || echo "$b $q failed"
  done; done; done
fi
if [[ "$what" == *prefill* ]]; then
  lscpu | grep -o -E "amx[a-z0-9_]*" | sort -u | tr '\n' ' '; echo
  for r in 1 2; do for c in 0.8b 2b; do for b in "$root/exp20/old/b/deltarun" "$root/build-cpu20/deltarun"; do
    j=$("$b" bench --synthetic bench/configs/qwen3.5-$c.json -p 512 -n 4 --json 2>/dev/null | tail -1)
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%s %s %-40s prefill %7.1f tok/s amx %s' % (sys.argv[3], sys.argv[2], sys.argv[4], d['prefill_tok_s'], d.get('amx', '-')))" "$j" $c $r "$b" 2>/dev/null || echo "$b $c failed"
  done; done; done
fi
