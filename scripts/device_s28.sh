#!/usr/bin/env bash
# Session 28 on the GPU machine: this tree against an older one, same call.
#   tests: every CUDA test and golden of this tree (default settings).
#   ab: decode of this tree's deltarun and of the older one's, alternated in
#       each round (ROUNDS, default 2) over SHAPES (default "35b8 9b 08b"),
#       with QUANT (default "--quant q4 --quant-random").
#   kern: DR_BENCH_QUANT=1 tests/bench_cuda of this tree (q4 T=1 rows).
#   memcheck: compute-sanitizer memcheck of tests/test_cuda_quant (MC_T s).
# OLDSRC: the older source tree, unpacked under the repo (e.g. `git archive
# REV | tar -x -C build-oldsrc --exclude=tests/data`, carried as build-oldsrc).
# Since session 29 these are device_s29.sh's modes, with session 28's
# default modes and shapes.
# Usage: OLDSRC=build-oldsrc scripts/device_s28.sh [tests] [ab] [kern] [memcheck]
SHAPES="${SHAPES:-35b8 9b 08b}" exec bash "$(dirname "$0")/device_s29.sh" ${*:-tests ab kern}
