#!/usr/bin/env bash
# The main job: builds Nabla and trains the seed tutorial's LeNet on Fashion-MNIST.
# Installs what is missing first. Usage: tools/run-main.sh [nabla-train options]
# (default: --epochs 5 on NABLA_DEVICE or cpu; e.g. tools/run-main.sh --device opencl:0)
# --ranks N first trains data-parallel on N local processes through mpirun (the mpi backend).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-debian.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target nabla-train nabla_plugins
ranks=1
if [ "${1:-}" = "--ranks" ]; then
  ranks=${2:?--ranks needs a number}
  shift 2
fi
[ $# -eq 0 ] && set -- --epochs 5
if [ "$ranks" -gt 1 ]; then
  # Root in containers needs Open MPI's consent; sandboxes often forbid cross-memory attach.
  [ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
  exec mpirun --oversubscribe --bind-to none -np "$ranks" build/bin/nabla-train "$@"
fi
exec build/bin/nabla-train "$@"
