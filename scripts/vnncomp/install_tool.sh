#!/usr/bin/env bash
# VNN-COMP: install_tool.sh v1 -- install verirepair and its pinned dependencies into the
# Python 3.11 found as $PYTHON (default python3).
set -euo pipefail
source "$(dirname "$0")/common.sh"
vnncomp_start install_tool.sh 1 "install_tool.sh v1" "$@"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "install_tool.sh: verirepair needs Python 3.11 as \$PYTHON ($PYTHON)" >&2
    exit 1
fi
"$PYTHON" -m pip install -q "torch==2.13.0"   # the CPU build first (see the README)
"$PYTHON" -m pip install -q -e "$VNNCOMP_ROOT[marabou]"
"$PYTHON" -m verirepair.cli --version
