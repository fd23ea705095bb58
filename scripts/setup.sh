#!/usr/bin/env bash
# Set up mwork from nothing in ./.venv: CPU PyTorch first (so nothing pulls a multi-GB CUDA
# build), then mwork with the default model, LCB and test extras, at the exact versions the suite was
# last run with (constraints.txt; `bash scripts/test_newest.sh` tries newer ones). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# A CPU wheel of torch 2.13.0 is what we test with; on a CUDA machine install your own torch first.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[default-model,lcb,test]"
# `lm_eval --model mwork`: lm-eval has no plugin discovery, so mwork-lm-eval.pth registers the backend
# lazily; the install above puts it into site-packages (mwork's wheel ships it): written only if missing
.venv/bin/python -c 'import sys, sysconfig; from pathlib import Path; sys.exit(not Path(sysconfig.get_paths()["purelib"], "mwork-lm-eval.pth").is_file())' \
  || .venv/bin/mwork eval --install-lm-eval-plugin >/dev/null
echo "mwork is set up in $(pwd)/.venv"
