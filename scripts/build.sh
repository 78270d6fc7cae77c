#!/usr/bin/env bash
# Configure and build one tree. Usage: scripts/build.sh BUILD_DIR [cmake args...]
set -euo pipefail
dir=$1; shift
cmake -S "$(dirname "$0")/.." -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
