#!/usr/bin/env bash
# VNN-COMP: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Exit 0 when verirepair can read the model and the property (it then loads them again in
# run_instance.sh: loading takes milliseconds), 1 when it cannot (the reason on stderr).
set -uo pipefail
source "$(dirname "$0")/common.sh"
vnncomp_start prepare_instance.sh 4 "prepare_instance.sh v1 CATEGORY ONNX VNNLIB" "$@"
# A zero time limit loads, validates and stops with one of the verdicts' exit codes; any
# other code (2 bad input, 1 internal error, a crash) means the instance cannot be run.
"$PYTHON" -m verirepair.cli check "$3" "$4" --timeout 0 --quiet >/dev/null
case $? in
    0|10|20|21) exit 0 ;;
    *) exit 1 ;;
esac
