#!/usr/bin/env bash
# VNN-COMP: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Writes the VNN-COMP result (sat + assignment / unsat / unknown / timeout) to RESULTS_FILE.
# A model or property verirepair cannot read leaves no result file (exit 2, reason on
# stderr); an earlier file of the same name is removed first, so none can be mistaken
# for this run's answer. The CATEGORY is not used: the bab engine chooses input or ReLU
# splitting from the network.
set -uo pipefail
if [ "${1:-}" != "v1" ] || [ "$#" -ne 6 ]; then
    echo "run_instance.sh: usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2
    exit 1
fi
PYTHON="${PYTHON:-python3}"
# this checkout's package first, installed or not
export PYTHONPATH="$(cd "$(dirname "$0")/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
rm -f -- "$5"
"$PYTHON" -m verirepair.cli check "$3" "$4" --timeout "$6" --result-file "$5" --quiet
code=$?
case $code in
    0|10|20|21) exit 0 ;;   # holds, violated, unknown, timeout: the result file is written
    *) exit "$code" ;;
esac
