#!/usr/bin/env bash
# Install verirepair and its pinned dependencies into the current Python 3.11.
# torch first, at the exact CPU build: a plain "torch" requirement would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,marabou]"
