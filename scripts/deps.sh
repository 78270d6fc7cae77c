#!/usr/bin/env bash
# Install the Debian packages deltarun builds with (Debian 12 / bookworm).
# Runs apt-get update first; uses sudo when not root. Idempotent.
# --test: also what the test suite uses (on x86-64, qemu-user: the CPU tests
# run again on an emulated AVX2-only CPU, tests/CMakeLists.txt).
set -euo pipefail
PKGS=(build-essential cmake pkg-config libjansson-dev libonig-dev libutf8proc-dev)
if [ "${1:-}" = "--test" ] && [ "$(uname -m)" = "x86_64" ]; then
  PKGS+=(qemu-user)
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if dpkg -s "${PKGS[@]}" >/dev/null 2>&1; then exit 0; fi
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
