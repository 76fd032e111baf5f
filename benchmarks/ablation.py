"""Ablation of the seed papers' strategies on the 36 unsafe ACAS Xu pairs.

Every (localizer, patcher) combination repairs every selected pair with the same
preserved properties as ``acasxu_repair.py`` (and the same final proof of the saved file
by ``verirepair check`` in a fresh process). Writes ``ablation.csv`` (one row per
combination and pair) and ``ablation.md`` (one row per combination: proven, median time,
agreement, change size).

    python benchmarks/ablation.py [--localizers none,causal,...] [--patchers qp,pso,...]
        [--filter REGEX] [--budget S] [--jobs N] [--out DIR]

``--combos causal:pso,shap:cmaes`` runs exactly those combinations instead of the grid.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from acasxu_repair import run_pair, unsafe_pairs, write_csv  # noqa: E402

LOCALIZERS = ("none", "causal", "gradient", "shap", "activation", "random")
PATCHERS = ("qp", "milp", "pso", "cmaes")


def combinations(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.combos:
        return [tuple(c.split(":", 1)) for c in args.combos.split(",")]  # type: ignore[misc]
    return [(loc, pat) for loc in args.localizers.split(",")
            for pat in args.patchers.split(",")]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def combo_summary(rows: list[dict]) -> dict:
    """One line of the Markdown table: proven pairs and medians over the proven ones."""
    proven = [r for r in rows if r["proven_by_check"]]
    agree = [r["agreement"] for r in proven if r["agreement"] is not None]
    return {
        "proven": len(proven), "pairs": len(rows),
        "median_s": _median([r["seconds"] for r in rows]),
        "median_agreement": _median(agree), "min_agreement": min(agree) if agree else None,
        "median_changed": _median([r["changed_parameters"] for r in proven]),
        "median_l2": _median([r["l2_change"] for r in proven]),
    }


def _fmt(value, pattern: str) -> str:
    return "" if value is None else format(value, pattern)


def markdown(rows: list[dict], combos: list[tuple[str, str]], command: str) -> str:
    lines = ["# Ablation: localizer x patcher on the unsafe ACAS Xu pairs", "",
             f"- command: `{command}`",
             "- proven = every property (target and preserved) proven on the re-loaded "
             "saved file (by repair itself; with re-check also by `verirepair check` in a "
             "fresh process); medians of agreement / change over proven pairs, of time "
             "over all pairs", "",
             "| localize | patch | proven | median s | median agreement | min agreement "
             "| median changed | median L2 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for loc, pat in combos:
        mine = [r for r in rows if r["localize"] == loc and r["patch"] == pat]
        if not mine:
            continue
        s = combo_summary(mine)
        lines.append(f"| {loc} | {pat} | {s['proven']}/{s['pairs']} | "
                     f"{_fmt(s['median_s'], '.1f')} | {_fmt(s['median_agreement'], '.3%')} | "
                     f"{_fmt(s['min_agreement'], '.3%')} | {_fmt(s['median_changed'], '.0f')} | "
                     f"{_fmt(s['median_l2'], '.4f')} |")
    return "\n".join(lines) + "\n"


def _run(job: tuple) -> dict:
    bench, out, a, b, prop, budget, loc, pat, recheck = job
    folder = out / f"{loc}_{pat}"
    folder.mkdir(parents=True, exist_ok=True)
    row = run_pair(bench, folder, a, b, prop, budget, {"localize": loc, "patch": pat},
                   recheck)
    return {"localize": loc, "patch": pat, **row}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default=os.environ.get(
        "VERIREPAIR_BENCHMARKS", str(REPO / "../shared/benchmarks")))
    parser.add_argument("--localizers", default=",".join(LOCALIZERS))
    parser.add_argument("--patchers", default=",".join(PATCHERS))
    parser.add_argument("--combos", default="", help="localizer:patcher,... (no grid)")
    parser.add_argument("--filter", default="", help="regex on 'N2,1 phi2'")
    parser.add_argument("--budget", type=float, default=300.0)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--no-recheck", action="store_true",
                        help="count repair()'s own proof of the re-loaded file (skip the "
                             "second proof by `verirepair check` in a fresh process)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/ablation"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bench = Path(args.benchmarks) / "acasxu"
    if not bench.is_dir():
        raise SystemExit(f"benchmarks folder not found: {bench}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    combos = combinations(args)
    pairs = [(a, b, p) for a, b, p in unsafe_pairs()
             if not args.filter or re.search(args.filter, f"N{a},{b} phi{p}")]
    jobs = [(bench, out, a, b, p, args.budget, loc, pat, not args.no_recheck)
            for loc, pat in combos for a, b, p in pairs]
    rows: list[dict] = []
    command = " ".join(["benchmarks/ablation.py", *sys.argv[1:]])
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        for row in pool.map(_run, jobs):
            rows.append(row)
            print(f"[{len(rows)}/{len(jobs)}] {row['localize']}:{row['patch']} "
                  f"{row['network']} {row['property']}: {row['status']} {row['seconds']} s",
                  file=sys.stderr, flush=True)
            write_csv(out / "ablation.csv", rows)
            (out / "ablation.md").write_text(markdown(rows, combos, command))
    print(markdown(rows, combos, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
