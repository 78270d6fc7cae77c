#!/usr/bin/env bash
# The validation call for a release of the CUDA backend (docs/PERFORMANCE.md,
# "CUDA (H100/H200)"): build (sm_90a), every CUDA test and golden, memcheck,
# then the decode / prefill benches in bf16, q8 and q4 with same-call
# baselines for the newest kernels. Logs under $OUT.
# Usage: scripts/device_final.sh [tests] [conc] [legacy] [memcheck] [bench] [r4] [gemv] [slope] [types]
#        [attpos] [attdec] [attblk] [pdlsw] [moek] [moencu] [ncu35] [big40] [ncu08] [p512] [quant] [qold] [prefill] [mroute] [normin] [s6] [vsold] [an16] [pdlgdn6] [routes] [s7] [attlong] [s8] [mpdet] [s9] [apdet] [attsplit] [pf9] [cold9]
# conc: four test_cuda_quant processes at once (as ctest -j4); legacy: the same with
# DR_CUDA_LEGACY_COPY=1, the unordered uploads before session 4's fix (it failed 2 of 4 runs once;
# the race is timing-dependent). gemv: the GEMV-only bench_cuda lines (each shape also through the
# fused residual add + RMSNorm kernel). slope / types / attpos: decode against the layer count, per
# layer type, and the all-attention 0.8B against the position (+ ncu). attdec / attblk: the decode
# attention kernel and attention_block against their switches. moek: 35B-A3B against experts per
# token; moencu / ncu35 / ncu08: ncu views. big40: 35B-A3B, 40 layers, 128-token prompt.
# p512: the 512-token prefill, twice per shape, device argmax against --host-logits.
# r4 (r4big: also 35B-A3B, 40 layers): decode round 4 against its same-call
# baselines (each change's switch off alone, then all off with the per-token
# logits download to the host, as before the round). mroute / normin: session 5's MoE routing in
# the gate/up kernel and pre-norm in the input GEMV against their switches (+ the tests with them off).
# s6: session 6's MoE decode changes (early down rows, shared gate/up in the gate/up kernel, routing by
# integer reductions) each against its switch, and all of them off. vsold: 0.8B, 9B, 35B-A3B decode against
# build-old/deltarun, a binary of an earlier commit built on the dev box and carried (run's carry);
# DR_NEW_CLI=PATH (relative to the repo) times a carried binary of this tree too, built the same way.
# an16: the GEMV + residual kernel's whole-row-in-flight variant against DR_CUDA_AN16=0. pdlgdn6:
# gdn_decode with PDL (DR_CUDA_PDL_GDN=2) against the default. routes: test_cuda on every MoE routing path.
# s7: the one-kernel decode attention block (DR_CUDA_ATT_FUSED=2: always; default: past 4096 keys) against
# DR_CUDA_ATT_FUSED=0 (test_cuda both ways, test_cuda_decode always fused, then decode).
# attlong: the fused attention against DR_CUDA_ATT_FUSED=0 after 8192-token prompts (9B, 35B-A3B 40 layers).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
what="${*:-tests memcheck bench quant prefill}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
t0=$(date +%s)
dr_device_build "$b" test_cuda test_cuda_decode test_cuda_prefill test_cuda_quant test_cuda_fused test_golden deltarun_cli \
  bench_cuda
echo "built in $(( $(date +%s) - t0 )) s"
T="$OUT/tests.log"
if [[ "$what" == *tests* ]]; then
  dr_device_tests "$b" "$T"
  grep -cE "^ok" "$T" | sed 's/^/ok lines: /'
  grep -E "^FAIL|passed|graphs" "$T" | head -${TESTS_LINES:-30}
  grep -E "greedy|full|incremental" "$T" | head -12
fi
if [[ "$what" == *conc* ]]; then # four test_cuda_quant processes at once (as ctest -j4 runs them)
  for i in 1 2 3 4; do timeout 180 "$b/tests/test_cuda_quant" > "$OUT/conc_$i.log" 2>&1 & done; wait
  for i in 1 2 3 4; do echo "concurrent test_cuda_quant $i: $(tail -1 "$OUT/conc_$i.log")"; grep "^FAIL" "$OUT/conc_$i.log" | head -3; done
fi
if [[ "$what" == *legacy* ]]; then
  for i in 1 2 3 4; do DR_CUDA_LEGACY_COPY=1 timeout 180 "$b/tests/test_cuda_quant" > "$OUT/lconc_$i.log" 2>&1 & done; wait
  for i in 1 2 3 4; do echo "legacy concurrent test_cuda_quant $i: $(tail -1 "$OUT/lconc_$i.log")"; grep "^FAIL" "$OUT/lconc_$i.log" | head -3; done
fi
if [[ "$what" == *memcheck* ]]; then
  timeout 150 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    "$b/tests/test_golden" tests/data/moe-bf16 --device cuda --quick > "$OUT/memcheck.log" 2>&1
  echo "memcheck moe-bf16 exit $?"; grep -E "ERROR SUMMARY|LEAK" "$OUT/memcheck.log" | head -3
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$b/tests/test_cuda_quant" > "$OUT/memcheck_quant.log" 2>&1
  echo "memcheck test_cuda_quant exit $?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck_quant.log" | head -3
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$b/tests/test_cuda" > "$OUT/memcheck_cuda.log" 2>&1
  echo "memcheck test_cuda exit $?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck_cuda.log" | head -3
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$b/tests/test_cuda_fused" > "$OUT/memcheck_fused.log" 2>&1
  echo "memcheck test_cuda_fused exit $?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck_fused.log" | head -3
  timeout 150 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    "$b/tests/test_golden" tests/data/dense-f32 --device cuda --quick > "$OUT/memcheck_dense.log" 2>&1
  echo "memcheck dense-f32 exit $?"; grep -E "ERROR SUMMARY|LEAK" "$OUT/memcheck_dense.log" | head -3
fi
cli="$b/deltarun"
one() { # label, then bench arguments
  local nm="$1"; shift
  local j
  j=$(timeout 150 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $* $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-22s decode %7.1f tok/s %5.0f GB/s of %5.0f floor %7.1f tok/s %5.1f%%  prefill %6.0f tok/s (p=%d)' % (sys.argv[2], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], d['floor_tok_s'], 100*d['floor_fraction'], d['prefill_tok_s'], d['prompt_tokens']))" "$j" "$nm" 2>/dev/null || { echo "$nm: failed"; tail -2 "$OUT/bench_err.log"; }
}
C=bench/configs
if [[ "$what" == *bench* ]]; then
  one 0.8B-bf16 --synthetic $C/qwen3.5-0.8b.json -p 512 -n 256
  one 9B-bf16 --synthetic $C/qwen3.5-9b.json -p 512 -n 128
  one 35B-8L-bf16 --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 512 -n 256
  export DR_CUDA_DEC3=0
  one 35B-8L-bf16-olddec --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 512 -n 256
  unset DR_CUDA_DEC3
fi
if [[ "$what" == *mroute* ]]; then # session 5: MoE routing inside the gate/up kernel against DR_CUDA_MOE_ROUTE=0
  DR_CUDA_MOE_ROUTE=0 timeout 60 "$b/tests/test_cuda" > "$OUT/test_cuda_route0.log" 2>&1; echo "test_cuda (route kernel) exit $?: $(tail -1 "$OUT/test_cuda_route0.log")"
  for i in 1 2; do
    for v in 0 1; do DR_CUDA_MOE_ROUTE=$v one "35B-8L-route$v" --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256; done
  done
  for v in 0 1; do DR_CUDA_MOE_ROUTE=$v one "35B-40L-route$v" --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 64; done
fi
if [[ "$what" == *normin* ]]; then # session 5: the pre-norm in the next layer's input GEMV against DR_CUDA_NORM_IN=0
  for t in test_cuda_fused test_cuda_decode; do
    DR_CUDA_NORM_IN=0 timeout 120 "$b/tests/$t" tests/data/moe-bf16 tests/data/next-f32 > "$OUT/${t}_normin0.log" 2>&1
    echo "$t (norm kernel) exit $?: $(tail -1 "$OUT/${t}_normin0.log")"
  done
  for sh in "0.8B --synthetic $C/qwen3.5-0.8b.json -p 128 -n 256" "9B --synthetic $C/qwen3.5-9b.json -p 128 -n 128"; do
    set -- $sh; nm=$1; shift
    for v in 0 2 1 0 2 1; do DR_CUDA_NORM_IN=$v one "$nm-normin$v" "$@"; done # 2: input projections only
  done
  if [[ "$what" == *normin35* ]]; then
    for v in 0 1 0 1; do DR_CUDA_NORM_IN=$v one "35B-8L-normin$v" --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256; done
    for v in 0 1; do DR_CUDA_NORM_IN=$v one "35B-40L-normin$v" --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 64; done
  fi
fi
if [[ "$what" == *s6* ]]; then # session 6's MoE decode changes, each against its switch (0 = before)
  for v in DR_CUDA_MOE_EARLY DR_CUDA_MOE_SHGU DR_CUDA_ROUTE_RX; do
    env $v=0 timeout 60 "$b/tests/test_cuda" > "$OUT/test_cuda_$v.log" 2>&1
    echo "test_cuda $v=0 exit $?: $(tail -1 "$OUT/test_cuda_$v.log")"
  done
  DR_CUDA_MOE_EARLY=0 DR_CUDA_MOE_SHGU=0 DR_CUDA_ROUTE_RX=0=0 timeout 120 "$b/tests/test_cuda_decode" tests/data/moe-bf16 \
    tests/data/next-f32 > "$OUT/tcd_s6off.log" 2>&1
  echo "test_cuda_decode all off exit $?: $(tail -1 "$OUT/tcd_s6off.log")"
  for i in 1 2; do
    for v in on DR_CUDA_MOE_EARLY DR_CUDA_MOE_SHGU DR_CUDA_ROUTE_RX; do
      ( [[ $v != on ]] && export $v=0; one "35B-8L-s6-${v#DR_CUDA_}" --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256 )
    done
  done
  ( export DR_CUDA_MOE_EARLY=0 DR_CUDA_MOE_SHGU=0 DR_CUDA_ROUTE_RX=0=0; one "35B-8L-s6-alloff" --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256 )
  one "35B-40L-s6-on" --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 64
  ( export DR_CUDA_MOE_EARLY=0 DR_CUDA_MOE_SHGU=0 DR_CUDA_ROUTE_RX=0=0; one "35B-40L-s6-alloff" --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 64 )
fi
if [[ "$what" == *an16* ]]; then # the GEMV + residual (+ norm) kernel with a whole row per warp in flight (DR_CUDA_AN16)
  for t in test_cuda_fused test_cuda; do
    DR_CUDA_AN16=0 timeout 60 "$b/tests/$t" > "$OUT/${t}_an16.log" 2>&1; echo "$t AN16=0 exit $?: $(tail -1 "$OUT/${t}_an16.log")"
  done
  DR_CUDA_AN16=0 timeout 120 "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 > "$OUT/tcd_an16.log" 2>&1
  echo "test_cuda_decode AN16=0 exit $?: $(tail -1 "$OUT/tcd_an16.log")"
  for v in 0 1 0 1; do
    DR_CUDA_AN16=$v one "35B-8L-an16-$v" --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
    DR_CUDA_AN16=$v one "0.8B-an16-$v" --synthetic $C/qwen3.5-0.8b.json -p 128 -n 256
  done
  for v in 0 1; do DR_CUDA_AN16=$v one "35B-40L-an16-$v" --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 64; done
fi
if [[ "$what" == *routes* ]]; then # test_cuda on every MoE routing path (ties included)
  for v in "" DR_CUDA_ROUTE_RX=0 DR_CUDA_MOE_ROUTE=0 DR_CUDA_MOE_EARLY=0 DR_CUDA_MOE_SHGU=0; do
    env $v timeout 60 "$b/tests/test_cuda" > "$OUT/test_cuda_r.log" 2>&1
    echo "test_cuda ${v:-defaults} exit $?: $(tail -1 "$OUT/test_cuda_r.log")"; grep -E "^FAIL|ties" "$OUT/test_cuda_r.log" | head -4
  done
fi
if [[ "$what" == *s7* ]]; then # session 7: the one-kernel decode attention block against DR_CUDA_ATT_FUSED=0
  for v in 0 2; do
    DR_CUDA_ATT_FUSED=$v timeout 60 "$b/tests/test_cuda" > "$OUT/test_cuda_f$v.log" 2>&1
    echo "test_cuda DR_CUDA_ATT_FUSED=$v exit $?: $(tail -1 "$OUT/test_cuda_f$v.log")"; grep -E "^FAIL" "$OUT/test_cuda_f$v.log" | head -4
  done
  DR_CUDA_ATT_FUSED=2 timeout 120 "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 tests/data/long-bf16 > "$OUT/tcd_f2.log" 2>&1
  echo "test_cuda_decode DR_CUDA_ATT_FUSED=2 exit $?: $(tail -1 "$OUT/tcd_f2.log")"
  for v in 0 2 0 2; do
    DR_CUDA_ATT_FUSED=$v one "0.8B-attf$v" --synthetic $C/qwen3.5-0.8b.json -p 128 -n 512
    DR_CUDA_ATT_FUSED=$v one "35B-8L-attf$v" --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
    DR_CUDA_ATT_FUSED=$v one "9B-attf$v" --synthetic $C/qwen3.5-9b.json -p 128 -n 128
  done
  for v in 0 1 0 1; do DR_CUDA_ATT_FUSED=$v one "0.8B-p4k-attf$v" --synthetic $C/qwen3.5-0.8b.json -p 4096 -n 256; done
  for v in 0 1; do DR_CUDA_ATT_FUSED=$v one "0.8B-p2k-attf$v" --synthetic $C/qwen3.5-0.8b.json -p 2048 -n 256; done
fi
if [[ "$what" == *attlong* ]]; then # session 7: the fused decode attention after 8192-token prompts
  for v in 0 1; do
    DR_CUDA_ATT_FUSED=$v one "9B-p8k-attf$v" --synthetic $C/qwen3.5-9b.json -p 8192 -n 64
    DR_CUDA_ATT_FUSED=$v one "35B-40L-p8k-attf$v" --synthetic $C/qwen3.5-35b-a3b.json -p 8192 -n 64
  done
fi
if [[ "$what" == *pdlgdn6* ]]; then # session 6: gdn_decode with PDL again, now that out_proj keeps whole rows in flight
  for v in 0 2 0 2; do
    DR_CUDA_PDL_GDN=$v one "35B-8L-pdlgdn$v" --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256
    DR_CUDA_PDL_GDN=$v one "0.8B-pdlgdn$v" --synthetic $C/qwen3.5-0.8b.json -p 128 -n 256
  done
fi
if [[ "$what" == *vsold* ]]; then # this tree against build-old/deltarun (an older commit built elsewhere, carried)
  for sh in "0.8B --synthetic $C/qwen3.5-0.8b.json -p 128 -n 256" "9B --synthetic $C/qwen3.5-9b.json -p 128 -n 128" \
            "35B-8L --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256"; do
    set -- $sh; nm=$1; shift
    for v in old new old new; do
      ( if [[ $v == old ]]; then cli="$root/build-old/deltarun"; elif [[ -n "${DR_NEW_CLI:-}" ]]; then cli="$root/$DR_NEW_CLI"; fi
        one "$nm-$v" "$@" )
    done
  done
  for v in old new; do
    ( if [[ $v == old ]]; then cli="$root/build-old/deltarun"; elif [[ -n "${DR_NEW_CLI:-}" ]]; then cli="$root/$DR_NEW_CLI"; fi
      one "35B-40L-$v" --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 64 )
  done
fi
if [[ "$what" == *r4* ]]; then
  # each round-4 change off by itself, then all of them (DR_R4_VARIANTS overrides)
  vars="${DR_R4_VARIANTS:-DR_CUDA_FUSE=0 DR_CUDA_GDN_SLICES=0}"
  for sh in "0.8B --synthetic $C/qwen3.5-0.8b.json -n 256" "9B --synthetic $C/qwen3.5-9b.json -n 128" \
            "35B-8L --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -n 256"; do
    set -- $sh; nm=$1; shift
    one "$nm-r4" "$@" -p 128
    for v in $vars; do ( export $v; one "$nm-${v#DR_CUDA_}" "$@" -p 128 ); done
    ( export $vars; one "$nm-allold-hostlogits" "$@" -p 128 --host-logits )
    one "$nm-r4" "$@" -p 128
  done
  if [[ "$what" == *r4big* ]]; then
    one 35B-40L-r4 --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 64
    ( export $vars; one 35B-40L-allold-hostlogits --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 64 --host-logits )
  fi
fi
if [[ "$what" == *gemv* ]]; then
  DR_BENCH_GEMV_ONLY=1 timeout 60 "$b/tests/bench_cuda" 2>&1 | grep -E "floor|\[" | grep -v "^floor"
fi
if [[ "$what" == *slope* ]]; then # decode time against the layer count (per-layer cost and the fixed part)
  for L in 4 8 16 32; do one "9B-L$L" --synthetic $C/qwen3.5-9b.json --layers $L -p 128 -n 128; done
  for L in 6 12 24; do one "0.8B-L$L" --synthetic $C/qwen3.5-0.8b.json --layers $L -p 128 -n 256; done
fi
if [[ "$what" == *types* ]]; then # per-layer decode cost of each layer type: all-GDN and all-attention variants
  for base in 9b 0.8b; do
    for ty in linear_attention full_attention; do
      for L in 8 16; do
        f="/tmp/cfg-$base-$ty-$L.json"
        python3 - "$C/qwen3.5-$base.json" "$f" "$ty" "$L" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); t = c["text_config"]
t["num_hidden_layers"] = int(sys.argv[4]); t["layer_types"] = [sys.argv[3]] * int(sys.argv[4])
json.dump(c, open(sys.argv[2], "w"))
PY
        one "$base-${ty%%_*}-L$L" --synthetic "$f" -p 128 -n 128
      done
    done
  done
fi
if [[ "$what" == *attpos* ]]; then # all-attention 0.8B: decode cost against the position; ncu at p = 128
  python3 - "$C/qwen3.5-0.8b.json" /tmp/att16.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); t = c["text_config"]
t["num_hidden_layers"] = 16; t["layer_types"] = ["full_attention"] * 16
json.dump(c, open(sys.argv[2], "w"))
PY
  one att16-p16 --synthetic /tmp/att16.json -p 16 -n 64
  one att16-p128 --synthetic /tmp/att16.json -p 128 -n 64
  one att16-p1000 --synthetic /tmp/att16.json -p 1000 -n 64
  one att16-p4000 --synthetic /tmp/att16.json -p 4000 -n 64
  NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv"
  timeout 200 $NCU "$cli" bench --device cuda --synthetic /tmp/att16.json -p 128 -n 2 --json > "$OUT/ncu_att.csv" 2>> "$OUT/ncu_err.log"
  python3 scripts/ncu_sum.py "$OUT/ncu_att.csv" 3 | head -30
fi
if [[ "$what" == *attdec* ]]; then # decode attention kernel (attn_decode_kernel) against DR_CUDA_ATT_DEC=0
  for sh in "0.8B --synthetic $C/qwen3.5-0.8b.json -n 256" "9B --synthetic $C/qwen3.5-9b.json -n 128" \
            "35B-8L --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -n 256"; do
    set -- $sh; nm=$1; shift
    for v in 0 1 0 1; do ( export DR_CUDA_ATT_DEC=$v; one "$nm-attdec$v" "$@" -p 128 ); done
  done
  for v in 0 1; do ( export DR_CUDA_ATT_DEC=$v; one "9B-p4000-attdec$v" --synthetic $C/qwen3.5-9b.json -p 4000 -n 64 ); done
fi
if [[ "$what" == *moencu* ]]; then # the MoE decode kernels in detail (35B-A3B, 8 layers)
  ncu --clock-control none --kernel-name regex:"moe_down_bf16|moe_gu_bf16|route_reg" --launch-skip 6 --launch-count 3 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
    --section MemoryWorkloadAnalysis "$cli" bench --device cuda --synthetic $C/qwen3.5-35b-a3b.json --layers 8 \
    -p 1 -n 2 --json > "$OUT/moe_ncu.txt" 2>&1
  grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Dynamic Shared|Block Limit|Waves Per|Stall|Warp Cycles Per Issued|L2 Hit|L1/TEX Hit" "$OUT/moe_ncu.txt" | head -90
fi
if [[ "$what" == *moek* ]]; then # 35B-A3B, 8 layers: decode against the routed experts per token
  for kk in 1 2 4 8; do
    python3 - "$C/qwen3.5-35b-a3b.json" "/tmp/moe-k$kk.json" "$kk" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["text_config"]["num_experts_per_tok"] = int(sys.argv[3])
json.dump(c, open(sys.argv[2], "w"))
PY
    one "35B-8L-k$kk" --synthetic "/tmp/moe-k$kk.json" --layers 8 -p 128 -n 256
  done
fi
if [[ "$what" == *pdlsw* ]]; then # PDL launches of the norms / gdn_decode (DR_CUDA_PDL_NORM / _GDN) against the default
  for sh in "0.8B --synthetic $C/qwen3.5-0.8b.json -n 256" "35B-8L --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -n 256"; do
    set -- $sh; nm=$1; shift
    for v in "X=0" "DR_CUDA_PDL_GDN=1" "DR_CUDA_PDL_GDN=2" "DR_CUDA_PDL_NORM=1" "DR_CUDA_PDL_NORM=2" "X=0"; do
      ( export $v; one "$nm-$v" "$@" -p 128 ); done
  done
fi
if [[ "$what" == *attblk* ]]; then # attention_block (prep + gated attention) against DR_CUDA_ATT_BLOCK=0
  for sh in "0.8B --synthetic $C/qwen3.5-0.8b.json -n 256" "9B --synthetic $C/qwen3.5-9b.json -n 128" \
            "35B-8L --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -n 256"; do
    set -- $sh; nm=$1; shift
    for v in 0 1 0 1; do ( export DR_CUDA_ATT_BLOCK=$v; one "$nm-attblk$v" "$@" -p 128 ); done
  done
fi
if [[ "$what" == *ncu35* ]]; then
  NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv"
  timeout 200 $NCU "$cli" bench --device cuda --synthetic $C/qwen3.5-35b-a3b.json --layers 8 -p 1 -n 3 --json \
    > "$OUT/ncu_35b8.csv" 2>> "$OUT/ncu_err.log"
  python3 scripts/ncu_sum.py "$OUT/ncu_35b8.csv" 4 2>/dev/null | head -32
fi
if [[ "$what" == *big40* ]]; then
  one 35B-40L --synthetic $C/qwen3.5-35b-a3b.json -p 128 -n 64
fi
if [[ "$what" == *ncu08* ]]; then
  NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv"
  timeout 200 $NCU "$cli" bench --device cuda --synthetic $C/qwen3.5-0.8b.json -p 1 -n 3 --json > "$OUT/ncu_08b.csv" 2>> "$OUT/ncu_err.log"
  python3 scripts/ncu_sum.py "$OUT/ncu_08b.csv" 4 | head -40
fi
if [[ "$what" == *p512* ]]; then
  for sh in "0.8B --synthetic $C/qwen3.5-0.8b.json" "9B --synthetic $C/qwen3.5-9b.json"; do
    set -- $sh; nm=$1; shift
    one "$nm-p512" "$@" -p 512 -n 16; one "$nm-p512-hostlogits" "$@" -p 512 -n 16 --host-logits
    one "$nm-p512" "$@" -p 512 -n 16; one "$nm-p2048" "$@" -p 2048 -n 16
  done
fi
if [[ "$what" == *qold* ]]; then # the FMA quantized GEMV (before the tensor-core one), same call
  export DR_CUDA_QGEMV_MMA=0
  for qq in q8 q4; do
    one 9B-$qq-fma --synthetic $C/qwen3.5-9b.json --quant $qq --quant-random -p 512 -n 128
    one 35B-8L-$qq-fma --synthetic $C/qwen3.5-35b-a3b.json --layers 8 --quant $qq --quant-random -p 512 -n 256
  done
  unset DR_CUDA_QGEMV_MMA
fi
if [[ "$what" == *quant* ]]; then
  for qq in q8 q4; do
    one 0.8B-$qq --synthetic $C/qwen3.5-0.8b.json --quant $qq --quant-random -p 512 -n 256
    one 9B-$qq --synthetic $C/qwen3.5-9b.json --quant $qq --quant-random -p 512 -n 128
    one 35B-8L-$qq --synthetic $C/qwen3.5-35b-a3b.json --layers 8 --quant $qq --quant-random -p 512 -n 256
  done
fi
if [[ "$what" == *prefill* ]]; then
  one 35B-40L-bf16 --synthetic $C/qwen3.5-35b-a3b.json -p 8192 -n 64
  export DR_CUDA_GDN_TC=0
  one 35B-40L-bf16-fmaGDN --synthetic $C/qwen3.5-35b-a3b.json -p 8192 -n 64
  unset DR_CUDA_GDN_TC
fi
if [[ "$what" == *s8* ]]; then # session 8: MoE prefill GEMM block order (DR_CUDA_MOE_GRID=0: tiles fastest, before)
  for v in 1 0; do
    DR_CUDA_MOE_GRID=$v timeout 60 "$b/tests/test_cuda_prefill" > "$OUT/tcp_g$v.log" 2>&1
    echo "test_cuda_prefill DR_CUDA_MOE_GRID=$v exit $?: $(tail -1 "$OUT/tcp_g$v.log")"; grep -E "^FAIL|moe" "$OUT/tcp_g$v.log" | head -6
  done
  for v in ${S8_ORDER:-1 0 1 0}; do DR_CUDA_MOE_GRID=$v one "35B-40L-p8k-grid$v" --synthetic $C/qwen3.5-35b-a3b.json -p 8192 -n 4; done
  [[ "${S8_NCU:-1}" == 0 ]] || for v in 1 0; do
    NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv"
    DR_CUDA_MOE_GRID=$v timeout 200 $NCU "$cli" bench --device cuda --synthetic $C/qwen3.5-35b-a3b.json --layers 4 -p 8192 -n 1 \
      --json > "$OUT/ncu_p4_g$v.csv" 2>> "$OUT/ncu_err.log"
    echo "== ncu prefill 4 layers, DR_CUDA_MOE_GRID=$v"; python3 scripts/ncu_sum.py "$OUT/ncu_p4_g$v.csv" 1 2>/dev/null | head -24
  done
fi
if [[ "$what" == *mpdet* ]]; then # session 9: the MoE prefill GEMMs in detail (35B-A3B, one layer, 8192 tokens)
  ncu --clock-control none --kernel-name regex:"mp_gemm" --launch-count ${MPDET_N:-2} --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
    --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,smsp__inst_executed_op_ldsm.sum,sm__inst_executed_pipe_tensor_op_hmma.sum \
    "$cli" bench --device cuda --synthetic $C/qwen3.5-35b-a3b.json --layers 1 -p 8192 -n 1 --json > "$OUT/mp_ncu.txt" 2>&1
  grep -E "^  [a-z_]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|L1/TEX Cache Throughput|L2 Cache Throughput|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Shared Memory Configuration|Block Limit|Stall|Warp Cycles Per Issued|Issue Slots Busy|Executed Ipc|hmma|ldsm|shared|Bank" "$OUT/mp_ncu.txt" | head -120
fi
if [[ "$what" == *s9* ]]; then # session 9: the 128-row MoE prefill GEMMs (mp_gemm2, the default)
  # against DR_CUDA_MOE_GEMM=1 (mp_gemm, before)
  timeout 90 "$b/tests/test_cuda_prefill" > "$OUT/tcp_s9.log" 2>&1
  echo "test_cuda_prefill exit $?: $(tail -1 "$OUT/tcp_s9.log")"; grep -E "^FAIL|moe" "$OUT/tcp_s9.log" | head -${S9_TLINES:-60}
  [[ "${S9_MC:-1}" == 0 ]] || { timeout 300 compute-sanitizer --tool memcheck --leak-check full "$b/tests/test_cuda_prefill" > "$OUT/mc_s9.log" 2>&1
    echo "memcheck test_cuda_prefill exit $?: $(grep -E "ERROR SUMMARY|LEAK SUMMARY" "$OUT/mc_s9.log" | head -2)"; }
  for v in ${S9_NCU:-0 1}; do
    NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv"
    DR_CUDA_MOE_GEMM=$v timeout 200 $NCU "$cli" bench --device cuda --synthetic $C/qwen3.5-35b-a3b.json --layers 4 -p 8192 -n 1 \
      --json > "$OUT/ncu_p4_m$v.csv" 2>> "$OUT/ncu_err.log"
    echo "== ncu prefill 4 layers, DR_CUDA_MOE_GEMM=$v"; python3 scripts/ncu_sum.py "$OUT/ncu_p4_m$v.csv" 1 2>/dev/null | head -${S9_NCU_LINES:-5}
  done
  for v in ${S9_ORDER:-0 1 0 1}; do DR_CUDA_MOE_GEMM=$v one "35B-40L-p8k-gemm$v" --synthetic $C/qwen3.5-35b-a3b.json -p 8192 -n 4; done
fi
if [[ "$what" == *apdet* ]]; then # session 9: the prefill flash-attention kernel in detail (35B-A3B's attention layer, 8192 tokens)
  ncu --clock-control none --kernel-name regex:"ap_flash" --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
    --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio \
    "$cli" bench --device cuda --synthetic $C/qwen3.5-35b-a3b.json --layers 4 -p 8192 -n 1 --json > "$OUT/ap_ncu.txt" 2>&1
  grep -E "^  [a-z_]+.*\(|Duration|Compute \(SM\) Throughput|L1/TEX Cache Throughput|L2 Cache Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issue Slots Busy|hmma|stalled" "$OUT/ap_ncu.txt" | head -40
fi
if [[ "$what" == *attsplit* ]]; then # session 9: prefill attention with the head dim split over two warps (D = 256) against
  # DR_CUDA_ATT_DSPLIT=0 (ap_flash_kernel<256>, before)
  timeout 90 "$b/tests/test_cuda_prefill" > "$OUT/tcp_att.log" 2>&1
  echo "test_cuda_prefill exit $?: $(tail -1 "$OUT/tcp_att.log")"; grep -E "^FAIL|attention" "$OUT/tcp_att.log" | head -20
  [[ "${S9_MC:-1}" == 0 ]] || { timeout 300 compute-sanitizer --tool memcheck --leak-check full "$b/tests/test_cuda_prefill" > "$OUT/mc_att.log" 2>&1
    echo "memcheck test_cuda_prefill exit $?: $(grep -E "ERROR SUMMARY|LEAK SUMMARY" "$OUT/mc_att.log" | head -2)"; }
  for v in 1 0; do
    NCU="ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv"
    DR_CUDA_ATT_DSPLIT=$v timeout 200 $NCU "$cli" bench --device cuda --synthetic $C/qwen3.5-35b-a3b.json --layers 4 -p 8192 -n 1 \
      --json > "$OUT/ncu_att_d$v.csv" 2>> "$OUT/ncu_err.log"
    echo "== ncu prefill 4 layers, DR_CUDA_ATT_DSPLIT=$v"; python3 scripts/ncu_sum.py "$OUT/ncu_att_d$v.csv" 1 2>/dev/null | head -5
  done
  for v in ${S9A_ORDER:-1 0 1 0}; do DR_CUDA_ATT_DSPLIT=$v one "35B-40L-p8k-dsplit$v" --synthetic $C/qwen3.5-35b-a3b.json -p 8192 -n 4; done
fi
if [[ "$what" == *pf9* ]]; then # session 9's prefill (mp_gemm2 + the split-head-dim attention) against both switched off
  # (session 8's kernels), warm medians of 3 runs (-r 3), alternated
  old() { DR_CUDA_MOE_GEMM=1 DR_CUDA_ATT_DSPLIT=0 one "$@"; }
  for i in 1 2; do
    one "35B-40L-p8k-new" --synthetic $C/qwen3.5-35b-a3b.json -p 8192 -n 32 -r 3
    old "35B-40L-p8k-old" --synthetic $C/qwen3.5-35b-a3b.json -p 8192 -n 32 -r 3
  done
  one "35B-40L-p512-new" --synthetic $C/qwen3.5-35b-a3b.json -p 512 -n 32 -r 3
  old "35B-40L-p512-old" --synthetic $C/qwen3.5-35b-a3b.json -p 512 -n 32 -r 3
  for sh in 9b 0.8b; do
    one "$sh-p8k-new" --synthetic $C/qwen3.5-$sh.json -p 8192 -n 32 -r 3
    old "$sh-p8k-old" --synthetic $C/qwen3.5-$sh.json -p 8192 -n 32 -r 3
  done
  grep -o '"prefill_tok_s_runs": \[[^]]*\]' "$OUT/bench.log" | head -20
fi
if [[ "$what" == *cold9* ]]; then # session 9: a process's first prefill with lazy vs eager module loading (no difference), + gc_prep in detail
  for v in lazy eager lazy eager; do
    if [[ $v == eager ]]; then export CUDA_MODULE_LOADING=EAGER; else unset CUDA_MODULE_LOADING; fi
    one "35B-40L-p512-$v" --synthetic $C/qwen3.5-35b-a3b.json -p 512 -n 16 -r 3
  done
  unset CUDA_MODULE_LOADING
  for v in lazy eager; do
    if [[ $v == eager ]]; then export CUDA_MODULE_LOADING=EAGER; else unset CUDA_MODULE_LOADING; fi
    one "0.8B-p512-$v" --synthetic $C/qwen3.5-0.8b.json -p 512 -n 16 -r 3
  done
  unset CUDA_MODULE_LOADING
  grep -o '"build_s": [0-9.]*\|"prefill_tok_s_runs": \[[^]]*\]' "$OUT/bench.log" | paste - - | head -12
  ncu --clock-control none --kernel-name regex:"gc_prep|gct_scan" --launch-count 2 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
    --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio \
    "$cli" bench --device cuda --synthetic $C/qwen3.5-35b-a3b.json --layers 1 -p 8192 -n 1 --json > "$OUT/gc_ncu.txt" 2>&1
  grep -E "^  [a-z_]+.*\(|Duration|Compute \(SM\) Throughput|L1/TEX Cache Throughput|L2 Cache Throughput|DRAM Throughput|Achieved Occupancy|Theoretical Occ|Registers Per|Dynamic Shared|Warp Cycles Per Issued|Issue Slots Busy|hmma|fma_cycles|stalled" "$OUT/gc_ncu.txt" | head -60
fi
echo "total $(( $(date +%s) - t0 )) s"
