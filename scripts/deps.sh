#!/usr/bin/env bash
# Install the Debian packages deltarun builds with (Debian 12 / bookworm).
# Runs apt-get update first; uses sudo when not root. Idempotent.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libjansson-dev libonig-dev libutf8proc-dev)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if dpkg -s "${PKGS[@]}" >/dev/null 2>&1; then exit 0; fi
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
