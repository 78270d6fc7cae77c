#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, and chat with
# the tiny fixture model shipped with the tests (it has a real tokenizer but
# random weights, so the reply is gibberish by construction).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/deps.sh"
bash "$root/scripts/build.sh" "$root/build"
model="$root/tests/data/dense-f32"
"$root/build/deltarun" info "$model"
echo
echo "deltarun run (the fixture model has random weights: the reply is gibberish by construction)"
"$root/build/deltarun" run "$model" -p "What is 2+2?" --no-think -n 48 --seed 1
