#!/usr/bin/env bash
# The test suite on a fresh machine: install dependencies, build with
# -Wall -Wextra -Werror, run ctest (on x86-64 the CPU tests also run on an
# emulated AVX2-only CPU, as emu_*); then the same suite under ASan + UBSan.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/deps.sh" --test
jobs="$(nproc)"

emu=()
if [ "$(uname -m)" = "x86_64" ]; then
  # Haswell: AVX2 + FMA + F16C and no AVX-512, the oldest CPU the SIMD kernels
  # serve (less the system features user-mode emulation warns about)
  cpu="Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"
  if qemu-x86_64 -cpu "$cpu" /bin/true 2>/tmp/dr_qemu_probe.log; then
    emu=(-DDR_TEST_EMULATOR="qemu-x86_64;-cpu;$cpu" -DDR_TEST_EMULATOR_SIMD=avx2)
  else
    echo "== emulated AVX2-only CPU tests SKIPPED: qemu-x86_64 cannot run here:" >&2
    head -3 /tmp/dr_qemu_probe.log >&2 || true
  fi
fi

echo "== release build + tests"
bash "$root/scripts/build.sh" "$root/build" -DDR_WERROR=ON "${emu[@]}"
ctest --test-dir "$root/build" --output-on-failure -j"$jobs"

echo "== ASan + UBSan build + tests"
# Where nvcc is found, the kernels for one architecture only: the release
# build above already compiled them for all three, and the sanitizers see
# only host code (the GPU tests skip without a GPU). This keeps the CUDA
# build's host paths under the sanitizers at a third of the nvcc time.
bash "$root/scripts/build.sh" "$root/build-asan" -DDR_WERROR=ON -DDR_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
  -DDR_TEST_EMULATOR= -DCMAKE_CUDA_ARCHITECTURES=90a
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$root/build-asan" --output-on-failure -j"$jobs"
