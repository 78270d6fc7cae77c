#!/usr/bin/env bash
# Session 33 on the GPU machine: scripts/device_s29.sh with the given words,
# then (with SRC=1) scripts/device_s33_src.sh, every log packed into one
# $OUT/logs.tgz (the device tool brings back at most 8 files).
# Usage: [SRC=1] [device_s29.sh's settings] scripts/device_s33.sh WORDS...
set -uo pipefail
final="${OUT:-/tmp/dr_out}"
export OUT=/tmp/s33_logs
mkdir -p "$OUT"
bash "$(dirname "$0")/device_s29.sh" "$@"
[[ "${SRC:-0}" == 1 ]] && bash "$(dirname "$0")/device_s33_src.sh"
mkdir -p "$final"
tar czf "$final/logs.tgz" -C "$OUT" .
