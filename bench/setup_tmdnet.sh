#!/usr/bin/env bash
# TorchMD-Net 3.1 (the peer `make bench` compares against) in its own venv, build/tmdnet.
# torch==2.13.0 goes in first, explicitly, so that no CUDA wheels are pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/tmdnet
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torchmdnet, vesin, ase" 2>/dev/null; then
  exit 0
fi
PYTHON=${PYTHON:-python3}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
"$VENV/bin/pip" install -q "torchmd-net==3.1.0" ase vesin
"$VENV/bin/python" -c "import torchmdnet; print('bench: TorchMD-Net installed in $VENV')"
