#!/usr/bin/env bash
# Session 10: the kernel timeline of replayed decode steps (timeline.cuh,
# scripts/timeline.py) next to the same shapes on a normal build (the
# instrumentation's own cost). Usage: scripts/device_tl.sh [ENV=VAL ...]
# runs the timeline once with the defaults and once per extra setting
# (NOPERT=1: skip the normal build and its benches).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
t0=$(date +%s)
[[ -n "${NOPERT:-}" ]] || dr_device_build "$root/build-dev" deltarun_cli
DR_CMAKE_EXTRA=-DDR_CUDA_TIMELINE=ON dr_device_build "$root/build-tl" deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
rate() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('decode %.1f tok/s, %.1f%% of the floor' % (d['decode_tok_s'], 100*d['floor_fraction']))" "$1" 2>/dev/null || echo failed; }
shapes=("35b8:bench/configs/qwen3.5-35b-a3b.json --layers 8" "08b:bench/configs/qwen3.5-0.8b.json")
for s in "${shapes[@]}"; do
  nm="${s%%:*}"; args="${s#*:}"
  [[ -n "${NOPERT:-}" ]] || for b in dev tl dev tl; do
    j=$(timeout 150 "$root/build-$b/deltarun" bench --device cuda --synthetic $args -p 128 -n 48 --json 2>>"$OUT/err.log")
    echo "$nm $b: $(rate "$j")"
  done
  for e in "" "$@"; do
    f="$OUT/tl_${nm}_${e//[^A-Za-z0-9]/_}.bin"
    env $e DR_CUDA_TIMELINE="$f" timeout 150 "$root/build-tl/deltarun" bench --device cuda --synthetic $args -p 128 -n 48 --json \
      > /dev/null 2>>"$OUT/err.log"
    python3 scripts/timeline.py "$f" --steps 30 > "$OUT/tl_${nm}_${e//[^A-Za-z0-9]/_}.txt" 2>&1
    echo "== $nm ${e:-default}"; head -1 "$OUT/tl_${nm}_${e//[^A-Za-z0-9]/_}.txt"
    sed -n '/critical-path/,$p' "$OUT/tl_${nm}_${e//[^A-Za-z0-9]/_}.txt" | head -30
    [[ "$nm$e" == 35b8 ]] && gzip -1 -c "$f" > "$OUT/tl_35b8.bin.gz"; rm -f "$f"
  done
done
tail -3 "$OUT/err.log"
