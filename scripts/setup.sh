#!/usr/bin/env bash
# Set up mwork from nothing in ./.venv: CPU PyTorch first (so nothing pulls a multi-GB CUDA
# build), then mwork with the default model and test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# A CPU wheel of torch 2.13.0 is what we test with; on a CUDA machine install your own torch first.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[default-model,test]"
# `lm_eval --model mwork`: lm-eval has no plugin discovery, so a .pth file registers the backend lazily
.venv/bin/mwork eval --install-lm-eval-plugin >/dev/null
echo "mwork is set up in $(pwd)/.venv"
