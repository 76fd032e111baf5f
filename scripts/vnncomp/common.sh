# Sourced by the VNN-COMP entry scripts; not run on its own.
#
# vnncomp_start NAME ARGC USAGE ARGS...
#   Exit 1 with NAME's usage line on stderr unless the first of ARGS is the version string
#   v1 and there are ARGC of them; then set PYTHON (default python3) and put this
#   checkout's package first on PYTHONPATH, installed or not.
VNNCOMP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

vnncomp_start() {
    local name="$1" argc="$2" usage="$3"
    shift 3
    if [ "${1:-}" != "v1" ] || [ "$#" -ne "$argc" ]; then
        echo "$name: usage: $usage (the first argument is the version string v1)" >&2
        exit 1
    fi
    PYTHON="${PYTHON:-python3}"
    export PYTHONPATH="$VNNCOMP_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}
