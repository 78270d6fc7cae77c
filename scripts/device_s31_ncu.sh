#!/usr/bin/env bash
# Session 31 on the GPU machine: ncu's speed-of-light, memory, warp-state and
# occupancy sections plus every warp-stall ratio for decode launches of the
# q4 35B-A3B (8 layers) MoE block's two kernels and its 4-bit GEMV, each
# alone (ncu serializes launches, so no PDL overlap): is a kernel slow by
# itself, or only in the step's overlap?
# Usage: scripts/device_s31_ncu.sh (logs ncu.txt under $OUT)
set -uo pipefail
source scripts/device_env.sh
b="$root/build-dev"
dr_device_build "$b" deltarun_cli
S="--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,dram__bytes_read.sum,gpu__time_duration.sum --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis --section LaunchStats"
# Graph replays are not profiled: the steps run kernel by kernel
# (DR_CUDA_GRAPHS=0). Skip the first decode steps' launches of each regex.
for kr in "q2_moe_gate_up|q2_moe_down:16:4" "q2_dp4a:60:8"; do
  DR_CUDA_GRAPHS=0 timeout 250 ncu -k "regex:${kr%%:*}" --launch-skip "$(echo "$kr" | cut -d: -f2)" \
    --launch-count "${kr##*:}" $S "$b/deltarun" bench --device cuda --synthetic bench/configs/qwen3.5-35b-a3b.json \
    --layers 8 -p 16 -n 24 --quant q4 --quant-random >> "$OUT/ncu.txt" 2>&1
done
echo "ncu rc $?"
grep -E "^  [a-z_0-9 ]+.*\(|Duration|DRAM Throughput|dram__bytes_read.sum|Warp Cycles Per Issued|Achieved Occupancy" "$OUT/ncu.txt" | cut -c1-110
