"""Ablation of the seed papers' strategies on the 36 unsafe ACAS Xu pairs.

Every (localizer, patcher) combination repairs every selected pair with the same
preserved properties as ``acasxu_repair.py`` (and the same final proof of the saved file
by ``verirepair check`` in a fresh process). Writes ``ablation.csv`` (one row per
combination and pair) and ``ablation.md`` (one row per combination: proven, median time,
agreement, change size).

    python benchmarks/ablation.py [--localizers none,causal,...] [--patchers qp,pso,...]
        [--filter REGEX] [--budget S] [--jobs N] [--out DIR]

``--combos causal:pso,shap:cmaes`` runs exactly those combinations instead of the grid.
Jobs run pair by pair (every combination on one pair before the next pair), so a partial
run compares all combinations on the same pairs. ``--resume`` keeps the rows already in
``OUT/ablation.csv`` and runs only the missing (combination, pair) jobs: a long grid can be
run in several stretches (on the same commit; the report names it); ``--rerun FILE``
drops the rows listed in FILE first (jobs that ran while something else loaded the
machine; a malformed line is refused); rows that ended in an error run again too. Without
``--resume`` an existing CSV is refused, never overwritten. Each new row records its
budget and commit (the report warns when they are mixed). ``--report-only`` rewrites
``ablation.md`` from the CSV without running anything. The tables use only the pairs every
combination has run, and compare each combination with ``none:qp`` pair by pair.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from acasxu_repair import run_pair, unsafe_pairs, write_csv  # noqa: E402

LOCALIZERS = ("none", "causal", "gradient", "shap", "activation", "random")
PATCHERS = ("qp", "milp", "pso", "cmaes")


def combinations(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.combos:
        combos = [tuple(c.split(":", 1)) for c in args.combos.split(",")]
    else:
        combos = [(loc, pat) for loc in args.localizers.split(",")
                  for pat in args.patchers.split(",")]
    return list(dict.fromkeys(combos))  # type: ignore[arg-type]  # a repeat runs once


def job_order(combos: list[tuple[str, str]], pairs: list[tuple[int, int, int]],
              done: set[tuple[str, str, str, str]]) -> list[tuple[str, str, int, int, int]]:
    """Pair-major (localize, patch, a, b, property) jobs, leaving out those in ``done``
    (keys ``(localize, patch, "Na,b", "phiP")``)."""
    return [(loc, pat, a, b, p) for a, b, p in pairs for loc, pat in combos
            if (loc, pat, f"N{a},{b}", f"phi{p}") not in done]


def row_key(row: dict) -> tuple[str, str, str, str]:
    return row["localize"], row["patch"], row["network"], row["property"]


def is_error(row: dict) -> bool:
    """A job that raised (its row is counted, and run again by ``--resume``)."""
    return str(row.get("status", "")).startswith("error")


def drop_rows(rows: list[dict], path: Path) -> list[dict]:
    """``rows`` without those whose key (localize, patch, network, property; one per line,
    tab-separated) is listed in ``path``: rows measured while something else loaded the
    machine, to be run again by ``--resume``."""
    keys = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key = tuple(line.split("\t"))
        if len(key) != 4 or not re.fullmatch(r"N\d+,\d+", key[2]) \
                or not re.fullmatch(r"phi\d+", key[3]):
            raise SystemExit(f"{path}:{number}: expected 'localize<TAB>patch<TAB>Na,b<TAB>"
                             f"phiP', got {line!r}")
        keys.add(key)
    unmatched = keys - {row_key(r) for r in rows}
    if unmatched:  # e.g. a job killed before its row was written: it runs anyway
        logging.getLogger(__name__).warning("%s: %d listed rows are not in the CSV: %s",
                                            path, len(unmatched), sorted(unmatched)[:5])
    return [r for r in rows if row_key(r) not in keys]


def _optional(parse):
    return lambda text: None if text in ("", "None") else parse(text)


COLUMN_TYPES = {"proven_by_check": lambda t: t == "True", "seconds": float,
                "changed_parameters": _optional(int), "l2_change": _optional(float),
                "linf_change": _optional(float), "agreement": _optional(float),
                "max_output_change": _optional(float), "recheck_s": _optional(float),
                "output_scale": _optional(float), "budget": _optional(float)}


def read_rows(path: Path) -> list[dict]:
    """Rows of an earlier ablation CSV, typed as ``_run`` returns them."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = [{k: COLUMN_TYPES.get(k, str)(v) for k, v in row.items()}
                for row in csv.DictReader(handle)]
    check_unique(rows, str(path))
    return rows


def check_unique(rows: list[dict], where: str) -> None:
    """One row per (localize, patch, network, property): a repeat would be counted twice
    by the summary and once by the paired table."""
    seen: set = set()
    for r in rows:
        if row_key(r) in seen:
            raise SystemExit(f"{where}: two rows for {' '.join(row_key(r))}")
        seen.add(row_key(r))


def _commit() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def output_scales(bench: Path, networks: set[str]) -> dict[str, float]:
    """Each network's output scale as repair() reports it (``output_scale``: max |y| of
    the original on its fidelity samples of the benchmark's domain), for rows measured
    before the report had it. A network whose file is missing is left out."""
    import numpy as np

    from acasxu_repair import DOMAIN_LOWER, DOMAIN_UPPER
    from verirepair.network import load_network
    from verirepair.repair.loop import RepairOptions, _fidelity_samples

    x = _fidelity_samples((np.asarray(DOMAIN_LOWER), np.asarray(DOMAIN_UPPER)),
                          RepairOptions())
    scales = {}
    for name in sorted(networks):
        a, b = name[1:].split(",")
        path = bench / f"ACASXU_run2a_{a}_{b}_batch_2000.onnx"
        if path.is_file():
            scales[name] = float(np.abs(load_network(path).net.forward(x)).max())
    return scales


def output_ratios(rows: list[dict], scales: dict[str, float]) -> list[float]:
    """Largest output change over the network's output scale, per proven row (the row's
    own ``output_scale`` when it has one)."""
    out = []
    for r in rows:
        scale = r.get("output_scale") or scales.get(r["network"])
        if r["proven_by_check"] and r.get("max_output_change") is not None and scale:
            out.append(r["max_output_change"] / scale)
    return out


def combo_summary(rows: list[dict], scales: dict[str, float] | None = None) -> dict:
    """One line of the Markdown table: proven pairs and medians over the proven ones
    (with ``scales``, also the median and largest output change / output scale)."""
    proven = [r for r in rows if r["proven_by_check"]]
    agree = [r["agreement"] for r in proven if r["agreement"] is not None]
    local = [r for r in proven if (r.get("free_set") or "").startswith("top")]
    ratios = output_ratios(rows, scales or {})
    return {
        "median_out_ratio": _median(ratios), "max_out_ratio": max(ratios, default=None),
        "proven": len(proven), "pairs": len(rows), "localized": len(local),
        "median_k": _median([int(r["free_set"].split()[1]) for r in local]),
        "errors": sum(is_error(r) for r in rows),
        "median_s": _median([r["seconds"] for r in rows]),
        "median_agreement": _median(agree), "min_agreement": min(agree) if agree else None,
        "median_changed": _median([r["changed_parameters"] for r in proven]),
        "median_l2": _median([r["l2_change"] for r in proven]),
    }


def _fmt(value, pattern: str) -> str:
    return "" if value is None else format(value, pattern)


def pair_of(row: dict) -> tuple[str, str]:
    return row["network"], row["property"]


def complete_pairs(rows: list[dict], combos: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The pairs on which every combination has a row (a partial grid is compared on
    these only)."""
    have: dict[tuple[str, str], set] = {}
    for r in rows:
        have.setdefault(pair_of(r), set()).add((r["localize"], r["patch"]))
    return {pair for pair, done in have.items() if done >= set(combos)}


def paired(rows: list[dict], baseline: tuple[str, str], combo: tuple[str, str]) -> dict:
    """``combo`` against ``baseline`` on the same pairs: proven by one and not the other,
    and on the pairs both prove the median agreement difference (points), how often the
    combination's agreement is higher / lower, and the median time ratio."""
    def by_pair(c):
        return {pair_of(r): r for r in rows if (r["localize"], r["patch"]) == c}
    base, mine = by_pair(baseline), by_pair(combo)
    common = sorted(set(base) & set(mine))
    both = [p for p in common if base[p]["proven_by_check"] and mine[p]["proven_by_check"]
            and base[p]["agreement"] is not None and mine[p]["agreement"] is not None]
    diff = [100 * (mine[p]["agreement"] - base[p]["agreement"]) for p in both]
    ratio = [mine[p]["seconds"] / base[p]["seconds"] for p in common if base[p]["seconds"] > 0]
    return {"pairs": len(common), "both": len(both),
            "only_mine": sum(mine[p]["proven_by_check"] and not base[p]["proven_by_check"]
                             for p in common),
            "only_base": sum(base[p]["proven_by_check"] and not mine[p]["proven_by_check"]
                             for p in common),
            "median_diff": _median(diff), "higher": sum(d > 1e-9 for d in diff),
            "lower": sum(d < -1e-9 for d in diff), "median_ratio": _median(ratio)}


def _paired_table(rows: list[dict], combos: list[tuple[str, str]],
                  baseline: tuple[str, str]) -> list[str]:
    lines = ["", f"## Paired with {baseline[0]}:{baseline[1]} on the same pairs", "",
             "Agreement columns over the pairs both prove; time ratio over all common "
             "pairs (< 1: faster than the baseline).", "",
             "| localize | patch | pairs | proven only here | proven only by baseline "
             "| median agreement diff (points) | higher / lower | median time ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for combo in combos:
        if combo == baseline:
            continue
        s = paired(rows, baseline, combo)
        if not s["pairs"]:
            continue
        lines.append(f"| {combo[0]} | {combo[1]} | {s['pairs']} | {s['only_mine']} | "
                     f"{s['only_base']} | {_fmt(s['median_diff'], '+.3f')} | "
                     f"{s['higher']} / {s['lower']} | {_fmt(s['median_ratio'], '.2f')} |")
    return lines


def markdown(rows: list[dict], combos: list[tuple[str, str]], command: str,
             commit: str = "", baseline: tuple[str, str] = ("none", "qp"),
             scales: dict[str, float] | None = None) -> str:
    check_unique(rows, "the rows")
    pairs = sorted({pair_of(r) for r in rows})
    ran = {(r["localize"], r["patch"]) for r in rows}
    complete = complete_pairs(rows, [c for c in combos if c in ran])  # rowless: left out
    if len(complete) < len(pairs):  # a partial grid: compare like with like (none: empty)
        rows = [r for r in rows if pair_of(r) in complete]
    lines = ["# Ablation: localizer x patcher on the unsafe ACAS Xu pairs", "",
             f"- command: `{command}`" + (f" at commit {commit}" if commit else ""),
             *filter(None, [settings_note(rows)]),
             f"- pairs with at least one row: {len(pairs)}; with every combination "
             f"(the tables use only these): {len(complete)}",
             "- proven = every property (target and preserved) proven on the re-loaded "
             "saved file (by repair itself; with re-check also by `verirepair check` in a "
             "fresh process); medians of agreement / change over proven pairs, of time "
             "over all pairs", "",
             "- localized (median k) = proven with the outgoing weights of only the "
             "localizer's top k last-hidden neurons (k starts at 10 % of them and doubles "
             "until a set is proven; otherwise every last-layer parameter is free); milp "
             "rows also change the incoming weights of up to 8 last-hidden neurons", "",
             "- medians over each combination's own proven pairs (a combination that proves "
             "few rests on few); the paired table below compares on the same pairs", "",
             "| localize | patch | proven | localized (median k) | median s | median agreement "
             "| min agreement | median changed | median L2 |"
             + (" output change / scale: median, max |" if scales else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if scales else "")]
    if scales:
        at = next(i for i, line in enumerate(lines) if line.startswith("| localize"))
        lines[at:at] = ["- output change / scale = the largest output change on the "
                      "fidelity samples over the original network's max |y| there (the "
                      "decision agreement does not show outputs moved far while the "
                      "argmin stays)", ""]
    for loc, pat in combos:
        mine = [r for r in rows if r["localize"] == loc and r["patch"] == pat]
        if not mine:
            continue
        s = combo_summary(mine, scales)
        errors = f" ({s['errors']} errors)" if s["errors"] else ""
        local = f"{s['localized']}" + (f" ({s['median_k']:.0f})" if s["localized"] else "")
        lines.append(f"| {loc} | {pat} | {s['proven']}/{s['pairs']}{errors} | {local} | "
                     f"{_fmt(s['median_s'], '.1f')} | {_fmt(s['median_agreement'], '.3%')} | "
                     f"{_fmt(s['min_agreement'], '.3%')} | {_fmt(s['median_changed'], '.0f')} | "
                     f"{_fmt(s['median_l2'], '.4f')} |"
                     + (f" {_fmt(s['median_out_ratio'], '.3g')}, "
                        f"{_fmt(s['max_out_ratio'], '.3g')} |" if scales else ""))
    if baseline in combos:
        lines += _paired_table(rows, combos, baseline)
    return "\n".join(lines) + "\n"


def _run(job: tuple) -> dict:
    bench, out, a, b, prop, budget, loc, pat, recheck, commit = job
    folder = out / f"{loc}_{pat}"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        row = run_pair(bench, folder, a, b, prop, budget, {"localize": loc, "patch": pat},
                       recheck)
    except Exception as exc:  # one failed job is a row, not the end of a long grid run
        logging.getLogger(__name__).exception("%s:%s N%d,%d phi%d", loc, pat, a, b, prop)
        row = {"network": f"N{a},{b}", "property": f"phi{prop}", "preserved": "",
               "status": f"error: {type(exc).__name__}", "proven_by_check": False,
               "proven_by": "", "seconds": round(time.perf_counter() - start, 2),
               "changed_parameters": None,
               "l2_change": None, "linf_change": None, "agreement": None,
               "max_output_change": None, "recheck": ""}
    return {"localize": loc, "patch": pat, **row, "budget": budget, "commit": commit}


def settings_note(rows: list[dict]) -> str:
    """A line naming mixed budgets or commits among rows that record them (rows of older
    runs record neither)."""
    parts = []
    for column in ("budget", "commit"):
        values = sorted({str(r[column]) for r in rows if r.get(column) not in (None, "")})
        if len(values) > 1:
            parts.append(f"{column}s {', '.join(values)}")
    return f"- WARNING: the rows mix {' and '.join(parts)}" if parts else ""


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
    parser.add_argument("--resume", action="store_true",
                        help="keep OUT/ablation.csv's rows and run only the missing jobs")
    parser.add_argument("--rerun", metavar="FILE",
                        help="with --resume: drop the rows listed in FILE (localize, patch, "
                             "network, property; tab-separated, one per line) so they run "
                             "again")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite OUT/ablation.md from OUT/ablation.csv")
    parser.add_argument("--commit", default="",
                        help="with --report-only: the commit the rows were measured at")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/ablation"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    combos = combinations(args)
    bench = Path(args.benchmarks) / "acasxu"
    if args.report_only:
        rows = read_rows(out / "ablation.csv")
        scales = (output_scales(bench, {r["network"] for r in rows}) if bench.is_dir()
                  else None)  # without the networks the ratio column is left out
        text = markdown(rows, combos, " ".join(["benchmarks/ablation.py", *sys.argv[1:]]),
                        args.commit, scales=scales)
        (out / "ablation.md").write_text(text)
        print(text)
        return 0
    if args.rerun and not args.resume:
        raise SystemExit("--rerun needs --resume (it drops rows of the CSV being resumed)")
    if (out / "ablation.csv").exists() and not args.resume:
        raise SystemExit(f"{out / 'ablation.csv'} exists: add --resume to keep its rows, or "
                         "choose another --out (a fresh run would overwrite it)")
    if not bench.is_dir():
        raise SystemExit(f"benchmarks folder not found: {bench}")
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(a, b, p) for a, b, p in unsafe_pairs()
             if not args.filter or re.search(args.filter, f"N{a},{b} phi{p}")]
    rows: list[dict] = read_rows(out / "ablation.csv") if args.resume else []
    if args.rerun:
        rows = drop_rows(rows, Path(args.rerun))
    rows = [r for r in rows if not is_error(r)]  # an error row runs again
    todo = job_order(combos, pairs, {row_key(r) for r in rows})
    command = " ".join(["benchmarks/ablation.py", *sys.argv[1:]])
    commit = _commit()
    jobs = [(bench, out, a, b, p, args.budget, loc, pat, not args.no_recheck, commit)
            for loc, pat, a, b, p in todo]
    scales = output_scales(bench, {f"N{a},{b}" for a, b, _ in pairs}
                           | {r["network"] for r in rows})
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = [pool.submit(_run, job) for job in jobs]
        for count, future in enumerate(as_completed(futures), 1):
            row = future.result()
            rows.append(row)
            print(f"[{count}/{len(jobs)}] {row['localize']}:{row['patch']} "
                  f"{row['network']} {row['property']}: {row['status']} {row['seconds']} s",
                  file=sys.stderr, flush=True)
            write_csv(out / "ablation.csv", rows)
            (out / "ablation.md").write_text(markdown(rows, combos, command, commit,
                                                      scales=scales))
    print(markdown(rows, combos, command, commit, scales=scales))
    return 0


if __name__ == "__main__":
    sys.exit(main())
