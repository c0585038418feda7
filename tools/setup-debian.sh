#!/usr/bin/env bash
# Installs the Debian packages Nabla builds, tests and trains with, when any is missing.
# Safe to run again: it does nothing when everything is there. Needs root (or sudo).
set -euo pipefail

packages=(build-essential cmake pkg-config libopenblas-dev libcmocka-dev zlib1g-dev
          ocl-icd-opencl-dev opencl-headers pocl-opencl-icd libclblast-dev clinfo
          dataset-fashion-mnist openmpi-bin libopenmpi-dev wamerican
          clang libclang-rt-14-dev) # clang and its libFuzzer runtime: tools/run-fuzzers.sh
[ "${1:-}" = "--with-torch" ] && packages+=(python3-torch)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "setup: installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
