#!/usr/bin/env bash
# Session 33 on the GPU machine: where inside the q4 MoE decode kernels (and
# the 4-bit GEMV) the warps stall, per SASS instruction. ncu's source page
# (sampled warp stalls per instruction) for one decode launch of each kernel
# of the q4 35B-A3B with 8 layers, kernel by kernel (DR_CUDA_GRAPHS=0), then
# scripts/ncu_src_top.py's top lines. Usage: scripts/device_s33_src.sh
# (logs under $OUT: src_<kernel>.txt and csv_<kernel>.csv.gz). KERNELS="regex:skip ..."
# picks the launches (default: the two MoE kernels and the 4-bit GEMV);
# QUANT the bench's quantization flags (default "--quant q4 --quant-random").
set -uo pipefail
source scripts/device_env.sh
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
cuobjdump -res-usage "$b/deltarun" 2>/dev/null | grep -A1 -E "q2_moe_(down|gate_up)_kernelILi4ELi1" | grep -E "Function|REG" | cut -c1-160
for kr in ${KERNELS:-q2_moe_down:16 q2_moe_gate_up:16 q2_dp4a:60}; do
  k=${kr%%:*}
  DR_CUDA_GRAPHS=0 timeout 200 ncu --clock-control none -k "regex:$k" --launch-skip "${kr##*:}" --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section Occupancy --section LaunchStats --section SpeedOfLight \
    -o "/tmp/rep_$k" -f "$b/deltarun" bench --device cuda --synthetic bench/configs/qwen3.5-35b-a3b.json \
    --layers 8 -p 16 -n 24 ${QUANT:---quant q4 --quant-random} > "/tmp/ncu_$k.log" 2>&1
  echo "ncu $k rc $?"; tail -3 "/tmp/ncu_$k.log"
  ncu -i "/tmp/rep_$k.ncu-rep" --page details > "$OUT/det_$k.txt" 2>&1
  ncu -i "/tmp/rep_$k.ncu-rep" --page source --csv --print-source sass > "/tmp/src_$k.csv" 2>&1
  python3 scripts/ncu_src_top.py "/tmp/src_$k.csv" 45 > "$OUT/src_$k.txt" 2>&1
  python3 scripts/ncu_src_top.py "/tmp/src_$k.csv" 0 | sed -n 3p
  gzip -c "/tmp/src_$k.csv" > "$OUT/csv_$k.csv.gz"
  grep -E "Duration|Registers Per|Achieved Occupancy|Theoretical Occ|Memory Throughput|DRAM Through" "$OUT/det_$k.txt" | head -8
  head -4 "$OUT/src_$k.txt" | tail -2
done
