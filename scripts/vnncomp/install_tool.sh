#!/usr/bin/env bash
# VNN-COMP: install_tool.sh v1 -- install verirepair and its pinned dependencies into the
# Python 3.11 found as $PYTHON (default python3).
set -euo pipefail
if [ "${1:-}" != "v1" ]; then
    echo "install_tool.sh: expected the version string 'v1' as first argument, got '${1:-}'" >&2
    exit 1
fi
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "install_tool.sh: verirepair needs Python 3.11 as \$PYTHON ($PYTHON)" >&2
    exit 1
fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
"$PYTHON" -m pip install -q "torch==2.13.0"   # the CPU build first (see the README)
"$PYTHON" -m pip install -q -e "$ROOT[marabou]"
"$PYTHON" -m verirepair.cli --version
