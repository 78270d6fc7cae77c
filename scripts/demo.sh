#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, and generate
# with a tiny fixture model shipped with the tests (random weights: the ids are
# meaningless, but they are exactly what transformers produces).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/deps.sh"
bash "$root/scripts/build.sh" "$root/build"
model="$root/tests/data/dense-f32"
"$root/build/deltarun" info "$model"
echo "generate (greedy, 24 tokens after the prompt 471,797,397,494,287,985,873):"
"$root/build/deltarun" generate "$model" --ids 471,797,397,494,287,985,873 -n 24 --greedy
