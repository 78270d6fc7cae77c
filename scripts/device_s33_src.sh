#!/usr/bin/env bash
# Session 33 on the GPU machine: where inside the q4 MoE decode kernels (and
# the 4-bit GEMV) the warps stall, per SASS instruction. ncu's source page
# (sampled warp stalls per instruction) for one decode launch of each kernel
# of the q4 35B-A3B with 8 layers, kernel by kernel (DR_CUDA_GRAPHS=0), then
# scripts/ncu_src_top.py's top lines. Usage: scripts/device_s33_src.sh
# (logs under $OUT: src_<kernel>_<skip>.txt and csv_<kernel>_<skip>.csv.gz). KERNELS="regex:skip ..."
# picks the launches (default: the two MoE kernels and the 4-bit GEMV);
# QUANT the bench's quantization flags (default "--quant q4 --quant-random");
# NCU_EXTRA more ncu flags (e.g. "--warp-sampling-interval 0": more samples).
set -uo pipefail
source scripts/device_env.sh
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" deltarun_cli
echo "built in $(( $(date +%s) - t0 )) s"
cuobjdump -res-usage "$b/deltarun" 2>/dev/null | grep -A1 -E "q2_moe_(down|gate_up)_kernelILi4E" | grep -E "Function|REG" | cut -c1-160
for kr in ${KERNELS:-q2_moe_down:16 q2_moe_gate_up:16 q2_dp4a:60}; do
  k=${kr%%:*}; n=${kr//:/_}
  DR_CUDA_GRAPHS=0 timeout 200 ncu --clock-control none ${NCU_EXTRA:-} -k "regex:$k" --launch-skip "${kr##*:}" --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section Occupancy --section LaunchStats --section SpeedOfLight \
    -o "/tmp/rep_$n" -f "$b/deltarun" bench --device cuda --synthetic bench/configs/qwen3.5-35b-a3b.json \
    --layers 8 -p 16 -n 24 ${QUANT:---quant q4 --quant-random} > "/tmp/ncu_$n.log" 2>&1
  echo "ncu $n rc $?"; tail -3 "/tmp/ncu_$n.log"
  ncu -i "/tmp/rep_$n.ncu-rep" --page details > "$OUT/det_$n.txt" 2>&1
  ncu -i "/tmp/rep_$n.ncu-rep" --page source --csv --print-source sass > "/tmp/src_$n.csv" 2>&1
  python3 scripts/ncu_src_top.py "/tmp/src_$n.csv" 45 > "$OUT/src_$n.txt" 2>&1
  python3 scripts/ncu_src_top.py "/tmp/src_$n.csv" 0 | sed -n 3p
  gzip -c "/tmp/src_$n.csv" > "$OUT/csv_$n.csv.gz"
  grep -E "Duration|Grid Size|Registers Per|Achieved Occupancy|DRAM Through" "$OUT/det_$n.txt" | head -8
  head -4 "$OUT/src_$n.txt" | tail -2
done
