#!/usr/bin/env python
"""Performance and correctness benchmark on the 186 ACAS Xu VNN-COMP instances.

    python benchmarks/acasxu_check.py --jobs 2

Every instance runs in a worker process of ``verirepair.batch`` (the pool behind
``verirepair batch``; started once, fed one instance at a time): ``load_network`` +
``load_spec`` + ``verify(..., VerifyOptions(timeout=t))``, timed with
``time.perf_counter`` (loading included). The parent compares each verdict with
``expected_results.csv`` and re-checks every ``violated`` answer on its own: the
counterexample must lie in an input box of the spec and the onnxruntime output of the
original file must satisfy every row of some disjunct of that box's case.

Writes ``acasxu_check.csv`` and ``acasxu_check.md`` to ``--out`` (default
``benchmarks/results/``) and exits 0 only if no answer was wrong (unsolved is allowed).
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import importlib.metadata
import math
import os
import platform
import re
import shlex
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
OWN_PROPS = REPO_ROOT / "properties" / "acasxu"
CSV_COLUMNS = ["onnx", "vnnlib", "expected", "verdict", "status", "seconds", "boxes",
               "reason"]
SOLVED = ("holds", "violated")


# --------------------------------------------------------------------------- instances

@dataclass
class Instance:
    index: int  # position in the instances CSV (output order)
    onnx: str  # file names as in the CSV
    vnnlib: str
    onnx_path: Path
    vnnlib_path: Path
    timeout: float
    expected: str | None
    estimate: float  # for longest-expected-first scheduling


@dataclass
class Outcome:
    instance: Instance
    verdict: str
    seconds: float
    boxes: int | None = None
    reason: str = ""
    status: str = ""
    cex: dict | None = None
    notes: list[str] = field(default_factory=list)


def benchmarks_dir(arg: str | None) -> Path:
    """``--benchmarks`` (relative to the cwd), else ``$VERIREPAIR_BENCHMARKS`` or
    ``../shared/benchmarks`` (relative to the repo root)."""
    if arg:
        return Path(arg).expanduser().resolve()
    path = Path(os.environ.get("VERIREPAIR_BENCHMARKS", "../shared/benchmarks")).expanduser()
    return (path if path.is_absolute() else REPO_ROOT / path).resolve()


def short_net(onnx_name: str) -> str:
    m = re.search(r"run2a_(\d+)_(\d+)", onnx_name)
    return f"N{m.group(1)}_{m.group(2)}" if m else Path(onnx_name).stem


def short_prop(vnnlib_name: str) -> str:
    name = Path(vnnlib_name).name
    for suffix in (".gz", ".vnnlib"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def prop_number(vnnlib_name: str) -> int | None:
    m = re.search(r"prop_(\d+)", vnnlib_name)
    return int(m.group(1)) if m else None


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return [[c.strip() for c in row] for row in csv.reader(fh) if row and row[0].strip()]


def load_instances(args: argparse.Namespace, bench: Path) -> tuple[list[Instance], int]:
    """The selected instances (CSV order) and the number of rows in the CSV."""
    acas = bench / "acasxu"
    inst_csv = acas / "acasxu_instances.csv"
    exp_csv = acas / "expected_results.csv"
    for path in (inst_csv, exp_csv):
        if not path.is_file():
            raise SystemExit(f"acasxu_check: {path} not found (set --benchmarks or "
                             "VERIREPAIR_BENCHMARKS)")
    expected: dict[tuple[str, str], str] = {}
    for row in read_rows(exp_csv):
        if row[:3] == ["onnx", "vnnlib", "expected"]:
            continue
        expected[(row[0], row[1])] = row[2]
    nnenum = nnenum_times(bench)
    rows = read_rows(inst_csv)
    pattern = re.compile(args.filter) if args.filter else None
    instances: list[Instance] = []
    for i, row in enumerate(rows):
        onnx_name, vnnlib_name, timeout_s = row[0], row[1], row[2]
        if pattern and not pattern.search(f"{onnx_name},{vnnlib_name}"):
            continue
        if args.limit is not None and len(instances) >= args.limit:
            break
        vnnlib_path = (OWN_PROPS / Path(vnnlib_name).name) if args.props else acas / vnnlib_name
        timeout = float(args.timeout) if args.timeout is not None else float(timeout_s)
        key = (onnx_name, vnnlib_name)
        estimate = nnenum.get(key, (None, timeout))[1]
        instances.append(Instance(i, onnx_name, vnnlib_name, acas / onnx_name, vnnlib_path,
                                  timeout, expected.get(key), estimate))
    missing = sorted({str(p) for inst in instances
                      for p in (inst.onnx_path, inst.vnnlib_path) if not p.is_file()})
    if missing:
        raise SystemExit("acasxu_check: missing input files:\n  " + "\n  ".join(missing))
    return instances, len(rows)


def nnenum_times(bench: Path) -> dict[tuple[str, str], tuple[str, float]]:
    """``(onnx, vnnlib) -> (nnenum result, wall seconds)`` from the reference CSV, if any."""
    path = bench / "acasxu" / "nnenum_times.csv"
    out: dict[tuple[str, str], tuple[str, float]] = {}
    if not path.is_file():
        return out
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                out[(row["onnx"], row["vnnlib"])] = (row["nnenum_result"],
                                                     float(row["wall_seconds"]))
            except (KeyError, ValueError):
                continue
    return out


# --------------------------------------------------------------------------- workers

def run_pool(instances: list[Instance], jobs: int, on_done) -> None:
    """Run every instance with ``verirepair.batch.run_pool`` (the worker pool behind
    ``verirepair batch``), longest expected first; ``on_done(Outcome)`` as each finishes."""
    from verirepair.batch import BatchTask, WorkerStartError
    from verirepair.batch import run_pool as batch_pool

    by_index = {inst.index: inst for inst in instances}
    queue = sorted(instances, key=lambda inst: (-inst.estimate, inst.index))
    tasks = [BatchTask(i.index, i.onnx, i.vnnlib, i.onnx_path, i.vnnlib_path, i.timeout)
             for i in queue]

    def done(o) -> None:
        on_done(Outcome(by_index[o.task.index], o.verdict, o.seconds, o.boxes, o.reason,
                        cex=o.cex))
    try:
        batch_pool(tasks, jobs, done)
    except WorkerStartError as exc:
        raise SystemExit(f"acasxu_check: {exc}") from None


# --------------------------------------------------------------------------- re-check

class CexChecker:
    """Independent check of a counterexample: box membership + onnxruntime on the file."""

    def __init__(self) -> None:
        self._specs: dict[Path, object] = {}
        self._sessions: dict[Path, object] = {}

    def _spec(self, path: Path):
        if path not in self._specs:
            from verirepair.spec import load_spec

            self._specs[path] = load_spec(path)
        return self._specs[path]

    def _session(self, path: Path):
        if path not in self._sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            self._sessions[path] = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        return self._sessions[path]

    def check(self, inst: Instance, cex: dict | None) -> tuple[bool, str]:
        """(ok, message)."""
        import numpy as np

        if cex is None:
            return False, "violated without a counterexample"
        try:
            spec = self._spec(inst.vnnlib_path)
            x = np.asarray(cex["x"], dtype=np.float64).reshape(-1)
            if x.shape[0] != spec.n_inputs or not np.all(np.isfinite(x)):
                return False, f"counterexample has {x.shape[0]} values / non-finite entries"
            x32 = x.astype(np.float32)
            if not np.array_equal(x32.astype(np.float64), x):
                return False, "counterexample is not float32-exact"
            in_cases = [i for i, case in enumerate(spec.cases)
                        if np.all(x >= case.box.lower) and np.all(x <= case.box.upper)]
            if not in_cases:
                return False, "counterexample lies outside every input box of the spec"
            sess = self._session(inst.onnx_path)
            inp = sess.get_inputs()[0]
            y = np.asarray(sess.run(None, {inp.name: x32.reshape(1, 1, 1, 5)})[0],
                           dtype=np.float64).reshape(-1)
            if y.shape[0] != spec.n_outputs or not np.all(np.isfinite(y)):
                return False, f"onnxruntime output has {y.shape[0]} values / non-finite"
            for i in in_cases:
                for k, hs in enumerate(spec.cases[i].unsafe):
                    if np.all(np.asarray(hs.matrix) @ y <= np.asarray(hs.rhs)):
                        return True, f"cex re-checked in onnxruntime (case {i}, disjunct {k})"
            return False, ("onnxruntime output " + np.array2string(y, precision=6)
                           + " satisfies no unsafe disjunct of the case(s) containing x")
        except Exception as exc:  # noqa: BLE001
            return False, f"re-check failed: {type(exc).__name__}: {exc}"


def judge(out: Outcome, checker: CexChecker) -> None:
    """Fill ``out.status`` (correct / wrong / unsolved / unchecked)."""
    exp = out.instance.expected
    if out.verdict == "violated":
        ok, msg = checker.check(out.instance, out.cex)
        if not ok:
            out.status = "wrong"
            out.reason = f"COUNTEREXAMPLE CHECK FAILED: {msg}" + (
                f"; {out.reason}" if out.reason else "")
            return
        out.reason = msg + (f"; {out.reason}" if out.reason else "")
    if out.verdict in SOLVED:
        if exp not in SOLVED:
            out.status = "unchecked"
        else:
            out.status = "correct" if out.verdict == exp else "wrong"
    else:
        out.status = "unsolved"


# --------------------------------------------------------------------------- reports

def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f}s"


def write_csv(path: Path, outcomes: list[Outcome]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for o in sorted(outcomes, key=lambda o: o.instance.index):
            w.writerow([o.instance.onnx, o.instance.vnnlib, o.instance.expected or "",
                        o.verdict, o.status, f"{o.seconds:.3f}",
                        "" if o.boxes is None else o.boxes, o.reason])
    tmp.replace(path)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_lines() -> list[str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return [
        f"- nproc: {usable} (os.cpu_count {os.cpu_count()})",
        f"- python {platform.python_version()}, torch {_version('torch')}, "
        f"onnxruntime {_version('onnxruntime')}, numpy {_version('numpy')}, "
        f"verirepair {_version('verirepair')}",
        f"- platform: {platform.platform()}",
        f"- date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
    ]


def write_md(path: Path, outcomes: list[Outcome], run: dict) -> None:
    outs = sorted(outcomes, key=lambda o: o.instance.index)
    count = {s: sum(o.status == s for o in outs) for s in
             ("correct", "wrong", "unsolved", "unchecked")}
    times = [o.seconds for o in outs]
    lines = ["# ACAS Xu check", ""]
    if run["partial"]:
        lines += [f"**PARTIAL RUN ({run['partial']}): {len(outs)} of {run['selected']} "
                  "selected instances finished.**", ""]
    if count["wrong"]:
        lines += [f"**{count['wrong']} WRONG ANSWER(S) — see below.**", ""]
    lines += [
        f"- instances: {len(outs)} run (selected {run['selected']} of {run['total_rows']}"
        f" in the CSV)",
        f"- correct: {count['correct']}",
        f"- wrong: {count['wrong']}",
        f"- unsolved: {count['unsolved']}"
        + (f" (timeout {sum(o.verdict == 'timeout' for o in outs)}, "
           f"unknown {sum(o.verdict == 'unknown' for o in outs)}, "
           f"error {sum(o.verdict == 'error' for o in outs)})" if count["unsolved"] else ""),
    ]
    if count["unchecked"]:
        lines.append(f"- solved but no expected answer: {count['unchecked']}")
    lines += [
        f"- total wall time of the run: {fmt_s(run['wall'])} ({run['jobs']} worker"
        f"{'s' if run['jobs'] != 1 else ''})",
        f"- sum of instance times: {fmt_s(sum(times))}",
        f"- median instance time: {fmt_s(statistics.median(times)) if times else 'n/a'}",
    ]
    ref = [run["nnenum"][k][1] for k in ((o.instance.onnx, o.instance.vnnlib) for o in outs)
           if k in run["nnenum"]]
    if ref:
        lines.append(f"- for orientation, nnenum_times.csv on the same {len(ref)} instances:"
                     f" sum {fmt_s(sum(ref))}, median {fmt_s(statistics.median(ref))}"
                     " (different run, 60 s limit)")
    lines += [
        f"- options: timeout {run['timeout']}, filter "
        f"{'`' + run['filter'] + '`' if run['filter'] else 'none'}, "
        f"limit {run['limit']}, properties from {run['props']}",
        f"- command: `{run['command']}`",
        "",
    ]
    bad = [o for o in outs if o.status == "wrong"]
    if bad:
        lines += ["## WRONG", "", "| instance | expected | verdict | reason |",
                  "|---|---|---|---|"]
        lines += [f"| {short_net(o.instance.onnx)} {short_prop(o.instance.vnnlib)} | "
                  f"{o.instance.expected or ''} | {o.verdict} | {md_cell(o.reason)} |"
                  for o in bad]
        lines.append("")
    lines += ["## Slowest 5", "", "| instance | verdict | status | seconds |",
              "|---|---|---|---:|"]
    for o in sorted(outs, key=lambda o: -o.seconds)[:5]:
        lines.append(f"| {short_net(o.instance.onnx)} {short_prop(o.instance.vnnlib)} | "
                     f"{o.verdict} | {o.status} | {o.seconds:.2f} |")
    lines += ["", "## Per property", "",
              "| property | count | solved | wrong | unsolved | sum s | max s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    groups: dict[str, list[Outcome]] = {}
    for o in outs:
        groups.setdefault(short_prop(o.instance.vnnlib), []).append(o)

    def order(name: str) -> tuple[int, str]:
        n = prop_number(name)
        return (n if n is not None else 10**6, name)

    for name in sorted(groups, key=order):
        g = groups[name]
        n = prop_number(name)
        label = f"φ{n}" if n is not None else name
        lines.append(f"| {label} | {len(g)} | {sum(o.status == 'correct' for o in g)} | "
                     f"{sum(o.status == 'wrong' for o in g)} | "
                     f"{sum(o.status == 'unsolved' for o in g)} | "
                     f"{sum(o.seconds for o in g):.2f} | {max(o.seconds for o in g):.2f} |")
    unsolved = [o for o in outs if o.status == "unsolved"]
    if unsolved:
        lines += ["", "## Unsolved", "", "| instance | expected | verdict | seconds | reason |",
                  "|---|---|---|---:|---|"]
        lines += [f"| {short_net(o.instance.onnx)} {short_prop(o.instance.vnnlib)} | "
                  f"{o.instance.expected or ''} | {o.verdict} | {o.seconds:.2f} | "
                  f"{md_cell(o.reason)} |" for o in unsolved]
    lines += ["", "## Machine", ""] + machine_lines() + [""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)


def md_cell(text: str, limit: int = 300) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run verirepair on the ACAS Xu VNN-COMP instances and check answers.")
    p.add_argument("--benchmarks", metavar="DIR", default=None,
                   help="benchmarks folder holding acasxu/ (default $VERIREPAIR_BENCHMARKS "
                        "or ../shared/benchmarks, relative to the repo root)")
    p.add_argument("--jobs", type=int, default=2, metavar="N",
                   help="worker processes (default 2; each uses 1 torch thread when N > 1)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="per-instance timeout in seconds (default: the CSV's)")
    p.add_argument("--filter", default=None, metavar="REGEX",
                   help='only instances whose "onnx,vnnlib" matches (re.search)')
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N (after --filter, in CSV order)")
    p.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                   help="output folder (default benchmarks/results/)")
    p.add_argument("--props", action="store_true",
                   help="use our own properties/acasxu/prop_N.vnnlib instead of the "
                        "shared ones")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.timeout is not None and not (args.timeout > 0 and math.isfinite(args.timeout)):
        p.error("--timeout must be a positive number")
    if args.limit is not None and args.limit < 0:
        p.error("--limit must be >= 0")
    if args.filter:
        try:
            re.compile(args.filter)
        except re.error as exc:
            p.error(f"--filter: bad regular expression: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = benchmarks_dir(args.benchmarks)
    instances, total_rows = load_instances(args, bench)
    out_dir = Path(args.out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "acasxu_check.csv", out_dir / "acasxu_check.md"
    if not instances:
        print("acasxu_check: no instance matches --filter/--limit", file=sys.stderr)
        return 2
    n = len(instances)
    run = {"selected": n, "total_rows": total_rows, "jobs": min(args.jobs, n),
           "timeout": f"{args.timeout:g}s (override)" if args.timeout is not None
           else "from CSV",
           "filter": args.filter, "limit": args.limit,
           "props": str(OWN_PROPS) if args.props else str(bench / "acasxu"),
           "command": shlex.join(["python", "benchmarks/acasxu_check.py"] + sys.argv[1:]),
           "nnenum": nnenum_times(bench), "partial": "", "wall": 0.0}
    print(f"acasxu_check: {n} instance(s), {run['jobs']} worker(s), benchmarks {bench}",
          file=sys.stderr)
    checker = CexChecker()
    outcomes: list[Outcome] = []
    start = time.perf_counter()

    def on_done(o: Outcome) -> None:
        judge(o, checker)
        outcomes.append(o)
        tag = f"{short_net(o.instance.onnx)} {short_prop(o.instance.vnnlib)}"
        line = f"[{len(outcomes)}/{n}] {tag} {o.verdict} {fmt_s(o.seconds)} {o.status}"
        if o.status == "unsolved" and o.reason:
            line += f"  ({md_cell(o.reason, 160)})"
        print(line, file=sys.stderr, flush=True)
        if o.status == "wrong":
            bar = "!" * 78
            print(f"{bar}\n!!! WRONG ANSWER: {tag}: verdict {o.verdict}, expected "
                  f"{o.instance.expected}\n!!! {o.reason}\n{bar}", file=sys.stderr,
                  flush=True)
        write_csv(csv_path, outcomes)

    def on_term(signum, frame):  # SIGTERM (e.g. `timeout`) ends the run like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        run_pool(instances, args.jobs, on_done)
    except KeyboardInterrupt:
        run["partial"] = "interrupted"
    finally:
        signal.signal(signal.SIGTERM, previous)
    run["wall"] = time.perf_counter() - start
    write_csv(csv_path, outcomes)
    write_md(md_path, outcomes, run)
    wrong = sum(o.status == "wrong" for o in outcomes)
    unsolved = [o for o in outcomes if o.status == "unsolved"]
    correct = sum(o.status == "correct" for o in outcomes)
    print(f"\ncorrect {correct}, wrong {wrong}, unsolved {len(unsolved)} of {len(outcomes)}"
          f" finished; wall {fmt_s(run['wall'])}, sum {fmt_s(sum(o.seconds for o in outcomes))}",
          file=sys.stderr)
    for o in sorted(unsolved, key=lambda o: o.instance.index):
        print(f"  unsolved: {short_net(o.instance.onnx)} {short_prop(o.instance.vnnlib)} "
              f"{o.verdict} {fmt_s(o.seconds)}", file=sys.stderr)
    if wrong:
        print(f"!!! {wrong} WRONG ANSWER(S) !!!", file=sys.stderr)
    print(f"wrote {csv_path}\nwrote {md_path}", file=sys.stderr)
    if wrong:
        return 1  # a wrong answer outranks an interruption
    return 130 if run["partial"] else 0


if __name__ == "__main__":
    sys.exit(main())
