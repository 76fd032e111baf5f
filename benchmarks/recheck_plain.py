"""Re-check the files of a repair benchmark run by plain ``verirepair check`` (branch and
bound from scratch, no certificate), property by property, in fresh processes.

    python benchmarks/recheck_plain.py RUN_DIR [--timeout S] [--jobs N]

Reads ``RUN_DIR/acasxu_repair.csv`` (written by ``acasxu_repair.py``) and the repaired
files next to it; writes ``RUN_DIR/recheck_plain.csv`` and prints a short summary.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from acasxu_repair import check_cli, write_csv  # noqa: E402


def jobs_of(run_dir: Path, bench: Path) -> list[tuple[str, Path, Path]]:
    """(pair label, repaired file, property file) for every property of every proven pair."""
    with open(run_dir / "acasxu_repair.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["status"] == "proven"]
    out = []
    for r in rows:
        a, b = r["network"][1:].split(",")
        model = run_dir / f"N{a}_{b}_prop_{r['property'][3:]}.onnx"
        for prop in [r["property"], *r["preserved"].split()]:
            out.append((f"{r['network']} {r['property']}", model,
                        bench / f"prop_{prop[3:]}.vnnlib"))
    return out


def _one(job: tuple[str, Path, Path, float]) -> dict:
    label, model, prop, timeout = job
    verdict, seconds = check_cli(model, prop, timeout)
    return {"pair": label, "property": prop.stem, "verdict": verdict,
            "seconds": round(seconds, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--benchmarks", default=os.environ.get(
        "VERIREPAIR_BENCHMARKS", str(REPO / "../shared/benchmarks")))
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    jobs = [(*j, args.timeout) for j in jobs_of(run_dir, Path(args.benchmarks) / "acasxu")]
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        rows = list(pool.map(_one, jobs))
    write_csv(run_dir / "recheck_plain.csv", rows)
    pairs = sorted({r["pair"] for r in rows})
    held = [p for p in pairs if all(r["verdict"] == "holds" for r in rows if r["pair"] == p)]
    print(f"plain re-check, {args.timeout:.0f} s per property: {len(held)}/{len(pairs)} pairs "
          f"with every property holds; not decided: "
          + ", ".join(f"{r['pair']}: {r['property']} {r['verdict']} ({r['seconds']} s)"
                      for r in rows if r["verdict"] != "holds")
          + f"; median {statistics.median(r['seconds'] for r in rows):.2f} s per property")
    return 0


if __name__ == "__main__":
    sys.exit(main())
