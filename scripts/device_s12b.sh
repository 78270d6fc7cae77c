#!/usr/bin/env bash
# Session 12's bisection of 0e041fa's fast 0.8B decode: this tree and
# source trees named in TREES (NAME:DIR[:CUDA_FLAGS] ...; DIR relative to
# the repo) are built (deltarun_cli, Release, sm_90a) and decode the 0.8B
# shape in alternation (ROUNDS rounds; SHAPES as in device_s11.sh: 08b,
# 35b8, 35b40, 9b); the register counts of each build's decode GEMV kernels are
# printed (cuobjdump -res-usage of matmul.cu's object); SASS=1 also keeps
# matmul.cu's SASS of each build in $OUT.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
t0=$(date +%s)
names=(new); clis=("$root/build-dev/deltarun")
dr_device_build "$root/build-dev" deltarun_cli
for t in ${TREES:-}; do
  IFS=: read -r nm dir fl <<< "$t"
  (root="$root/$dir"; DR_CMAKE_EXTRA=${fl:+-DCMAKE_CUDA_FLAGS=$fl} dr_device_build "/tmp/b_$nm" deltarun_cli)
  names+=("$nm"); clis+=("/tmp/b_$nm/deltarun")
done
echo "built in $(( $(date +%s) - t0 )) s"
for i in "${!names[@]}"; do
  d=$(dirname "${clis[$i]}")
  o=$(find "$d" -name "matmul.cu.o" | head -1)
  cuobjdump -res-usage "$o" 2>/dev/null | python3 -c "
import re, sys
name = None
out = []
for line in sys.stdin:
    m = re.search(r'Function (\S+):', line)
    if m:
        name = m.group(1); continue
    m = re.search(r'REG:(\d+)', line)
    if m and name and ('swiglu' in name or 'add_norm' in name or 'rows_norm' in name or 'rows_kernel' in name) and 'bfloat' in name:
        out.append('%s=%s' % (re.sub(r'^_Z\d+', '', name)[:40], m.group(1)))
print('regs ${names[$i]}: ' + ' '.join(sorted(out)))
"
done
if [[ -n "${SASS:-}" ]]; then # matmul.cu's SASS of each build, gzipped
  for i in "${!names[@]}"; do
    o=$(find "$(dirname "${clis[$i]}")" -name "matmul.cu.o" | head -1)
    cuobjdump -sass "$o" 2>&1 | gzip -6 > "$OUT/sass_matmul_${names[$i]}.txt.gz"
  done
fi
C=bench/configs
for r in $(seq "${ROUNDS:-3}"); do
  for s in ${SHAPES:-08b}; do
    case $s in
      08b) args="$C/qwen3.5-0.8b.json" ;;
      35b8) args="$C/qwen3.5-35b-a3b.json --layers 8" ;;
      35b40) args="$C/qwen3.5-35b-a3b.json" ;;
      9b) args="$C/qwen3.5-9b.json" ;;
    esac
    for i in "${!names[@]}"; do
      j=$(timeout 150 "${clis[$i]}" bench --device cuda --synthetic $args -p 128 -n 256 --json 2>>"$OUT/err.log")
      python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-5s %-10s decode %7.1f tok/s  %5.1f%% of the floor' % (sys.argv[2], sys.argv[3], d['decode_tok_s'], 100*d['floor_fraction']))" "$j" "$s" "${names[$i]}" 2>/dev/null || echo "$s ${names[$i]}: failed"
    done
  done
done
tail -2 "$OUT/err.log"
