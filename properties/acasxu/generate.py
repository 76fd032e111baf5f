"""Write the ACAS Xu properties phi_1..phi_10 as VNN-LIB files (prop_1..prop_10.vnnlib).

Source: Katz et al., "Reluplex: An Efficient SMT Solver for Verifying Deep Neural
Networks" (CAV 2017), Appendix VI. Each file states the UNSAFE set (the negation of the
desired output behaviour) over the inputs in the networks' normalised coordinates
``x_i = (raw_i - mean_i) / range_i``.

Inputs: 0 rho (ft), 1 theta (rad), 2 psi (rad), 3 v_own (ft/s), 4 v_int (ft/s).
Outputs (lower score = preferred advisory): 0 COC, 1 weak left, 2 weak right,
3 strong left, 4 strong right.

Conventions chosen to coincide with the encoding used in VNN-COMP (which goes back to
the original Reluplex/Marabou property files):

* phi_1..phi_4 use the full angle domain ``[-pi, pi]`` with ``pi = math.pi``
  (normalised exactly to +-0.5); phi_5..phi_10 write pi as the truncated constant
  3.141592, so e.g. ``-pi`` normalises to -0.499999896 (a box a hair smaller).
* Normalised input bounds are rounded to 9 decimals.
* phi_1's threshold is left unrounded; it is the only scaled output constant.

The script is deterministic: running it again reproduces the files byte for byte.
Run it as ``python properties/acasxu/generate.py [output_dir]``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

MEANS = (19791.091, 0.0, 0.0, 650.0, 600.0)
RANGES = (60261.0, 6.28318530718, 6.28318530718, 1100.0, 1200.0)
OUTPUT_MEAN = 7.5188840201005975
OUTPUT_RANGE = 373.94992
INPUT_NAMES = ("rho", "theta", "psi", "v_own", "v_int")
OUTPUT_NAMES = ("COC", "weak left", "weak right", "strong left", "strong right")

PI = math.pi
PI_TRUNC = 3.141592  # pi as written in the original property files for phi_5..phi_10

Interval = tuple[float, float]
RawBox = tuple[Interval, Interval, Interval, Interval, Interval]


@dataclass(frozen=True)
class Property:
    """One ACAS Xu property: raw input boxes (a union) and the unsafe output condition."""

    number: int
    desired: str
    boxes: tuple[RawBox, ...]
    unsafe_comment: str
    unsafe: tuple[tuple[str, ...], ...]  # disjunction of conjunctions of VNN-LIB atoms


def _minimal(best: int, others: tuple[int, ...]) -> tuple[str, ...]:
    """Atoms saying output ``best`` scores no higher than each of ``others``."""
    return tuple(f"(<= Y_{best} Y_{k})" for k in others)


def _not_minimal(target: int) -> tuple[tuple[str, ...], ...]:
    """Disjuncts saying some other output scores no higher than ``target``."""
    return tuple((f"(<= Y_{k} Y_{target})",) for k in range(5) if k != target)


def _coc_threshold() -> float:
    """phi_1: COC score 1500 in normalised output units."""
    return (1500.0 - OUTPUT_MEAN) / OUTPUT_RANGE


def _properties() -> tuple[Property, ...]:
    """The ten properties of the Reluplex appendix."""
    full = ((0.0, 60760.0), (-PI, PI), (-PI, PI), (100.0, 1200.0), (0.0, 1200.0))
    box12: RawBox = ((55947.691, 60760.0), full[1], full[2], (1145.0, 1200.0), (0.0, 60.0))
    psi_back = (-PI_TRUNC, -PI_TRUNC + 0.005)
    psi_back_wide = (-PI_TRUNC, -PI_TRUNC + 0.01)
    all_but = {k: tuple(j for j in range(5) if j != k) for k in range(5)}
    return (
        Property(1, "the score for COC is at most 1500", (box12,),
                 "unsafe if COC >= 1500 (raw); normalised with the output mean and range",
                 ((f"(>= Y_0 {_coc_threshold()!r})",),)),
        Property(2, "the score for COC is not the maximal score", (box12,),
                 "unsafe if COC is maximal", (tuple(f"(<= Y_{k} Y_0)" for k in all_but[0]),)),
        Property(3, "the score for COC is not the minimal score",
                 (((1500.0, 1800.0), (-0.06, 0.06), (3.10, PI), (980.0, 1200.0),
                   (960.0, 1200.0)),),
                 "unsafe if COC is minimal", (_minimal(0, all_but[0]),)),
        Property(4, "the score for COC is not the minimal score",
                 (((1500.0, 1800.0), (-0.06, 0.06), (0.0, 0.0), (1000.0, 1200.0),
                   (700.0, 800.0)),),
                 "unsafe if COC is minimal", (_minimal(0, all_but[0]),)),
        Property(5, "the score for strong right is the minimal score",
                 (((250.0, 400.0), (0.2, 0.4), psi_back, (100.0, 400.0), (0.0, 400.0)),),
                 "unsafe if strong right is not minimal", _not_minimal(4)),
        Property(6, "the score for COC is the minimal score",
                 (((12000.0, 62000.0), (0.7, PI_TRUNC), psi_back, (100.0, 1200.0),
                   (0.0, 1200.0)),
                  ((12000.0, 62000.0), (-PI_TRUNC, -0.7), psi_back, (100.0, 1200.0),
                   (0.0, 1200.0))),
                 "unsafe if COC is not minimal", _not_minimal(0)),
        Property(7, "the scores for strong left and strong right are never minimal",
                 ((full[0], (-PI_TRUNC, PI_TRUNC), (-PI_TRUNC, PI_TRUNC), full[3], full[4]),),
                 "unsafe if strong left or strong right is minimal",
                 (_minimal(3, (0, 1, 2)), _minimal(4, (0, 1, 2)))),
        Property(8, "the score for weak left is minimal or the score for COC is minimal",
                 ((full[0], (-PI_TRUNC, -0.75 * PI_TRUNC), (-0.1, 0.1), (600.0, 1200.0),
                   (600.0, 1200.0)),),
                 "unsafe if neither COC nor weak left is minimal",
                 tuple(_minimal(k, (0, 1)) for k in (2, 3, 4))),
        Property(9, "the score for strong left is minimal",
                 (((2000.0, 7000.0), (-0.4, -0.14), psi_back_wide, (100.0, 150.0),
                   (0.0, 150.0)),),
                 "unsafe if strong left is not minimal", _not_minimal(3)),
        Property(10, "the score for COC is minimal",
                 (((36000.0, 60760.0), (0.7, PI_TRUNC), psi_back_wide, (900.0, 1200.0),
                   (600.0, 1200.0)),),
                 "unsafe if COC is not minimal", _not_minimal(0)),
    )


def normalise(raw: float, i: int) -> float:
    """Normalised coordinate of raw input ``i``, rounded to 9 decimals."""
    return round((raw - MEANS[i]) / RANGES[i], 9) + 0.0  # "+ 0.0" avoids printing -0.0


def fmt(value: float) -> str:
    """Plain decimal notation with at most 9 decimals and no trailing zeros."""
    text = f"{value:.9f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _box_atoms(box: RawBox) -> list[str]:
    atoms = []
    for i, (lo, hi) in enumerate(box):
        atoms += [f"(>= X_{i} {fmt(normalise(lo, i))})", f"(<= X_{i} {fmt(normalise(hi, i))})"]
    return atoms


def _box_comments(box: RawBox) -> list[str]:
    return [f";   X_{i} {INPUT_NAMES[i]:<5}: raw [{lo!r}, {hi!r}]"
            for i, (lo, hi) in enumerate(box)]


def _conj(atoms: tuple[str, ...] | list[str]) -> str:
    return atoms[0] if len(atoms) == 1 else "(and " + " ".join(atoms) + ")"


def render(prop: Property) -> str:
    """The VNN-LIB text of one property."""
    lines = [f"; ACAS Xu property phi_{prop.number} (Katz et al., Reluplex 2017, appendix)",
             f"; desired: {prop.desired}; this file states the UNSAFE set.",
             "; generated by properties/acasxu/generate.py -- do not edit", ""]
    lines += [f"(declare-const X_{i} Real)" for i in range(5)] + [""]
    lines += [f"(declare-const Y_{j} Real)" for j in range(5)] + [""]
    for k, box in enumerate(prop.boxes):
        lines += [f"; input box {k + 1} of {len(prop.boxes)} (unscaled ranges):"]
        lines += _box_comments(box)
    if len(prop.boxes) == 1:
        lines += [f"(assert {a})" for a in _box_atoms(prop.boxes[0])]
    else:
        lines += ["(assert (or"] + [f"    {_conj(_box_atoms(b))}" for b in prop.boxes] + ["))"]
    lines += ["", f"; {prop.unsafe_comment}"]
    if len(prop.unsafe) == 1:
        lines += [f"(assert {a})" for a in prop.unsafe[0]]
    else:
        lines += ["(assert (or"] + [f"    {_conj(d)}" for d in prop.unsafe] + ["))"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Write prop_1.vnnlib .. prop_10.vnnlib into ``argv[0]`` (default: this folder)."""
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    for prop in _properties():
        (out / f"prop_{prop.number}.vnnlib").write_text(render(prop), encoding="utf-8")
    print(f"wrote 10 properties to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
