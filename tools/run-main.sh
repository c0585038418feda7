#!/usr/bin/env bash
# The main job: builds Nabla and trains the seed tutorial's LeNet on Fashion-MNIST.
# Installs what is missing first. Usage: tools/run-main.sh [nabla-train options]
# (default: --epochs 5 on NABLA_DEVICE or cpu; e.g. tools/run-main.sh --device opencl:0)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-debian.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target nabla-train nabla_plugins
[ $# -eq 0 ] && set -- --epochs 5
exec build/bin/nabla-train "$@"
