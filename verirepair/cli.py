"""Command line: ``verirepair check`` and ``verirepair repair``.

Bad input is reported as one line on stderr with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

import torch

from verirepair import __version__
from verirepair.errors import InputFileError, VerirepairError
from verirepair.network import load_network
from verirepair.report import human_text, json_text, result_dict, vnncomp_text, write_atomic
from verirepair.spec import load_spec
from verirepair.verify.engine import ENGINES, VerifyOptions, verify
from verirepair.verify.types import Stats, Verdict

EXIT_HOLDS = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_VIOLATED = 10
EXIT_UNKNOWN = 20
EXIT_TIMEOUT = 21

VERDICT_EXIT = {
    Verdict.HOLDS: EXIT_HOLDS,
    Verdict.VIOLATED: EXIT_VIOLATED,
    Verdict.UNKNOWN: EXIT_UNKNOWN,
    Verdict.TIMEOUT: EXIT_TIMEOUT,
}

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_HOLDS}   holds      the property is proven (no input in the region is unsafe)
  {EXIT_VIOLATED}  violated   a counterexample was found and re-checked in onnxruntime
  {EXIT_UNKNOWN}  unknown    no decision (reason printed)
  {EXIT_TIMEOUT}  timeout    the time limit ended the search
  {EXIT_BAD_INPUT}   bad input  missing/malformed file, unsupported operator, mismatch
  {EXIT_INTERNAL}   internal   a bug in verirepair (please report it)
"""

log = logging.getLogger("verirepair")


def _progress_printer(quiet: bool) -> Callable[[Stats, int], None] | None:
    if quiet:
        return None

    def show(stats: Stats, queue: int) -> None:
        print(f"[verirepair] {stats.seconds:7.1f} s  boxes {stats.boxes:>10,}  "
              f"open {queue:>9,}", file=sys.stderr, flush=True)
    return show


SMALL_NETWORK_NEURONS = 100


def _choose_threads(requested: int, network) -> None:
    """--threads, or 1 thread for tiny networks (thread start-up costs more than it saves)."""
    if requested:
        torch.set_num_threads(requested)
    elif sum(l.n_out for l in network.net.layers[:-1]) < SMALL_NETWORK_NEURONS:
        torch.set_num_threads(1)


def _cmd_check(args: argparse.Namespace) -> int:
    network = load_network(args.model)
    _choose_threads(args.threads, network)
    spec = load_spec(args.property)
    if args.result_file:
        _check_writable(Path(args.result_file))
    options = VerifyOptions(timeout=args.timeout, engine=args.engine)
    result = verify(network, spec, options, _progress_printer(args.quiet))
    if args.result_file:
        try:
            write_atomic(args.result_file, vnncomp_text(result))
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise InputFileError(f"{args.result_file}: cannot write the result file: "
                                 f"{reason}") from None
    if args.json:
        print(json_text(result_dict(result, str(args.model), str(args.property))))
    else:
        print(human_text(result))
    return VERDICT_EXIT[result.verdict]


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputFileError(f"{path}: folder '{parent}' does not exist")
    if path.is_dir():
        raise InputFileError(f"{path}: is a folder, expected a result file name")


def _seconds(text: str) -> float:
    """``--timeout``: a non-negative number of seconds (``inf`` for no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None
    if not value >= 0.0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got '{text}'")
    return value


def _threads(text: str) -> int:
    """``--threads``: 0 (all cores) or a positive count."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or positive, got '{text}'")
    return value


EXIT_NOT_REPAIRED = 30


def _check_domain(args: argparse.Namespace) -> None:
    if args.domain_lower is None:
        return
    lo, hi = args.domain_lower, args.domain_upper
    if len(lo) != len(hi) or any(not a <= b for a, b in zip(lo, hi)):
        raise InputFileError("--domain-lower/--domain-upper: need the same count of "
                             "numbers with lower <= upper")


def _cmd_repair(args: argparse.Namespace) -> int:
    from verirepair.repair.loop import RepairOptions, repair
    from verirepair.repair.summary import repair_summary

    if (args.domain_lower is None) != (args.domain_upper is None):
        raise InputFileError("--domain-lower and --domain-upper must be given together")
    out = Path(args.output)
    _check_writable(out)
    if args.report:
        _check_writable(Path(args.report))
    if out.exists() and out.resolve() == Path(args.model).resolve():
        raise InputFileError(f"{out}: refusing to overwrite the input model")
    _check_domain(args)
    if not args.quiet:
        logging.getLogger("verirepair").setLevel(logging.INFO)
    options = RepairOptions(argmax=args.argmax, domain_lower=args.domain_lower,
                            domain_upper=args.domain_upper)
    report = repair(args.model, args.property, args.preserve or [], out, args.budget, options)
    if args.report:
        write_atomic(args.report, json_text(report.to_dict()) + "\n")
    print(repair_summary(report))
    ok = report.status == "proven" or report.status.startswith("nothing to repair")
    return EXIT_HOLDS if ok else EXIT_NOT_REPAIRED


def _add_repair_parser(sub) -> None:
    rep = sub.add_parser(
        "repair", help="repair the last layer until every property is proven",
        description="Change the last layer as little as possible (QP) so that every "
                    "target and preserved property is proven; the saved file is re-loaded "
                    "and verified before it is written to -o.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"exit codes: {EXIT_HOLDS} proven (or nothing to repair), "
               f"{EXIT_NOT_REPAIRED} not repaired, {EXIT_BAD_INPUT} bad input")
    rep.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    rep.add_argument("property", nargs="+", help="VNN-LIB properties to repair")
    rep.add_argument("-o", "--output", required=True, help="where to write the repaired model")
    rep.add_argument("--preserve", nargs="+", action="extend",
                     help="VNN-LIB properties that must still hold")
    rep.add_argument("--budget", type=_seconds, default=600.0, help="seconds (default 600)")
    rep.add_argument("--report", help="write the JSON report here")
    rep.add_argument("--domain-lower", type=float, nargs="+", metavar="X",
                     help="input domain lower bounds (one number per input)")
    rep.add_argument("--domain-upper", type=float, nargs="+", metavar="X",
                     help="input domain upper bounds (one number per input)")
    rep.add_argument("--argmax", action="store_true",
                     help="the decision is the argmax output (default: argmin)")
    rep.add_argument("--quiet", action="store_true", help="no progress on stderr")
    rep.set_defaults(run=_cmd_repair)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verirepair",
        description="Sound verification and proof-backed repair of ReLU networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES_HELP)
    parser.add_argument("--version", action="version", version=f"verirepair {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check", help="prove a property or find a counterexample",
        description="Prove that no input in the VNN-LIB region reaches the unsafe outputs, "
                    "or find a counterexample (re-checked in onnxruntime).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES_HELP)
    check.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    check.add_argument("property", help="VNN-LIB property (.vnnlib or .vnnlib.gz)")
    check.add_argument("--timeout", type=_seconds, default=300.0,
                       help="seconds (default 300)")
    check.add_argument("--engine", choices=sorted(ENGINES), default="bab")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument("--result-file", help="write the VNN-COMP result file here")
    check.add_argument("--quiet", action="store_true", help="no progress on stderr")
    check.add_argument("--threads", type=_threads, default=0,
                       help="torch threads (default: all cores)")
    check.set_defaults(run=_cmd_check)
    _add_repair_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.run(args)
    except VerirepairError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
