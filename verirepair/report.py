"""Reporting at the edge: VNN-COMP result files, JSON and human-readable summaries."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from verirepair.verify.types import SPLIT_NAMES, Result, Stats, Verdict

VNNCOMP_WORD = {
    Verdict.HOLDS: "unsat",
    Verdict.VIOLATED: "sat",
    Verdict.UNKNOWN: "unknown",
    Verdict.TIMEOUT: "timeout",
}


def plain_float(value: float) -> str:
    """A float printed positionally (no exponent) that parses back to exactly ``value``.

    Values are float32 inputs/outputs; printing the float64 shortest round-trip form keeps
    a counterexample that lies inside its box inside it after parsing.
    """
    return np.format_float_positional(float(value), unique=True, trim="0")


def vnncomp_text(result: Result) -> str:
    """The VNN-COMP result file: the verdict word, and after ``sat`` the assignment."""
    word = VNNCOMP_WORD[result.verdict]
    cex = result.counterexample
    if result.verdict is not Verdict.VIOLATED or cex is None:
        return word + "\n"
    pairs = [f"(X_{i} {plain_float(v)})" for i, v in enumerate(cex.x)]
    pairs += [f"(Y_{j} {plain_float(v)})" for j, v in enumerate(cex.y)]
    return word + "\n(" + "\n ".join(pairs) + ")\n"


_PAIR = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


def parse_assignment(text: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The X and Y values of a ``sat`` result file (as :func:`vnncomp_text` writes them),
    or None when it is not one: every X_i and Y_j once, indices 0..n-1, finite numbers."""
    lines = text.split("\n", 1)
    if lines[0].strip() != "sat" or len(lines) < 2:
        return None
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for kind, index, value in _PAIR.findall(lines[1]):
        try:
            number = float(value)
        except ValueError:
            return None
        if int(index) in values[kind] or not np.isfinite(number):
            return None
        values[kind][int(index)] = number
    x, y = values["X"], values["Y"]
    if not x or not y or sorted(x) != list(range(len(x))) or sorted(y) != list(range(len(y))):
        return None
    return (np.array([x[i] for i in range(len(x))]), np.array([y[j] for j in range(len(y))]))


def result_dict(result: Result, model: str, prop: str, sound: bool = True) -> dict:
    """The JSON result; ``sound`` False marks a 'holds' that is not a proof (an engine
    that is not sound, not confirmed by a sound cross-check)."""
    return {
        "model": model,
        "property": prop,
        "verdict": result.verdict.value,
        "sound": sound,
        "engine": result.engine,
        "reason": result.reason,
        "seconds": round(result.stats.seconds, 4),
        "boxes": result.stats.boxes,
        "split": result.stats.split or None,
        "counterexample": _cex_dict(result),
    }


def human_text(result: Result, sound: bool = True) -> str:
    lines = [result.verdict.value]
    cex = result.counterexample
    if cex is not None:
        lines.append("  input:  " + " ".join(plain_float(v) for v in cex.x))
        lines.append("  output: " + " ".join(plain_float(v) for v in cex.y))
        lines.append("  (re-checked in onnxruntime on the original model)")
    if result.reason:
        lines.append(f"  reason: {result.reason}")
    if result.engine.startswith("certificate"):
        lines.append(f"  {'proof' if sound else 'by'}: {result.engine}")
    if not sound:
        lines.append(f"  not a proof: engine {result.engine} is not sound")
    lines.append(f"  time: {result.stats.seconds:.3f} s, {work_text(result.stats)}")
    return "\n".join(lines)


def work_text(stats: Stats) -> str:
    """``boxes: 17 (input splitting)``, ``subproblems: 5 (ReLU splitting)`` or, for engines
    that do not branch on boxes, ``boxes: 1``."""
    kind = f" ({SPLIT_NAMES[stats.split]})" if stats.split else ""
    return f"{stats.unit}: {stats.boxes}{kind}"


CROSS_CHECK_WORDS = {
    "agree": "agrees",
    "disagree": "DISAGREES — a bug in one of the engines",
    "inconclusive": "inconclusive (the first verdict stands)",
}


def cross_check_dict(engine: str, second: Result | None, agreement) -> dict:
    """The ``cross_check`` entry of the JSON result. ``second`` is None when the second
    engine did not run (it only confirms a ``holds``); ``agreement`` is an
    ``engine.Agreement`` or None."""
    if second is None:
        return {"engine": engine, "ran": False,
                "reason": "runs only to confirm a 'holds'"}
    return {"engine": engine, "ran": True, "verdict": second.verdict.value,
            "agreement": agreement.value, "reason": second.reason,
            "seconds": round(second.stats.seconds, 4),
            "counterexample": _cex_dict(second)}


def cross_check_text(engine: str, first: Result, second: Result | None, agreement) -> str:
    """Human lines for the cross-check under the first result's text."""
    if second is None:
        return (f"cross-check ({engine}): not run (it only confirms 'holds'; the first "
                f"verdict is '{first.verdict.value}')")
    lines = [f"cross-check ({engine}): {second.verdict.value} — "
             f"{CROSS_CHECK_WORDS[agreement.value]}"]
    cex = second.counterexample
    if cex is not None:
        lines.append("  input:  " + " ".join(plain_float(v) for v in cex.x))
        lines.append("  output: " + " ".join(plain_float(v) for v in cex.y))
    if second.reason:
        lines.append(f"  reason: {second.reason}")
    lines.append(f"  time: {second.stats.seconds:.3f} s")
    return "\n".join(lines)


def _cex_dict(result: Result) -> dict | None:
    cex = result.counterexample
    return None if cex is None else {
        "x": [float(v) for v in cex.x],
        "y": [float(v) for v in cex.y],
        "case": cex.case_index,
        "disjunct": cex.disjunct_index,
    }


def json_text(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 minus the umask); mkstemp files
    are 0o600, which would make every output unreadable to other users."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the name points to it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
