#!/usr/bin/env bash
# Session 28 on the GPU machine: ncu's speed-of-light, warp-state, occupancy
# and memory sections plus every warp-stall ratio for one launch of the
# engine's one-token 4-bit GEMV on the 9B mlp.up and the 0.8B lm_head
# (tests/bench_cuda, DR_BENCH_QUANT_SHAPE) and of the q4 probe's dp4a kernel
# (bench/cuda/q4_probe.cu). The kernel regex q2_gemv was the tensor-core
# kernel's name when this ran; for the dp4a kernel use q2_dp4a.
# Usage: scripts/device_s28_ncu.sh (logs ncu_*.txt under $OUT)
set -uo pipefail
source scripts/device_env.sh
b=build-dev
dr_device_build "$b" bench_cuda q4_probe
S="--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section MemoryWorkloadAnalysis --section LaunchStats"
for sh in "mlp.up" "0.8B lm_head"; do
  DR_BENCH_QUANT=1 DR_BENCH_QUANT_SHAPE="$sh" timeout 200 ncu -k regex:q2_gemv --launch-skip 8 --launch-count 1 $S $b/tests/bench_cuda > "$OUT/ncu_$(echo $sh | tr ' .' '__').txt" 2>&1
  echo "== $sh rc $?"
done
timeout 200 ncu -k regex:dp4a_kernel --launch-skip 8 --launch-count 1 $S $b/q4_probe 5 > "$OUT/ncu_probe.txt" 2>&1; echo "probe rc $?"
for f in "$OUT"/ncu_*.txt; do echo "=== $f"; grep -E "Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Registers|Achieved Occupancy|Theoretical Occupancy|Issued Ipc|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Block Limit|Grid Size|Waves|L2 Hit|Mem Busy|Max Bandwidth|Stall|stalled" "$f" | head -60; done
