#!/usr/bin/env bash
# One device call for the tensor-core 4/8-bit GEMV (docs/CUDA.md, "Tensor-core
# GEMV"): build (sm_90a), test_cuda_quant (new default path), kernel GB/s new
# vs old (DR_CUDA_QGEMV_MMA=0, same call), end-to-end q4/q8 decode new vs old,
# then test_cuda / test_cuda_decode while time is left. Logs under $OUT.
# Usage: scripts/device_mma.sh [budget_s]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
budget="${1:-225}"
t0=$(date +%s)
left() { echo $(( budget - ($(date +%s) - t0) )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
b="$root/build-dev"
dr_device_build "$b" test_cuda_quant test_cuda test_cuda_decode deltarun_cli bench_cuda
echo "built in $(( $(date +%s) - t0 )) s"
DR_CUDA_QGEMV_MMA=0 timeout 60 "$b/tests/test_cuda_quant" > "$OUT/test_cuda_quant_old.log" 2>&1; echo "test_cuda_quant (DR_CUDA_QGEMV_MMA=0) rc=$?"
grep -E "FAIL|passed" "$OUT/test_cuda_quant_old.log" | head -5
timeout 60 "$b/tests/test_cuda_quant" > "$OUT/test_cuda_quant.log" 2>&1; echo "test_cuda_quant rc=$?"
grep -E "FAIL|passed" "$OUT/test_cuda_quant.log" | head -20
python3 - "$OUT/test_cuda_quant.log" <<'PY'
import re,sys
w={}
for l in open(sys.argv[1]):
    m=re.search(r'(?:ok|FAIL)\S*\s+(\S+)(.*?)rel err ([0-9.e+-]+)',l)
    if not m: continue
    t=re.search(r'T=(\d+)',m.group(2)); T=int(t.group(1)) if t else 0
    k=m.group(1)+(' T<=8' if T<=8 else ' T>8')
    v=float(m.group(3))
    if v>=w.get(k,(-1,''))[0]: w[k]=(v,l.strip())
for k,v in sorted(w.items()): print('worst %-16s %.2e  %s' % (k, v[0], v[1][:110]))
PY
grep -m3 -E "matmul q4 g64.*T=1\b" "$OUT/test_cuda_quant.log"
cli="$b/deltarun"
DR_CUDA_QGEMV_KW=1 timeout 60 "$b/tests/test_cuda_quant" > "$OUT/test_cuda_quant_kw1.log" 2>&1; echo "test_cuda_quant (DR_CUDA_QGEMV_KW=1) rc=$?"
grep -E "FAIL|passed" "$OUT/test_cuda_quant_kw1.log" | head -5
for v in "" DR_CUDA_QGEMV_MMA=0 DR_CUDA_QGEMV_KW=1 DR_CUDA_QGEMV_KW=8; do
  echo "== bench_cuda quant ${v:-mma (default)}" | tee -a "$OUT/kern.log"
  env $v DR_BENCH_QUANT=1 timeout 40 "$b/tests/bench_cuda" 2>&1 | grep -E "q4|q8|bf16 T=1" | grep -v "T=512" | tee -a "$OUT/kern.log"
done
one() {
  local nm="$1"; shift
  local j
  j=$(timeout 60 "$cli" bench --device cuda "$@" --json 2>>"$OUT/bench_err.log")
  echo "$nm $* $j" >> "$OUT/bench.log"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%-22s decode %8.1f tok/s  %6.0f GB/s of %6.0f  %5.1f%% of floor  prefill %7.0f tok/s' % (sys.argv[2], d['decode_tok_s'], d['decode_gb_s'], d['measured_bandwidth_gb_s'], 100*d['floor_fraction'], d['prefill_tok_s']))" "$j" "$nm" 2>/dev/null || { echo "$nm: failed"; tail -3 "$OUT/bench_err.log"; }
}
e2e() { # name config q extra...
  local nm="$1" cfg="$2" q="$3"; shift 3
  [[ $(left) -lt 25 ]] && { echo "skip $nm $q (time)"; return; }
  one "$nm-$q-mma" --synthetic "bench/configs/$cfg" --quant "$q" --quant-random -p 128 -n 128 "$@"
  DR_CUDA_QGEMV_MMA=0 one "$nm-$q-old" --synthetic "bench/configs/$cfg" --quant "$q" --quant-random -p 128 -n 128 "$@"
}
e2e 9B qwen3.5-9b.json q4
e2e 9B qwen3.5-9b.json q8
e2e 0.8B qwen3.5-0.8b.json q4
e2e 35B-A3B-8L qwen3.5-35b-a3b.json q4 --layers 8
if [[ $(left) -gt 30 ]]; then
  timeout 40 "$b/tests/test_cuda" > "$OUT/test_cuda.log" 2>&1; echo "test_cuda rc=$?"; grep -E "^FAIL|passed" "$OUT/test_cuda.log" | head -5
fi
if [[ $(left) -gt 20 ]]; then
  timeout $(left) "$b/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 > "$OUT/test_cuda_decode.log" 2>&1; echo "test_cuda_decode rc=$?"
  grep -E "^FAIL|passed" "$OUT/test_cuda_decode.log" | head -5
fi
e2e 0.8B qwen3.5-0.8b.json q8
e2e 35B-A3B-8L qwen3.5-35b-a3b.json q8 --layers 8
if [[ $(left) -gt 20 ]]; then
  timeout $(left) compute-sanitizer --tool memcheck --error-exitcode 9 "$b/tests/test_cuda_quant" > "$OUT/memcheck.log" 2>&1
  echo "memcheck test_cuda_quant rc=$? (124: cut by time)"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log" | head -3
fi
echo "total $(( $(date +%s) - t0 )) s"
