#!/usr/bin/env bash
# Session 21 on the GPU machine: the whole ctest suite of a CUDA build (as
# device_s15.sh ctest), then the host CPU's prefill, this tree against an
# older one unpacked in exp21/oldsrc (both CPU-only builds), alternated:
# cold 512-token prefills of the 0.8B and 2B, and warm ones (-r 2) of
# 35B-A3B's first 4 layers; with AMX, then without (DR_CPU_AMX=0). Usage: scripts/device_s21.sh [ctest] [prefill]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-ctest prefill}"
if [[ "$what" == *ctest* ]]; then
  bash scripts/device_s15.sh ctest
fi
if [[ "$what" == *prefill* ]]; then
  dr_cpu_builds "$root/build-cpu21:$root" "$root/exp21/oldsrc/b:$root/exp21/oldsrc"
  grep -o -E "amx[a-z0-9_]*" /proc/cpuinfo | sort -u | tr '\n' ' '; cat /sys/kernel/mm/transparent_hugepage/enabled
  for amx in 1 0; do for r in 1 2; do for c in "0.8b 1" "2b 1" "35b-a3b 2"; do set -- $c; for b in "$root/exp21/oldsrc/b/deltarun" "$root/build-cpu21/deltarun"; do
    x=""; [ "$1" = 35b-a3b ] && x="--layers 4"
    j=$(DR_CPU_AMX=$amx "$b" bench --synthetic bench/configs/qwen3.5-$1.json $x -p 512 -n 2 -r $2 --json 2>/dev/null | tail -1)
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('amx %s %s %-8s %-44s prefill %s tok/s' % (sys.argv[5], sys.argv[3], sys.argv[2], sys.argv[4], [round(v, 1) for v in d['prefill_tok_s_runs']]))" "$j" $1 $r "$b" $amx 2>/dev/null || echo "$b $1 failed"
  done; done; done; done
fi
