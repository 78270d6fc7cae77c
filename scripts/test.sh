#!/usr/bin/env bash
# The test suite on a fresh machine: install dependencies, build with
# -Wall -Wextra -Werror, run ctest; then the same suite under ASan + UBSan.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/deps.sh"
jobs="$(nproc)"

echo "== release build + tests"
bash "$root/scripts/build.sh" "$root/build" -DDR_WERROR=ON
ctest --test-dir "$root/build" --output-on-failure -j"$jobs"

echo "== ASan + UBSan build + tests"
bash "$root/scripts/build.sh" "$root/build-asan" -DDR_WERROR=ON -DDR_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$root/build-asan" --output-on-failure -j"$jobs"
