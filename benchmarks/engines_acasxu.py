#!/usr/bin/env python
"""Engines side by side on a sample of the ACAS Xu VNN-COMP instances: bab and Marabou.

    python benchmarks/engines_acasxu.py --jobs 1                    # the default sample
    python benchmarks/engines_acasxu.py --sample 1:2,3:2 --timeout 30 --engines bab,marabou

Every (instance, engine) runs in a fresh process (``--one`` mode of this script:
``load_network`` + ``load_spec`` + ``verify(..., VerifyOptions(timeout, engine))``, torch
single-threaded) that reports its verdict, the engine's own seconds, and the wall and CPU
time from loading the files to the answer (interpreter start-up excluded; CPU is its own
plus its reaped children's, as Marabou runs in forked children). The
parent kills a process that overruns its limit by far (its whole process group, by id),
re-checks every ``violated`` answer in onnxruntime (``acasxu_check.CexChecker``) and
compares every verdict with ``expected_results.csv``.

Writes ``engines_acasxu.csv`` and ``engines_acasxu.md`` to ``--out`` (default
``benchmarks/results/``, git-ignored). Exit code 0 when no engine gave a wrong answer.
Data as in ``acasxu_check.py`` (``--benchmarks``, ``$VERIREPAIR_BENCHMARKS``); the files
are read in place, never copied.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # acasxu_check, and verirepair from this repo
import acasxu_check as base  # noqa: E402  (shared instance reading, re-check, formatting)

REPO_ROOT = HERE.parent
DEFAULT_SAMPLE = "1:3,2:3,3:3,4:3,5:1,6:1,8:1,9:1"  # property:count, 16 instances
DEFAULT_ENGINES = "bab,marabou"
HARD_KILL_GRACE_S = 30.0


# --------------------------------------------------------------------------- one run

def run_one(model: str, prop: str, engine: str, timeout: float) -> dict:
    """Verify one instance with one engine in this process; the fields of a CSV row."""
    import torch

    torch.set_num_threads(1)
    from verirepair.network import load_network
    from verirepair.spec import load_spec
    from verirepair.verify.engine import VerifyOptions, verify

    wall, cpu = time.perf_counter(), _cpu_seconds()
    network = load_network(model)
    spec = load_spec(prop)
    result = verify(network, spec, VerifyOptions(timeout=timeout, engine=engine))
    cex = result.counterexample
    return {
        "verdict": result.verdict.value,
        "reason": result.reason,
        "engine_seconds": result.stats.seconds,
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": _cpu_seconds() - cpu,
        "cex": None if cex is None else {"x": [float(v) for v in cex.x],
                                         "y": [float(v) for v in cex.y]},
    }


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


# --------------------------------------------------------------------------- parent

@dataclass
class Run:
    engine: str
    verdict: str = "error"
    status: str = ""
    engine_seconds: float = 0.0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    reason: str = ""
    cex: dict | None = None


@dataclass
class Row:
    instance: base.Instance
    runs: dict[str, Run] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"{base.short_net(self.instance.onnx)} {base.short_prop(self.instance.vnnlib)}"

    def agreement(self) -> str:
        decided = {r.verdict for r in self.runs.values() if r.verdict in base.SOLVED}
        if len(decided) > 1:
            return "DISAGREE"
        undecided = any(r.verdict not in base.SOLVED for r in self.runs.values())
        return "partial" if undecided else "agree"


def launch(inst: base.Instance, engine: str, timeout: float) -> Run:
    """Run ``--one`` in its own process group; kill the group if it overruns by far."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(inst.onnx_path),
           str(inst.vnnlib_path), engine, repr(timeout)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO_ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout * 1.25 + HARD_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        wall = time.perf_counter() - start
        return Run(engine, "timeout", wall_seconds=wall,
                   reason=f"killed after {wall:.0f}s: overran its {timeout:g}s limit")
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (err.strip().splitlines() or ["no output"])[-1]
        return Run(engine, "error", wall_seconds=time.perf_counter() - start,
                   reason=f"exit code {proc.returncode}: {last}")
    data = json.loads(lines[-1])
    return Run(engine, data["verdict"], "", data["engine_seconds"], data["wall_seconds"],
               data["cpu_seconds"], data["reason"], data["cex"])


def judge(run: Run, inst: base.Instance, checker: base.CexChecker) -> None:
    """``run.status``: correct / wrong / unsolved / unchecked, as in acasxu_check."""
    outcome = base.Outcome(inst, run.verdict, run.wall_seconds, reason=run.reason,
                           cex=run.cex)
    base.judge(outcome, checker)
    run.status, run.reason = outcome.status, outcome.reason


def select(instances: list[base.Instance], sample: str) -> list[base.Instance]:
    """``sample`` = "prop:count,...": per property, ``count`` instances spread evenly
    over that property's rows (CSV order); "all" keeps every instance."""
    if sample == "all":
        return instances
    chosen: list[base.Instance] = []
    for item in sample.split(","):
        prop, count = (int(v) for v in item.split(":"))
        rows = [i for i in instances if base.prop_number(i.vnnlib) == prop]
        if rows and count > 0:
            step = len(rows) / count
            chosen += [rows[int(k * step)] for k in range(min(count, len(rows)))]
    return sorted({i.index: i for i in chosen}.values(), key=lambda i: i.index)


# --------------------------------------------------------------------------- reports

def csv_columns(engines: list[str]) -> list[str]:
    cols = ["onnx", "vnnlib", "expected", "agreement"]
    for e in engines:
        cols += [f"{e}_verdict", f"{e}_status", f"{e}_engine_s", f"{e}_wall_s",
                 f"{e}_cpu_s", f"{e}_reason"]
    return cols


def write_csv(path: Path, rows: list[Row], engines: list[str]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(csv_columns(engines))
        for row in sorted(rows, key=lambda r: r.instance.index):
            cells = [row.instance.onnx, row.instance.vnnlib, row.instance.expected or "",
                     row.agreement()]
            for e in engines:
                r = row.runs.get(e, Run(e, "not run"))
                cells += [r.verdict, r.status, f"{r.engine_seconds:.3f}",
                          f"{r.wall_seconds:.3f}", f"{r.cpu_seconds:.3f}", r.reason]
            w.writerow(cells)
    tmp.replace(path)


def engine_summary(engine: str, rows: list[Row]) -> str:
    runs = [r.runs[engine] for r in rows if engine in r.runs]
    count = {s: sum(r.status == s for r in runs) for s in ("correct", "wrong", "unsolved")}
    solved = [r for r in runs if r.status == "correct"]
    med = (f"{statistics.median(r.wall_seconds for r in solved):.2f}" if solved else "n/a")
    return (f"| {engine} | {len(runs)} | {count['correct']} | {count['wrong']} | "
            f"{count['unsolved']} | {sum(r.wall_seconds for r in runs):.1f} | "
            f"{sum(r.cpu_seconds for r in runs):.1f} | {med} |")


def write_md(path: Path, rows: list[Row], engines: list[str], run: dict) -> None:
    rows = sorted(rows, key=lambda r: r.instance.index)
    disagree = [r for r in rows if r.agreement() == "DISAGREE"]
    wrong = [(r, e) for r in rows for e, x in r.runs.items() if x.status == "wrong"]
    lines = ["# ACAS Xu: engines side by side", ""]
    if run["partial"]:
        lines += [f"**PARTIAL RUN: {len(rows)} of {run['selected']} instances.**", ""]
    if wrong or disagree:
        lines += [f"**{len(wrong)} WRONG ANSWER(S), {len(disagree)} DISAGREEMENT(S).**", ""]
    lines += [f"- instances: {len(rows)} (sample `{run['sample']}`), limit "
              f"{run['timeout']:g} s per engine and instance, {run['jobs']} job(s)",
              f"- wall time of the whole run: {run['wall']:.1f} s",
              f"- command: `{run['command']}`", "",
              "Times: wall and CPU from loading the files to the answer (interpreter "
              "start-up excluded; CPU includes Marabou's forked children); 'engine s' is "
              "the engine's own clock.", "",
              "| engine | run | correct | wrong | unsolved | sum wall s | sum CPU s | "
              "median wall s (solved) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [engine_summary(e, rows) for e in engines]
    head = "| instance | expected | " + " | ".join(
        f"{e} | {e} engine s | {e} wall s | {e} CPU s" for e in engines) + " | agreement |"
    lines += ["", "## Per instance", "", head,
              "|" + "---|" * (2 + 4 * len(engines) + 1)]
    for r in rows:
        cells = [r.tag, r.instance.expected or ""]
        for e in engines:
            x = r.runs.get(e, Run(e, "not run"))
            mark = "" if x.status in ("correct", "") else f" ({x.status})"
            cells += [x.verdict + mark, f"{x.engine_seconds:.2f}", f"{x.wall_seconds:.2f}",
                      f"{x.cpu_seconds:.2f}"]
        cells.append(r.agreement())
        lines.append("| " + " | ".join(cells) + " |")
    notes = [(r, e, x) for r in rows for e, x in r.runs.items()
             if x.status in ("wrong", "unsolved") and x.reason]
    if notes:
        lines += ["", "## Reasons (wrong / unsolved)", ""]
        lines += [f"- {r.tag} {e}: {x.verdict}: {base.md_cell(x.reason, 200)}"
                  for r, e, x in notes]
    lines += ["", "## Machine", ""] + base.machine_lines() + [
        f"- maraboupy {base._version('maraboupy')}", ""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="bab and Marabou on a sample of ACAS Xu.")
    p.add_argument("--benchmarks", metavar="DIR", default=None,
                   help="folder holding acasxu/ (default $VERIREPAIR_BENCHMARKS or "
                        "../shared/benchmarks, relative to the repo root)")
    p.add_argument("--sample", default=DEFAULT_SAMPLE,
                   help=f"property:count,... or 'all' (default {DEFAULT_SAMPLE})")
    p.add_argument("--engines", default=DEFAULT_ENGINES,
                   help=f"comma-separated engines (default {DEFAULT_ENGINES})")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds per engine and instance (default 120)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="engine runs at the same time (default 1)")
    p.add_argument("--filter", default=None, metavar="REGEX",
                   help='only instances whose "onnx,vnnlib" matches, before --sample')
    p.add_argument("--out", default=str(base.DEFAULT_OUT), metavar="DIR",
                   help="output folder (default benchmarks/results/)")
    args = p.parse_args(argv)
    args.limit, args.props = None, False  # what base.load_instances also reads
    if args.jobs < 1 or not args.timeout > 0:
        p.error("--jobs must be >= 1 and --timeout > 0")
    if args.sample != "all" and not re.fullmatch(r"\d+:\d+(,\d+:\d+)*", args.sample):
        p.error("--sample: expected property:count,... (e.g. 1:3,2:3) or 'all'")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one"]:
        model, prop, engine, timeout = argv[1:5]
        print(json.dumps(run_one(model, prop, engine, float(timeout))))
        return 0
    args = parse_args(argv)
    bench = base.benchmarks_dir(args.benchmarks)
    instances, _ = base.load_instances(args, bench)
    instances = select(instances, args.sample)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not instances:
        print("engines_acasxu: no instance selected", file=sys.stderr)
        return 2
    out_dir = Path(args.out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "engines_acasxu.csv", out_dir / "engines_acasxu.md"
    rows = {inst.index: Row(inst) for inst in instances}
    tasks = [(inst, e) for inst in instances for e in engines]
    run = {"selected": len(instances), "sample": args.sample, "timeout": args.timeout,
           "jobs": args.jobs, "partial": False, "wall": 0.0,
           "command": shlex.join(["python", "benchmarks/engines_acasxu.py"] + argv)}
    checker = base.CexChecker()
    print(f"engines_acasxu: {len(instances)} instance(s) x {engines}, {args.jobs} job(s)",
          file=sys.stderr)
    start = time.perf_counter()

    def one(task: tuple[base.Instance, str]) -> None:
        inst, engine = task
        result = launch(inst, engine, args.timeout)
        judge(result, inst, checker)
        rows[inst.index].runs[engine] = result
        print(f"{rows[inst.index].tag} {engine}: {result.verdict} ({result.status}) "
              f"engine {result.engine_seconds:.2f}s wall {result.wall_seconds:.2f}s "
              f"cpu {result.cpu_seconds:.2f}s", file=sys.stderr, flush=True)
        write_csv(csv_path, list(rows.values()), engines)

    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(one, tasks))
    except KeyboardInterrupt:
        run["partial"] = True
    run["wall"] = time.perf_counter() - start
    done = [r for r in rows.values() if r.runs]
    write_csv(csv_path, done, engines)
    write_md(md_path, done, engines, run)
    wrong = sum(x.status == "wrong" for r in done for x in r.runs.values())
    disagree = sum(r.agreement() == "DISAGREE" for r in done)
    print(f"wrong {wrong}, disagreements {disagree}; wall {run['wall']:.1f}s\n"
          f"wrote {csv_path}\nwrote {md_path}", file=sys.stderr)
    return 0 if wrong == 0 and disagree == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
