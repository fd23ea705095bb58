#!/usr/bin/env bash
# mwork GPU check: importance vs brute force (float32, bfloat16) on every tiny family,
# deactivation exit bit-identical, importance timing on gemma-3-270m at l = 512 and 2048.
# Prints one markdown table; exit status 1 if a judged row fails. About 1-3 minutes on an H100.
# Without CUDA it runs on the CPU (smaller timing rows). Arguments go to gpu_check.py (--help).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
