"""Repair benchmark: the 36 unsafe ACAS Xu (network, property) pairs.

For each pair the target property is repaired while every other property that applies to
that network is preserved (φ1, φ3, φ4 on all but N1,7–N1,9; φ5–φ10 on their networks).
The repaired file is then re-checked by the ``verirepair check`` command in a fresh
process, property by property, starting from the certificate repair wrote
(``--certificate``: its boxes are re-checked for coverage and their bounds recomputed on
the saved file; ``--plain-recheck``: plain branch and bound, no certificate). Writes
``acasxu_repair.csv`` and ``acasxu_repair.md``.

    python benchmarks/acasxu_repair.py [--filter REGEX] [--budget S] [--out DIR] \
        [--jobs N] [--set OPTION=VALUE ...]

``--set`` overrides a field of ``RepairOptions`` (e.g. ``--set localize=causal``); each
worker process uses cores / jobs torch threads.
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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from verirepair.repair.loop import RepairOptions, repair  # noqa: E402

# The normalised ACAS Xu input domain (the networks' training range).
DOMAIN_LOWER = (-0.328422877, -0.499999896, -0.499999896, -0.5, -0.5)
DOMAIN_UPPER = (0.679857769, 0.499999896, 0.499999896, 0.5, 0.5)
SINGLE_NETWORK_PROPS = {5: (1, 1), 6: (1, 1), 7: (1, 9), 8: (2, 9), 9: (3, 3), 10: (4, 5)}


def unsafe_pairs() -> list[tuple[int, int, int]]:
    """(a, b, property) of the classic 36 unsafe pairs."""
    pairs = [(a, b, 2) for a in range(2, 6) for b in range(1, 10)
             if (a, b) not in ((3, 3), (4, 2))]
    return pairs + [(1, 9, 7), (2, 9, 8)]


def applicable(a: int, b: int) -> list[int]:
    """Properties defined for network N(a,b) in the original ACAS Xu study."""
    props = [1, 2, 3, 4] if not (a == 1 and b in (7, 8, 9)) else [1]
    if a == 1:  # φ2 was defined for a >= 2 only
        props = [p for p in props if p != 2]
    props += [p for p, net in SINGLE_NETWORK_PROPS.items() if net == (a, b)]
    return props


def check_cli(model: Path, prop: Path, timeout: float, certificate: Path | None = None
              ) -> tuple[str, float]:
    start = time.perf_counter()
    extra = ["--certificate", str(certificate)] if certificate else []
    proc = subprocess.run([sys.executable, "-m", "verirepair.cli", "check", str(model),
                           str(prop), "--quiet", "--timeout", str(timeout), *extra],
                          capture_output=True, text=True)
    verdict = proc.stdout.split("\n", 1)[0].strip() if proc.stdout else "error"
    return verdict, time.perf_counter() - start


def _parse_bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def parse_overrides(items: list[str]) -> dict:
    """``OPTION=VALUE`` strings to RepairOptions fields, typed like their defaults
    (a field whose default is None takes a string)."""
    defaults = RepairOptions()
    parsers = {f.name: type(getattr(defaults, f.name)) for f in fields(RepairOptions)}
    parsers = {k: {bool: _parse_bool, type(None): str}.get(v, v) for k, v in parsers.items()}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in parsers:
            raise SystemExit(f"--set {item}: no such repair option")
        out[key] = parsers[key](value)
    return out


def run_pair(bench: Path, out: Path, a: int, b: int, prop: int, budget: float,
             overrides: dict | None = None, recheck: bool = True,
             use_certificate: bool = True, threads: int = 1) -> dict:
    """Repair one pair; with ``recheck`` the saved file is proven again by the CLI in a
    fresh process (otherwise the proof is the one repair() ran on the re-loaded file),
    from repair's certificate when ``use_certificate``."""
    import torch

    torch.set_num_threads(threads)
    model = bench / f"ACASXU_run2a_{a}_{b}_batch_2000.onnx"
    target = bench / f"prop_{prop}.vnnlib"
    preserve = [bench / f"prop_{p}.vnnlib" for p in applicable(a, b) if p != prop]
    repaired = out / f"N{a}_{b}_prop_{prop}.onnx"
    cert = out / f"N{a}_{b}_prop_{prop}.cert.npz"
    options = replace(RepairOptions(), domain_lower=DOMAIN_LOWER, domain_upper=DOMAIN_UPPER,
                      **(overrides or {}))
    start = time.perf_counter()
    report = repair(model, [target], preserve, repaired, budget, options, cert)
    seconds = time.perf_counter() - start
    rechecks = []
    if report.status == "proven" and recheck:
        rechecks = [check_cli(repaired, p, 300.0, cert if use_certificate else None)
                    for p in [target, *preserve]]
    proven = report.status == "proven" and all(v == "holds" for v, _ in rechecks)
    proven_by = "check" if recheck else "repair"
    return {
        "network": f"N{a},{b}", "property": f"phi{prop}",
        "preserved": " ".join(f"phi{p}" for p in applicable(a, b) if p != prop),
        "status": report.status, "proven_by_check": proven, "proven_by": proven_by, "seconds": round(seconds, 2),
        "changed_parameters": report.changed_parameters,
        "l2_change": round(report.l2_change, 6), "linf_change": round(report.linf_change, 6),
        "agreement": report.agreement, "max_output_change": report.max_output_change,
        "output_scale": report.output_scale,
        "recheck": " ".join(v for v, _ in rechecks),
        "recheck_s": round(sum(t for _, t in rechecks), 2),
        "engines": " ".join(p.engine for p in report.properties),
        "free_set": report.free_set,
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` atomically (a killed run leaves the previous file)."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def summary(rows: list[dict], command: str, recheck: str = "from repair's certificate") -> str:
    proven = [r for r in rows if r["proven_by_check"]]
    agree = [r["agreement"] for r in proven if r["agreement"] is not None]
    times = [r["seconds"] for r in rows]
    lines = ["# ACAS Xu repair", "", f"- command: `{command}`",
             f"- pairs: {len(rows)}, proven (re-checked by `verirepair check` in a fresh "
             f"process, {recheck}): {len(proven)}",
             f"- median time: {statistics.median(times):.1f} s" if times else "",
             f"- agreement: median {statistics.median(agree):.4%}, min {min(agree):.4%}"
             if agree else "- agreement: n/a", "",
             "| pair | preserved | proven | s | re-check s | changed | L2 | agreement | max Δy "
             "| status |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        agree_txt = "" if r["agreement"] is None else f"{r['agreement']:.4%}"
        dy = "" if r["max_output_change"] is None else f"{r['max_output_change']:.4g}"
        lines.append(f"| {r['network']} {r['property']} | {r['preserved']} | "
                     f"{'yes' if r['proven_by_check'] else 'no'} | {r['seconds']} | "
                     f"{r.get('recheck_s', '')} | "
                     f"{r['changed_parameters']} | {r['l2_change']} | {agree_txt} | {dy} | "
                     f"{r['status']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default=os.environ.get(
        "VERIREPAIR_BENCHMARKS", str(REPO / "../shared/benchmarks")))
    parser.add_argument("--filter", default="", help="regex on 'N2,1 phi2'")
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/repair"))
    parser.add_argument("--jobs", type=int, default=1, help="pairs repaired in parallel")
    parser.add_argument("--plain-recheck", action="store_true",
                        help="re-check by plain branch and bound (no certificate)")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="override a RepairOptions field")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    logging.basicConfig(level=logging.WARNING)
    bench = Path(args.benchmarks) / "acasxu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(a, b, p) for a, b, p in unsafe_pairs()
             if not args.filter or re.search(args.filter, f"N{a},{b} phi{p}")]
    rows = []
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        threads = max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
        futures = [pool.submit(run_pair, bench, out, a, b, p, args.budget, overrides, True,
                               not args.plain_recheck, threads) for a, b, p in pairs]
        for future in futures:
            row = future.result()
            rows.append(row)
            print(f"[{len(rows)}/{len(pairs)}] {row['network']} {row['property']}: "
                  f"{row['status']} {row['seconds']} s agreement {row['agreement']}",
                  file=sys.stderr, flush=True)
            write_csv(out / "acasxu_repair.csv", rows)
    mode = "plain branch and bound" if args.plain_recheck else "from repair's certificate"
    text = summary(rows, " ".join(sys.argv), mode)
    (out / "acasxu_repair.md").write_text(text)
    print(text)
    return 0 if rows and all(r["proven_by_check"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
