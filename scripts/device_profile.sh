#!/usr/bin/env bash
# One device-machine call that profiles decode and prefill kernel by kernel
# (docs/CUDA.md, "Where the time goes"): build (sm_90a), then `ncu` with only
# gpu__time_duration.sum (clocks and caches left alone) over a few decode
# steps of 0.8B, 9B and 35B-A3B (8 layers), and over an 8192-token prefill
# of 4 35B-A3B layers (3 GDN + 1 attention); scripts/ncu_sum.py sums the
# launches by kernel. Logs under $OUT.
# Usage: scripts/device_profile.sh [decode] [prefill] [bench]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-decode prefill bench}"
b="${DR_BUILD:-$root/build-dev}"
if [[ ! -x "$b/deltarun" || -n "${DR_REBUILD:-}" ]]; then
  dr_device_build "$b" deltarun_cli
fi
cli="$b/deltarun"
ncu --version | tail -1
NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv"
prof() { # name steps args...
  local nm="$1" st="$2"; shift 2
  timeout 240 $NCU "$cli" bench --device cuda "$@" --json > "$OUT/ncu_$nm.csv" 2>> "$OUT/ncu_err.log"
  echo "== $nm ($*): rc $?"
  python3 scripts/ncu_sum.py "$OUT/ncu_$nm.csv" "$st" | head -30
}
if [[ "$what" == *decode* ]]; then
  prof d08b 4 --synthetic bench/configs/qwen3.5-0.8b.json -p 1 -n 3
  prof d9b 3 --synthetic bench/configs/qwen3.5-9b.json -p 1 -n 2
  prof d35b8 4 --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 1 -n 3
fi
if [[ "$what" == *prefill* ]]; then
  prof p35b4 1 --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 4 -p 8192 -n 1
fi
if [[ "$what" == *bench* ]]; then # the same shapes without the profiler (decode as scripts/device_decode.sh)
  one() {
    local nm="$1"; shift
    local j
    j=$(timeout 300 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
    echo "$nm $j" >> "$OUT/bench.log"
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-12s decode %8.1f tok/s  %6.0f GB/s of %6.0f  floor %7.1f tok/s  %5.1f%%  prefill %7.0f tok/s (p=%d)' % (sys.argv[2], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], d['floor_tok_s'], 100*d['floor_fraction'], d['prefill_tok_s'], d['prompt_tokens']))" "$j" "$nm" 2>/dev/null || echo "$nm: failed"
  }
  one 0.8B --synthetic bench/configs/qwen3.5-0.8b.json -p 128 -n 256
  one 9B --synthetic bench/configs/qwen3.5-9b.json -p 128 -n 128
  one 35B-A3B-8L --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
fi
