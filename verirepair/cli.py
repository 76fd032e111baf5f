"""Command line: ``verirepair check``, ``repair``, ``localize`` and ``batch``.

Bad input is reported as one line on stderr with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from verirepair import __version__
from verirepair.errors import InputFileError, VerirepairError
from verirepair.network import load_network
from verirepair.report import (cross_check_dict, cross_check_text, human_text, json_text,
                               result_dict, vnncomp_text, write_atomic)
from verirepair.spec import load_spec
from verirepair.verify.bab import SPLIT_KINDS, BabOptions
from verirepair.verify.engine import (ENGINES, Agreement, VerifyOptions, agreement,
                                      cross_check, engine_info, verify)
from verirepair.verify.types import Result, Stats, Verdict

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
        print(f"[verirepair] {stats.seconds:7.1f} s  {stats.unit} {stats.boxes:>10,}  "
              f"open {queue:>9,}", file=sys.stderr, flush=True)
    return show


SMALL_NETWORK_NEURONS = 100


def _choose_threads(requested: int, network) -> None:
    """--threads, or 1 thread for tiny networks (thread start-up costs more than it saves)."""
    if requested:
        torch.set_num_threads(requested)
    elif sum(l.n_out for l in network.net.layers[:-1]) < SMALL_NETWORK_NEURONS:
        torch.set_num_threads(1)


def _split_needs_bab(split: str, *engines: str | None) -> None:
    """``--split input|relu`` with no bab engine to apply it to is a mistake, not a no-op."""
    if split != "auto" and "bab" not in engines:
        raise InputFileError(f"--split {split}: only the bab engine splits (engine "
                             f"{' and '.join(e for e in engines if e)})")


def _cmd_check(args: argparse.Namespace) -> int:
    engines = [engine_info(args.engine)]  # unknown/unavailable engine: one line, exit 2
    if args.cross_check:
        engines.append(engine_info(args.cross_check))
    _split_needs_bab(args.split, args.engine, args.cross_check)
    network = load_network(args.model)
    _choose_threads(args.threads, network)
    spec = load_spec(args.property)
    for info in engines:
        info.fits(network)
    if args.result_file:
        _check_writable(Path(args.result_file))
        _refuse_overwrite([("the model", args.model), ("the property", args.property),
                           ("the certificate", args.certificate)],
                          [("--result-file", args.result_file)])
    progress = _progress_printer(args.quiet)
    options = VerifyOptions(timeout=args.timeout, engine=args.engine,
                            bab=BabOptions(split=args.split))
    result = _verify(network, spec, options, progress, args)
    second = None
    if args.cross_check and result.verdict is Verdict.HOLDS:
        second = cross_check(network, spec, args.cross_check, args.timeout, progress,
                             bab=options.bab)
    agreed = agreement(result, second) if second is not None else None
    if args.result_file:
        _write_result_file(args.result_file, result, agreed)
    # a 'holds' is a proof when its engine is sound (a certificate's check is), or a
    # sound cross-check agreed
    sound = result.verdict is not Verdict.HOLDS or engines[0].sound or (
        result.engine == "certificate") or (
        second is not None and engines[1].sound and agreed is Agreement.AGREE)
    _print_check(args, result, args.cross_check, second, agreed, sound)
    if not sound:
        hint = ("add --cross-check bab for one" if second is None else
                f"the cross-check ({engines[1].name}) did not confirm it")
        print(f"note: engine {engines[0].name} is not sound (its 'holds' is not a proof); "
              f"{hint}", file=sys.stderr)
    if agreed is Agreement.DISAGREE:
        print(f"error: ENGINES DISAGREE: {result.engine} says {_said(result)}, "
              f"{second.engine} says {_said(second)}; this is a bug in verirepair "
              "(please report it with the model and property)", file=sys.stderr)
        return EXIT_INTERNAL
    return VERDICT_EXIT[result.verdict]


def _verify(network, spec, options: VerifyOptions, progress, args: argparse.Namespace
            ) -> Result:
    """``verify``, starting from ``--certificate`` when given (verify/certificate.py:
    checked from scratch; the chosen engine decides whatever it leaves open)."""
    from verirepair.verify.certificate import (load_certificate, spec_key,
                                               verify_with_certificate)

    cert = load_certificate(args.certificate, spec_key(args.property)) if args.certificate \
        else None
    if args.certificate and cert is None:
        log.warning("%s holds no certificate for %s; verifying without one",
                    args.certificate, args.property)
    if cert is None:
        return verify(network, spec, options, progress)

    def run(net, sub, seconds: float) -> Result:
        return verify(net, sub, replace(options, timeout=seconds), progress)
    return verify_with_certificate(network, spec, cert, options.timeout, run)


def _write_result_file(path: str, result: Result, agreed: Agreement | None) -> None:
    """The VNN-COMP result file; ``unknown`` when two engines disagree."""
    if agreed is Agreement.DISAGREE:
        result = Result(Verdict.UNKNOWN, None, reason="engines disagree",
                        engine=result.engine, stats=result.stats)
    _write_output(path, vnncomp_text(result), "the result file")


def _write_output(path: str | Path, text: str, what: str) -> None:
    """Write an output file atomically; a failure is one line naming the file."""
    try:
        write_atomic(path, text)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputFileError(f"{path}: cannot write {what}: {reason}") from None


def _said(result: Result) -> str:
    """A verdict as the disagreement message names it."""
    extra = (" (with an exact real-arithmetic counterexample)" if result.witness is not None
             else "")
    return result.verdict.value + extra


def _print_check(args: argparse.Namespace, result: Result, cross_engine: str | None,
                 second: Result | None, agreed: Agreement | None, sound: bool) -> None:
    """The check result on stdout (JSON or text), with the cross-check when one ran;
    ``sound`` is False for a 'holds' that is not a proof."""
    if args.json:
        data = result_dict(result, str(args.model), str(args.property), sound)
        if cross_engine:
            data["cross_check"] = cross_check_dict(cross_engine, second, agreed)
        print(json_text(data))
        return
    print(human_text(result, sound))
    if cross_engine:
        print(cross_check_text(cross_engine, result, second, agreed))


# Outputs go through a temporary file named ".<name>.<8 random>.onnx" beside them.
TEMP_NAME_EXTRA = len("..XXXXXXXX.onnx")


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputFileError(f"{path}: folder '{parent}' does not exist")
    if path.is_dir():
        raise InputFileError(f"{path}: is a folder, expected a result file name")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(path.name.encode()) + TEMP_NAME_EXTRA > name_max:
        raise InputFileError(f"{path}: file name too long (at most "
                             f"{name_max - TEMP_NAME_EXTRA} bytes here)")


def _refuse_overwrite(inputs: list[tuple[str, str | Path | None]],
                      outputs: list[tuple[str, str | Path | None]]) -> None:
    """No output may be an input file or another output (checked before any work)."""
    seen: dict[Path, str] = {Path(path).resolve(): name for name, path in inputs if path}
    for flag, path in outputs:
        if not path:
            continue
        where = Path(path).resolve()
        if where in seen:
            raise InputFileError(f"{path}: {flag} would overwrite {seen[where]}")
        seen[where] = flag


def _seconds(text: str) -> float:
    """``--timeout``: a non-negative number of seconds (``inf`` for no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None
    if not value >= 0.0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got '{text}'")
    return value


def _positive(text: str) -> float:
    """A number > 0 (``inf`` allowed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None
    if not value > 0.0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be a positive number, got '{text}'")
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
    if not all(math.isfinite(v) for v in list(lo) + list(hi)):
        raise InputFileError("--domain-lower/--domain-upper: the fidelity domain must be "
                             "finite (samples are drawn uniformly from it)")


def _cmd_repair(args: argparse.Namespace) -> int:
    from verirepair.repair.loop import RepairOptions, repair
    from verirepair.repair.summary import repair_summary

    if (args.domain_lower is None) != (args.domain_upper is None):
        raise InputFileError("--domain-lower and --domain-upper must be given together")
    out = Path(args.output)
    _check_writable(out)
    if out.name.endswith(".gz"):
        raise InputFileError(f"{out}: the repaired model is written uncompressed; name it "
                             ".onnx")
    for extra in (args.report, args.certificate):
        if extra:
            _check_writable(Path(extra))
    _check_distinct_outputs(args)
    _check_domain(args)
    if not args.quiet:
        logging.getLogger("verirepair").setLevel(logging.INFO)
    if args.cross_check:  # unavailable engine: one line, now (repair checks that it fits)
        engine_info(args.cross_check)
    options = RepairOptions(argmax=args.argmax, domain_lower=args.domain_lower,
                            domain_upper=args.domain_upper, localize=args.localize,
                            cross_check=args.cross_check, patch=args.patch,
                            boundary_samples=args.fidelity_samples,
                            boundary_pool=25 * args.fidelity_samples,
                            **({} if args.max_output_change is None else
                               {"max_output_change_ratio": args.max_output_change}))
    report = repair(args.model, args.property, args.preserve or [], out, args.budget, options,
                    args.certificate)
    print(repair_summary(report))
    if args.report:
        _write_output(args.report, json_text(report.to_dict()) + "\n", "the repair report")
    ok = report.status == "proven" or report.status.startswith("nothing to repair")
    return EXIT_HOLDS if ok else EXIT_NOT_REPAIRED


def _check_distinct_outputs(args: argparse.Namespace) -> None:
    """No output of repair may be an input file or another output."""
    inputs = [("the input model", args.model)]
    inputs += [("the property", p) for p in args.property]
    inputs += [("a preserved property", p) for p in args.preserve or []]
    _refuse_overwrite(inputs, [("-o", args.output), ("--report", args.report),
                               ("--certificate", args.certificate)])


def _localizer_names() -> list[str]:
    from verirepair.localize import LOCALIZERS

    return sorted(LOCALIZERS)


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
    rep.add_argument("--certificate", metavar="FILE",
                     help="also write the proof certificate of every property here "
                          "(for `check --certificate`)")
    rep.add_argument("--domain-lower", type=float, nargs="+", metavar="X",
                     help="input domain lower bounds (one number per input)")
    rep.add_argument("--domain-upper", type=float, nargs="+", metavar="X",
                     help="input domain upper bounds (one number per input)")
    rep.add_argument("--argmax", action="store_true",
                     help="the decision is the argmax output (default: argmin)")
    rep.add_argument("--localize", default="none", choices=["none", *_localizer_names()],
                     help="rank last-hidden neurons on counterexamples and patch the "
                          "outgoing weights of the top 10%% first, widening the set until "
                          "the QP succeeds (default none: every last-layer parameter)")
    rep.add_argument("--patch", default="qp", choices=["qp", "milp", "pso", "cmaes"],
                     help="qp: minimal squared change (Clarabel, default); milp: first "
                          "change the incoming weights of a few last-hidden neurons on "
                          "points (MILP, HiGHS or Gurobi; --localize picks them, default "
                          "gradient), then the qp; pso (CARE) or cmaes (SHARPEN): "
                          "derivative-free search; every patch must pass the same proof")
    rep.add_argument("--fidelity-samples", type=_count(0, MAX_FIDELITY_SAMPLES), default=0,
                     metavar="N",
                     help="also keep the decision on the N samples with the smallest "
                          "decision gap among 25N uniform domain samples (better agreement "
                          "with the original, slower; ACAS Xu: N=8000 gave +0.05 to 0.2 "
                          "points at 1.5-3x the QP time); default 0")
    rep.add_argument("--max-output-change", type=_positive, metavar="R",
                     help="with --localize, refuse a localised patch that changes some "
                          "output on the fidelity samples by more than R times the "
                          "original's largest |output| there, and try the wider sets; "
                          "with or without --localize, a patch used above R is warned "
                          "about (default 10; inf: never refuse; with --patch milp nothing "
                          "is refused when the hidden-layer patch alone exceeds R)")
    rep.add_argument("--cross-check", metavar="ENGINE", choices=sorted(ENGINES),
                     help="prove every property of the saved file again with ENGINE "
                          "(e.g. marabou); a contradiction blocks the output")
    rep.add_argument("--quiet", action="store_true", help="no progress on stderr")
    rep.set_defaults(run=_cmd_repair)


def _engines_help() -> str:
    """The ENGINES section of ``check --help``: one line per registered engine."""
    lines = [f"  {info.describe(probe=False)}" for info in ENGINES.values()]
    return "\nengines:\n" + "\n".join(lines) + "\n"


def _layer_choice(text: str) -> int | str:
    """``--layer``: a hidden-layer index (0-based), ``last`` or ``all``."""
    if text in ("last", "all"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an index, 'last' or 'all', got '{text}'"
                                         ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or positive, got '{text}'")
    return value


def _count(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (and at most ``maximum``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got '{text}'")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:,}, got '{text}'")
        return value
    return parse


# Sample counts beyond these would take tens of GB (refused up front, not by the system):
MAX_SAMPLES = 1_000_000  # localize --samples, per input box
MAX_FIDELITY_SAMPLES = 200_000  # repair --fidelity-samples (25x as many are drawn)


def _cmd_localize(args: argparse.Namespace) -> int:
    from verirepair.errors import MismatchError
    from verirepair.localize import LocalizeOptions, NoBenignInputs, hidden_layers, localize
    from verirepair.localize.points import confirmed_sample, find_points
    from verirepair.verify.engine import check_compatible

    network = load_network(args.model)
    _choose_threads(0, network)
    spec = load_spec(args.property)
    check_compatible(network, spec)
    if args.json:
        _check_writable(Path(args.json))
        _refuse_overwrite([("the model", args.model), ("the property", args.property)],
                          [("--json", args.json)])
    try:
        layers = hidden_layers(network.net, args.layer)
    except ValueError as exc:
        raise MismatchError(f"--layer: {exc}") from None
    points = find_points(network, spec, args.samples, args.seed, args.timeout)
    head = {"model": str(args.model), "property": str(args.property)}
    if points.source == "none":
        word = points.verdict.value
        reason = f" ({points.reason})" if points.reason else ""
        print(f"{word}: no counterexample{reason}; nothing to localize")
        _write_json(args.json, {**head, "verdict": word, "ranking": []})
        return EXIT_HOLDS if points.verdict is Verdict.HOLDS else VERDICT_EXIT[points.verdict]
    if not points.benign.shape[0] and args.method in ("shap", "activation"):
        raise NoBenignInputs(f"no benign input in the property's input box (nor in it grown "
                             f"3x, 10x); --method {args.method} compares with benign inputs, "
                             "use causal, gradient or random")
    options = LocalizeOptions(seed=args.seed, n_values=args.values)
    ranking = localize(network.net, points.cex, points.benign, spec, args.method, args.layer,
                       options)
    # the verifier's counterexample is confirmed; sampled ones only on the float64 lowering
    confirmed = points.source == "verifier" or \
        confirmed_sample(network, spec, points.cex) is not None
    print(_localize_text(points, ranking, layers, args.top, confirmed))
    _write_json(args.json, {**head, "verdict": "violated" if confirmed else "unknown",
                            "source": points.source, **ranking.to_dict()})
    return EXIT_HOLDS


def _localize_text(points, ranking, layers: tuple[int, ...], top: int,
                   confirmed: bool) -> str:
    from verirepair.localize import ranking_text
    from verirepair.localize.points import CONFIRM_TRIES

    grown = (f" (from the box grown {points.benign_growth:g}x: the box has none)"
             if points.benign_growth > 1 else "")
    head = ("violated: {n} counterexample inputs ({source}; one re-checked in onnxruntime)"
            if confirmed else "unknown: {n} inputs unsafe on the float64 lowering ({source}; "
            "none of the worst {tried} confirmed in onnxruntime)")
    lines = [head.format(n=points.cex.shape[0], source=points.source,
                         tried=min(CONFIRM_TRIES, points.cex.shape[0])) + ", "
             f"{points.benign.shape[0]} benign{grown}; at most "
             f"{ranking.params['max_points']} of each used",
             f"method {ranking.method}, hidden layer(s) {', '.join(map(str, layers))}, "
             f"{ranking.params['seconds']:.3f} s"]
    if ranking.layer_scores and len(layers) > 1:
        order = sorted(layers, key=lambda k: -ranking.layer_scores[k])
        lines.append("layers by impact: " + ", ".join(
            f"{k} ({ranking.layer_scores[k]:.4g})" for k in order))
    return "\n".join(lines + [ranking_text(ranking, top)])


def _write_json(path: str | None, data: dict) -> None:
    if not path:
        return
    _write_output(path, json_text(data) + "\n", "the JSON file")


def _add_localize_parser(sub) -> None:
    from verirepair.localize import LOCALIZERS

    loc = sub.add_parser(
        "localize", help="rank the hidden neurons that cause a violation",
        description="Find counterexamples (sampling, else the verifier) and benign inputs, "
                    "then rank hidden neurons by their blame for the violation (CARE's "
                    "causal attribution by default).",
        epilog=f"exit codes: {EXIT_HOLDS} ranked (the first line says violated, or unknown "
               "when no sampled counterexample is confirmed in onnxruntime) or the property "
               f"holds, {EXIT_UNKNOWN}/{EXIT_TIMEOUT} nothing to rank (no decision), "
               f"{EXIT_BAD_INPUT} bad input")
    loc.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    loc.add_argument("property", help="VNN-LIB property (.vnnlib or .vnnlib.gz)")
    loc.add_argument("--method", choices=sorted(LOCALIZERS), default="causal",
                     help="causal (CARE, default), gradient, shap (SHARPEN), activation "
                          "(divergence from benign inputs) or random")
    loc.add_argument("--layer", type=_layer_choice, default="last",
                     help="hidden layer index (0-based), 'last' (default) or 'all'")
    loc.add_argument("--top", type=_count(1), default=10, help="rows to print (default 10)")
    loc.add_argument("--json", help="write the whole ranking as JSON here")
    loc.add_argument("--samples", type=_count(1, MAX_SAMPLES), default=10000,
                     help=f"uniform samples per input box (default 10000, at most "
                          f"{MAX_SAMPLES:,})")
    loc.add_argument("--values", type=_count(2), default=16,
                     help="intervention values per neuron for 'causal' (default 16)")
    loc.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    loc.add_argument("--timeout", type=_seconds, default=120.0,
                     help="verifier seconds when sampling finds nothing (default 120)")
    loc.set_defaults(run=_cmd_localize)


def _cmd_batch(args: argparse.Namespace) -> int:
    from verirepair import batch

    info = engine_info(args.engine)  # unknown/unavailable engine: one line, exit 2
    _split_needs_bab(args.split, args.engine)
    label = batch.engine_label(args.engine, args.split)
    tasks = batch.read_instances(args.instances, args.timeout)
    expected = batch.read_expected(args.expected) if args.expected else None
    out = Path(args.output)
    _check_writable(out)
    _refuse_overwrite([("the instances CSV", args.instances),
                       ("the expected-answers CSV", args.expected)]
                      + [(f"instance {t.index + 1}'s {kind}", path) for t in tasks
                         for kind, path in (("model", t.onnx_path),
                                            ("property", t.vnnlib_path))], [("-o", out)])
    results_dir = Path(args.results_dir) if args.results_dir else None
    names = batch.result_file_names(tasks)
    if expected is not None and not any(batch.expected_answer(expected, t) for t in tasks):
        print(f"note: {args.expected} has no answer for any instance of {args.instances}",
              file=sys.stderr)
    digests = {t.index: batch.instance_digest(t) for t in tasks}
    kept = _batch_resume(args, out, tasks, digests, names, results_dir)
    outcomes: list[batch.BatchOutcome] = []
    for o in sorted(kept.values(), key=lambda o: o.task.index):
        if expected is not None:
            o.status = batch.judge(o, batch.expected_answer(expected, o.task))
        outcomes.append(o)
        if o.status == "wrong":  # a kept wrong answer is as loud as a new one
            _batch_progress(o, len(outcomes), len(tasks), True)
    todo = [t for t in tasks if t.index not in kept]
    # Before any work: the table so far and an 'unknown' result file per instance still
    # to run, so no file of an earlier run outlives this one, and an unwritable place
    # fails at once.
    _batch_write(out, batch.results_csv(outcomes, expected, info.sound))
    _batch_placeholders(results_dir, [names[t.index] for t in todo])

    def on_done(o: batch.BatchOutcome) -> None:
        o.engine, o.digest = label, digests[o.task.index]
        if expected is not None:
            o.status = batch.judge(o, batch.expected_answer(expected, o.task))
        outcomes.append(o)
        _batch_progress(o, len(outcomes), len(tasks), args.quiet)
        if results_dir is not None and o.result_text:
            _batch_write(results_dir / names[o.task.index], o.result_text)
        _batch_write(out, batch.results_csv(outcomes, expected, info.sound))

    def on_term(signum, frame) -> None:  # SIGTERM (e.g. `timeout`) ends it like Ctrl-C
        raise KeyboardInterrupt

    import signal

    previous = signal.signal(signal.SIGTERM, on_term)
    interrupted = False
    try:
        batch.run_pool(todo, args.jobs, on_done, label)
    except KeyboardInterrupt:
        interrupted = True
    except batch.WorkerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(_batch_summary(outcomes, len(tasks), expected is not None, out))
    if not info.sound and any(o.verdict == "holds" for o in outcomes):
        print(f"note: engine {info.name} is not sound (its 'holds' is not a proof)",
              file=sys.stderr)
    return _batch_exit(outcomes, interrupted)


def _batch_resume(args: argparse.Namespace, out: Path, tasks: list, digests: dict,
                  names: dict, results_dir: Path | None) -> dict:
    """``--resume``: the outcomes kept from ``out``; refuses (before anything is
    overwritten) when the file has rows but none belongs to this run."""
    from verirepair import batch

    if not args.resume:
        return {}
    files = {i: results_dir / n for i, n in names.items()} if results_dir else None
    earlier = batch.earlier_outcomes(out, tasks, batch.engine_label(args.engine, args.split),
                                     digests, files)
    if earlier.rows and earlier.unmatched == earlier.rows:
        raise InputFileError(f"{out}: --resume: none of its {earlier.rows} rows is an "
                             "instance of this run (same onnx, vnnlib, timeout, engine and "
                             "file contents); nothing was changed")
    dropped = (f"; {earlier.unmatched} earlier row(s) of other instances dropped"
               if earlier.unmatched else "")
    print(f"resume: {len(earlier.kept)} of {len(tasks)} instances kept from {out}"
          f"{dropped}", file=sys.stderr)
    return earlier.kept


def _batch_write(path: Path, text: str) -> None:
    _write_output(path, text, "the batch output")


def _batch_placeholders(results_dir: Path | None, names) -> None:
    """``unknown`` in every instance's result file until the instance answers."""
    if results_dir is None:
        return
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"{results_dir}: cannot create the folder: "
                             f"{exc.strerror or type(exc).__name__}") from None
    for name in names:
        _batch_write(results_dir / name, "unknown\n")


def _batch_progress(o, done: int, total: int, quiet: bool) -> None:
    """One stderr line per finished instance; a wrong answer is never quiet."""
    tag = f"{o.task.onnx} {o.task.vnnlib}"
    if o.status == "wrong":
        print(f"error: WRONG ANSWER on {tag} (line {o.task.line}): {o.verdict}, the known "
              "answer differs; this is a bug in verirepair (please report it)",
              file=sys.stderr, flush=True)
    elif not quiet:
        extra = f" ({o.reason})" if o.verdict == "error" else ""
        print(f"[{done}/{total}] {tag}: {o.verdict} {o.seconds:.2f} s{extra}",
              file=sys.stderr, flush=True)


def _batch_summary(outcomes: list, total: int, judged: bool, out: Path) -> str:
    from statistics import median

    from verirepair.batch import VERDICTS

    counts = ", ".join(f"{v} {sum(o.verdict == v for o in outcomes)}" for v in VERDICTS)
    times = [o.seconds for o in outcomes]
    lines = [f"{len(outcomes)} of {total} instances: {counts}",
             f"time: sum {sum(times):.2f} s, median "
             f"{median(times) if times else 0.0:.2f} s"]
    if judged:
        lines.append("known answers: " + ", ".join(
            f"{s} {sum(o.status == s for o in outcomes)}"
            for s in ("correct", "wrong", "unsolved", "unchecked")))
    return "\n".join(lines + [f"results: {out}"])


def _batch_exit(outcomes: list, interrupted: bool) -> int:
    """1 a wrong answer (even in an interrupted run) or an internal error; 130
    interrupted; 2 an instance with bad input; else 0 (whatever the verdicts)."""
    if any(o.status == "wrong" for o in outcomes):
        return EXIT_INTERNAL
    if interrupted:
        return 130
    if any(o.error_kind == "internal" for o in outcomes):
        return EXIT_INTERNAL
    if any(o.error_kind == "input" for o in outcomes):
        return EXIT_BAD_INPUT
    return 0


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _add_batch_parser(sub) -> None:
    bat = sub.add_parser(
        "batch", help="check every instance of a VNN-COMP instances CSV",
        description="Run `check` on every row (onnx,vnnlib,timeout; paths relative to the "
                    "CSV) in parallel worker processes; write a results CSV after every "
                    "instance and, with --results-dir, one VNN-COMP result file each.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 every instance ran (whatever its verdict), 2 bad input (the "
               "CSV, or an instance's model/property: see its row), 1 a wrong answer "
               "against --expected or an internal error, 130 interrupted (the CSV holds "
               "what finished)")
    bat.add_argument("instances", help="instances CSV: onnx,vnnlib,timeout per row")
    bat.add_argument("-o", "--output", required=True, help="results CSV to write")
    bat.add_argument("--results-dir", metavar="DIR",
                     help="also write a VNN-COMP result file per instance here")
    bat.add_argument("--expected", metavar="CSV",
                     help="known answers (onnx,vnnlib,expected: holds/violated or "
                          "unsat/sat); adds expected and status columns, and a wrong "
                          "answer makes the exit code 1")
    bat.add_argument("--timeout", type=_seconds, default=None,
                     help="seconds per instance (default: the CSV's timeout column)")
    bat.add_argument("--jobs", type=_count(1), default=_usable_cores(),
                     help="worker processes (default: the usable cores; each worker uses "
                          "one torch thread when there are several)")
    bat.add_argument("--engine", choices=sorted(ENGINES), default="bab",
                     help="verification engine (default bab)")
    bat.add_argument("--split", choices=SPLIT_KINDS, default="auto",
                     help="what the bab engine splits (as for check; default auto); the "
                          "results table records it with the engine, e.g. bab:relu")
    bat.add_argument("--resume", action="store_true",
                     help="keep the instances the results CSV (-o) already holds with the "
                          "same timeout, engine and file contents and a verdict other than "
                          "error (and, with --results-dir, a result file that says it, a sat "
                          "one re-checked in onnxruntime); run "
                          "the rest")
    bat.add_argument("--quiet", action="store_true", help="no per-instance lines on stderr")
    bat.set_defaults(run=_cmd_batch)


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
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES_HELP + _engines_help())
    check.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    check.add_argument("property", help="VNN-LIB property (.vnnlib or .vnnlib.gz)")
    check.add_argument("--timeout", type=_seconds, default=300.0,
                       help="seconds (default 300)")
    check.add_argument("--engine", choices=sorted(ENGINES), default="bab",
                       help="verification engine (default bab); see ENGINES below")
    check.add_argument("--split", choices=SPLIT_KINDS, default="auto",
                       help="what the bab engine splits: input intervals (few inputs, "
                            "e.g. ACAS Xu), ReLU neurons (many inputs), or auto: ReLU "
                            f"splitting from {BabOptions().relu_split_min_inputs} inputs "
                            "on when the network has a hidden layer (default auto; also "
                            "for --cross-check bab)")
    check.add_argument("--cross-check", choices=sorted(ENGINES), metavar="ENGINE",
                       help="confirm a 'holds' with this second engine (its own --timeout);"
                            " if it says 'violated' (or z3 finds an exact real-arithmetic "
                            "counterexample) the run fails with exit code "
                            f"{EXIT_INTERNAL}")
    check.add_argument("--certificate", metavar="FILE",
                       help="start from the proof certificate `repair --certificate` wrote "
                            "(checked from scratch, never trusted)")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument("--result-file", help="write the VNN-COMP result file here")
    check.add_argument("--quiet", action="store_true", help="no progress on stderr")
    check.add_argument("--threads", type=_threads, default=0,
                       help="torch threads (default 0: all cores, or 1 for networks with "
                            f"fewer than {SMALL_NETWORK_NEURONS} hidden neurons)")
    check.set_defaults(run=_cmd_check)
    _add_repair_parser(sub)
    _add_localize_parser(sub)
    _add_batch_parser(sub)
    for each in (parser, *sub.choices.values()):
        _accept_negative_numbers(each)
    return parser


# argparse takes '-1e-3' (or '-inf') for an option name, so `--domain-lower -1e-3 0`
# failed with "expected at least one argument"; no option of ours looks like a number
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$",
                             re.IGNORECASE)


def _accept_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Let every negative float Python reads, exponents included, be an option value
    (argparse's own pattern knows only '-1' and '-1.5'; the attribute is how it decides)."""
    parser._negative_number_matcher = NEGATIVE_NUMBER  # noqa: SLF001


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.run(args)
    except VerirepairError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a path the system refuses (name too long, ...): one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
