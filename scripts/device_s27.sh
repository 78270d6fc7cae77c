#!/usr/bin/env bash
# Session 27 on the GPU machine: the MoE pre-norm in the MoE decode kernels
# (DR_CUDA_MOE_NORM) crossed with the shared-memory carveout
# (DR_CUDA_CARVEOUT), decode A/Bs alternated within each round, then
# timelines. Everything is scripts/device_s26.sh with other variables.
# Usage: scripts/device_s27.sh [ab] [tl] [tests]
#   NORMS (default "0 1"), CARVES (default "-1 100"), SHAPES, ROUNDS as device_s26.sh.
set -uo pipefail
here="$(dirname "$0")"
what="${*:-ab tl}"
for nm in ${NORMS:-0 1}; do
  echo "=== DR_CUDA_MOE_NORM=$nm"
  if [[ "$what" == *ab* ]]; then
    DR_CUDA_MOE_NORM=$nm VAR=DR_CUDA_CARVEOUT VALS="${CARVES:--1 100}" bash "$here/device_s26.sh" ab | grep -E "^round|built"
  fi
  if [[ "$what" == *tests* ]]; then
    DR_CUDA_MOE_NORM=$nm VAR=DR_CUDA_CARVEOUT VALS="${CARVES:--1 100}" bash "$here/device_s26.sh" tests | grep -E "^tests|FAILED"
  fi
done
if [[ "$what" == *tl* ]]; then
  for nm in ${NORMS:-0 1}; do
    DR_CUDA_MOE_NORM=$nm VAR=DR_CUDA_CARVEOUT VALS="${CARVES:--1 100}" SHAPES="${TL_SHAPES:-35b8}" bash "$here/device_s26.sh" tl > /dev/null
    for f in "${OUT:-/tmp/dr_out}"/tl_*.txt; do mv "$f" "${f%.txt}_norm$nm.txt"; done
  done
  for f in "${OUT:-/tmp/dr_out}"/tl_*_norm*.txt; do
    echo "== $(basename "$f"): $(head -1 "$f" | grep -o 'median.*')"
    sed -n '3,9p' "$f"
    grep -A6 "MARK points" "$f" | grep moe_gu
  done
fi
