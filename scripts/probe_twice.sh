#!/usr/bin/env bash
# The slot-doubling probe of docs/CUDA.md "Session 7": each decode ops slot
# run twice per layer (DR_PROBE_TWICE=slot), the step's growth being that
# slot's cost in the replayed graph. Measurement only, never merged: build
# a binary with scripts/probe_twice.patch applied (git apply; build-lead,
# sm_90a), carry it (run's carry: .debs, build-lead/deltarun) and run this
# script on the device.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
cli="$root/build-lead/deltarun"
nvidia-smi --query-gpu=name --format=csv,noheader
one() { local nm="$1"; shift
  j=$(timeout 120 "$cli" bench --device cuda "$@" --json 2>>"$OUT/err.log")
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-10s %8.1f tok/s %7.1f us/tok floor %5.1f%%' % (sys.argv[2], d['decode_tok_s'], 1e6/d['decode_tok_s'], 100*d['floor_fraction']))" "$j" "$nm" 2>/dev/null || { echo "$nm failed"; tail -2 "$OUT/err.log"; }
}
for shape in "0.8b:-p 128 -n 512" "35b-a3b:--layers 8 -p 128 -n 256"; do
  cfg=bench/configs/qwen3.5-${shape%%:*}.json; args=${shape#*:}
  echo "== $cfg $args"
  for v in base inproj qkvproj gdn outadd downadd swiglu moe attn lmhead base; do
    if [[ $v == base ]]; then DR_PROBE_TWICE= one $v --synthetic $cfg $args; else DR_PROBE_TWICE=$v one $v --synthetic $cfg $args; fi
  done
done
