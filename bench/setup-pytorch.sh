#!/usr/bin/env bash
# setup-pytorch.sh - creates the virtual environment compare_pytorch.sh compares against:
# current PyTorch 2.x and numpy from PyPI (several GB to download, so only on request; CI
# never runs it). Usage: bench/setup-pytorch.sh [VENV]   (default: bench/.venv-torch)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${1:-${NABLA_TORCH_VENV:-$here/.venv-torch}}
py=${PYTHON:-python3}
if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "setup-pytorch.sh: $py cannot create virtual environments; on Debian: apt-get install python3-venv" >&2
    exit 1
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch numpy
"$venv/bin/python" - <<'PY'
import torch
print(f"setup-pytorch.sh: torch {torch.__version__} ready, {torch.get_num_threads()} threads")
PY
echo "setup-pytorch.sh: compare_pytorch.sh now uses $venv/bin/python"
