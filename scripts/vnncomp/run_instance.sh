#!/usr/bin/env bash
# VNN-COMP: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Writes the VNN-COMP result (sat + assignment / unsat / unknown / timeout) to RESULTS_FILE.
# A model or property verirepair cannot read leaves no result file (exit 2, reason on
# stderr); an earlier file of the same name is removed first, so none can be mistaken
# for this run's answer. The CATEGORY is not used: the bab engine chooses input or ReLU
# splitting from the network.
set -uo pipefail
source "$(dirname "$0")/common.sh"
vnncomp_start run_instance.sh 6 \
    "run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" "$@"
# The harness's clock includes Python's start-up and the imports (about 2 s here), which
# come before check's own clock starts: the verifier gets the timeout less 2 s when that
# leaves at least half of it (TIMEOUT > 4), else all of it. A TIMEOUT that is not a
# number is passed on for check to refuse.
budget="$(awk -v t="$6" 'BEGIN { if (t + 0 == t && t > 4) printf "%.3f", t - 2; else print t }')"
rm -f -- "$5"
"$PYTHON" -m verirepair.cli check "$3" "$4" --timeout "$budget" --result-file "$5" --quiet
code=$?
case $code in
    0|10|20|21) exit 0 ;;   # holds, violated, unknown, timeout: the result file is written
    *) exit "$code" ;;
esac
