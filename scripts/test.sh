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
  emu=(-DDR_TEST_EMULATOR="qemu-x86_64;-cpu;Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"
       -DDR_TEST_EMULATOR_SIMD=avx2)
fi

echo "== release build + tests"
bash "$root/scripts/build.sh" "$root/build" -DDR_WERROR=ON "${emu[@]}"
ctest --test-dir "$root/build" --output-on-failure -j"$jobs"

echo "== ASan + UBSan build + tests"
bash "$root/scripts/build.sh" "$root/build-asan" -DDR_WERROR=ON -DDR_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
  -DDR_TEST_EMULATOR=
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$root/build-asan" --output-on-failure -j"$jobs"
