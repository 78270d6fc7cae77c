#!/usr/bin/env bash
# Session 31 on the GPU machine: ncu's speed-of-light, memory, warp-state and
# occupancy sections plus every warp-stall ratio for decode launches of the
# q4 35B-A3B (8 layers) MoE block's two kernels and its 4-bit GEMV, each
# alone (ncu serializes launches, so no PDL overlap): is a kernel slow by
# itself, or only in the step's overlap? Then this tree's CUDA tests.
# Usage: [NCU_K=regex] scripts/device_s31_ncu.sh (logs ncu.txt under $OUT)
set -uo pipefail
source scripts/device_env.sh
b="$root/build-dev"
dr_device_build "$b" deltarun_cli $dr_test_targets
S="--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,dram__bytes_read.sum,gpu__time_duration.sum --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis --section LaunchStats"
# the decode steps come after 16 prefill tokens; skip the first launches of each kernel
timeout 300 ncu -k "regex:${NCU_K:-q2_moe_gate_up|q2_moe_down|q2_dp4a}" --launch-skip 60 --launch-count 9 $S \
  "$b/deltarun" bench --device cuda --synthetic bench/configs/qwen3.5-35b-a3b.json --layers 8 -p 16 -n 24 \
  --quant q4 --quant-random > "$OUT/ncu.txt" 2>&1
echo "ncu rc $?"
grep -E "^  [a-z_0-9]+.*\(|Duration|DRAM Throughput|dram__bytes_read.sum|Memory Throughput|Compute \(SM\)|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issued Ipc|No Eligible|Eligible Warps|Warp Cycles Per Issued|Grid Size|Waves Per|L2 Hit|Mem Busy|Max Bandwidth|stalled_(long|short|wait|math|lg|barrier|mio|no_inst|not_sel|drain|branch|membar|sleep|dispatch|imc|tex)" "$OUT/ncu.txt" | head -230
dr_device_tests "$b" "$OUT/tests.log"
echo "tests: $(grep -h -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/tests.log" | awk '{p+=$1; f+=$3} END {print p " passed, " f " failed"}')"
