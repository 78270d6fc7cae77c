#!/usr/bin/env bash
# Sourced by the scripts/device_*.sh runs on the GPU machine (which has no
# network and none of jansson/oniguruma/utf8proc): cd to the repo root, make
# $OUT, unpack the .debs carried in .debs/ into /tmp/deps and point
# pkg-config and the loader at them, put nvcc on PATH. Then
# `dr_device_build DIR TARGET...` configures (Release, CUDA for sm_90a) and
# builds, logging to $OUT and stopping the script on failure
# (DR_CMAKE_EXTRA: more configure flags, e.g. -DDR_CUDA_TIMELINE=ON).
# `dr_device_tests DIR LOG [VAR=val...]` runs every CUDA test and golden of
# the build in DIR (test_cuda_quant where it was built) with those
# settings, appending to LOG and naming each one that fails.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
OUT="${OUT:-/tmp/dr_out}"
mkdir -p "$OUT"
deps=/tmp/deps
mkdir -p "$deps"
for f in .debs/*.deb; do dpkg -x "$f" "$deps"; done
export PKG_CONFIG_PATH="$deps/usr/lib/x86_64-linux-gnu/pkgconfig:$deps/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$deps"
export LD_LIBRARY_PATH="$deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export PATH="/usr/local/cuda/bin:$PATH"

dr_device_build() {
  local dir="$1"; shift
  cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DDR_WERROR=OFF -DDR_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a ${DR_CMAKE_EXTRA:-} > "$OUT/cmake.log" 2>&1 || { tail -20 "$OUT/cmake.log"; exit 1; }
  make -C "$dir" -j"$(nproc)" "$@" > "$OUT/build.log" 2>&1 ||
    { grep -E "error" "$OUT/build.log" | head -40; exit 1; }
}

# What dr_device_tests runs, to build before it.
dr_test_targets="test_cuda test_cuda_decode test_cuda_fused test_cuda_prefill test_cuda_quant test_golden"

dr_device_tests() {
  local dir="$1" log="$2"; shift 2
  local t fx
  env "$@" timeout 120 "$dir/tests/test_cuda_decode" tests/data/moe-bf16 tests/data/next-f32 tests/data/long-bf16 \
    >> "$log" 2>&1 || echo "test_cuda_decode $* FAILED"
  for t in test_cuda test_cuda_fused test_cuda_prefill test_cuda_quant; do
    [[ -x "$dir/tests/$t" ]] || continue
    env "$@" timeout 120 "$dir/tests/$t" >> "$log" 2>&1 || echo "$t $* FAILED"
  done
  for fx in dense-f32 moe-bf16 moe-bf16-fused next-f32 long-bf16; do
    env "$@" timeout 120 "$dir/tests/test_golden" "tests/data/$fx" --device cuda >> "$log" 2>&1 || echo "golden $fx $* FAILED"
  done
}

# `dr_device_build_old SRC` builds deltarun_cli of an older tree unpacked at
# $root/SRC (`git archive REV | tar -x -C SRC --exclude=tests/data`) into
# build-old, logging to $OUT, and prints the binary's path (nothing when the
# build fails): the older side of the device_s28 / s29 A/Bs.
dr_device_build_old() {
  cmake -S "$root/$1" -B "$root/build-old" -DCMAKE_BUILD_TYPE=Release -DDR_WERROR=OFF -DDR_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a > "$OUT/cmake_old.log" 2>&1 &&
    make -C "$root/build-old" -j"$(nproc)" deltarun_cli > "$OUT/build_old.log" 2>&1 && echo "$root/build-old/deltarun"
}

# `dr_device_memcheck DIR` runs compute-sanitizer memcheck (leak check on)
# over DIR's tests/test_cuda_quant for at most MC_T seconds (default 200),
# logging to $OUT/memcheck.log, and prints its summary lines.
dr_device_memcheck() {
  timeout "${MC_T:-200}" compute-sanitizer --tool memcheck --leak-check full "$1/tests/test_cuda_quant" \
    > "$OUT/memcheck.log" 2>&1; echo "memcheck rc $?"
  grep -E "ERROR SUMMARY|LEAK SUMMARY|^[0-9]+ passed" "$OUT/memcheck.log" | head -5
  grep -c "^ok" "$OUT/memcheck.log"; grep -E "^(FAIL|not ok)" "$OUT/memcheck.log" | head -5
}

# `dr_cpu_builds BUILD:SRC...` builds deltarun_cli CPU-only (Release) from
# each source tree SRC into BUILD (A/B runs of this tree against an older
# one unpacked beside it), logging to $OUT; then prints the host CPU.
dr_cpu_builds() {
  local d b s
  for d in "$@"; do
    b=${d%%:*}; s=${d#*:}
    cmake -S "$s" -B "$b" -DCMAKE_BUILD_TYPE=Release -DDR_CUDA=OFF -DDR_WERROR=OFF > "$OUT/cmake_$(basename "$b").log" 2>&1 &&
      make -C "$b" -j"$(nproc)" deltarun_cli > "$OUT/make_$(basename "$b").log" 2>&1 ||
      { echo "build $b failed"; tail -5 "$OUT/make_$(basename "$b").log"; }
  done
  lscpu | grep -E "Model name|^CPU\(s\)"
}

# Bench arguments of the shapes the A/B scripts name (device_s26, s29): a
# config of bench/configs/ and its -p / -n.
declare -A dr_shape=([08b]="qwen3.5-0.8b.json -p 128 -n 256" [2b]="qwen3.5-2b.json -p 128 -n 256"
                     [35b8]="qwen3.5-35b-a3b.json --layers 8 -p 128 -n 256"
                     [35b]="qwen3.5-35b-a3b.json -p 128 -n 128" [9b]="qwen3.5-9b.json -p 128 -n 128")

# `dr_rate JSON` prints decode tok/s and the floor fraction of one
# `bench --json` object ("failed" when there is none).
dr_rate() {
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%.1f (%.1f%%)' % (d['decode_tok_s'], 100*d['floor_fraction']))" "$1" 2>/dev/null || echo failed
}

# `dr_bench_rate LABEL SHAPE BIN QUANT [VAR=VAL...]` decodes shape SHAPE
# with BIN's `bench --device cuda --synthetic` (bench flags QUANT) under
# those settings, appends "SHAPE LABEL JSON" to $OUT/bench.log and prints
# dr_rate of it: one cell of an alternated A/B round.
dr_bench_rate() {
  local label="$1" s="$2" bin="$3" q="$4" j
  shift 4
  j=$(env "$@" timeout 300 "$bin" bench --device cuda --synthetic bench/configs/${dr_shape[$s]} $q --json \
    2>>"$OUT/bench_err.log")
  echo "$s $label $j" >> "$OUT/bench.log"
  dr_rate "$j"
}

# `dr_timeline NAME SHAPE QUANT [VAR=VAL...]` records a kernel timeline of
# 48 decoded tokens of shape SHAPE (bench flags QUANT) with the timeline
# build in $root/build-tl (the caller builds it), under those settings, and
# prints the first line and the critical-path table of scripts/timeline.py
# (the whole report: $OUT/tl_NAME.txt). DR_TL_KEEP=1 keeps the records in
# $OUT/tl_NAME.bin for the caller (scripts/timeline_blocks.py).
dr_timeline() {
  local nm="$1" s="$2" q="$3" f="$OUT/tl_$1.bin"
  shift 3
  env "$@" DR_CUDA_TIMELINE="$f" timeout 150 "$root/build-tl/deltarun" bench --device cuda --synthetic \
    bench/configs/${dr_shape[$s]%-n*}-n 48 $q --json > /dev/null 2>>"$OUT/err.log"
  python3 scripts/timeline.py "$f" --steps 30 > "$OUT/tl_$nm.txt" 2>&1
  [[ -n "${DR_TL_KEEP:-}" ]] || rm -f "$f"
  head -1 "$OUT/tl_$nm.txt"
  sed -n '/critical-path/,$p' "$OUT/tl_$nm.txt" | head -14
}
