#!/usr/bin/env bash
# VNN-COMP: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Exit 0 when verirepair can read the model and the property (it then loads them again in
# run_instance.sh: loading takes milliseconds), 1 when it cannot (the reason on stderr).
set -uo pipefail
if [ "${1:-}" != "v1" ] || [ "$#" -ne 4 ]; then
    echo "prepare_instance.sh: usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2
    exit 1
fi
PYTHON="${PYTHON:-python3}"
# this checkout's package first, installed or not
export PYTHONPATH="$(cd "$(dirname "$0")/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
# A zero time limit loads, validates and stops with one of the verdicts' exit codes; any
# other code (2 bad input, 1 internal error, a crash) means the instance cannot be run.
"$PYTHON" -m verirepair.cli check "$3" "$4" --timeout 0 --quiet >/dev/null
case $? in
    0|10|20|21) exit 0 ;;
    *) exit 1 ;;
esac
