"""Proof certificates for networks whose last layer was repaired: boxes plus a reference.

A certificate for one spec is a list of input boxes, each tagged with a case of the spec,
and a reference last layer (W0, b0) of the network's last-layer shape. It is a hint, never
trusted: checking it re-derives everything from the network being checked.

1. Coverage (:func:`covers`): the boxes tagged with case k cover case k's box (exact
   float64 comparisons; boxes may overlap or stick out, holes are found).
2. Bounds: on each box, CROWN on the network with its last layer replaced by (W0, b0)
   gives post-ReLU bounds [hl, hu] of the last hidden layer and a lower bound ``base`` of
   c.y0 - d for every unsafe row (c, d). The hidden layers are the network's own, so for
   the network's output y = y0 + (W - W0) h + (b - b0):
       c.y - d >= base + min over h in [hl, hu] of c(W - W0)h + c(b - b0)   ("change")
       c.y - d >= min over h in [hl, hu] of cWh + cb - d                     ("interval")
   with float64 rounding bounded as in ``lastlayer.sound_box_margin``. A box is safe
   when every disjunct of its case has a row with a positive bound.

Every box safe and every case covered: no input of the spec reaches its unsafe set, so
the spec HOLDS. :func:`verify_with_certificate` hands only the boxes that are not safe
to branch and bound (a sub-spec with those boxes as its cases) and runs plain branch and
bound on the whole spec when coverage fails. Sound: yes, whatever the certificate says.
Why: a repair that only changes the last layer has bounds of exactly this form on its
own partition (see lastlayer.py), while CROWN on the repaired network, which relaxes
the changed last layer together with the rest, often cannot reproduce them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from verirepair.errors import InputFileError, MismatchError
from verirepair.net_types import AffineReluNet
from verirepair.network import Network, check_lowering_on_boxes, torch_layers
from verirepair.lastlayer import (BoxRows, CaseRows, box_bounds, case_rows, proven_by,
                                  sound_box_margin)
from verirepair.report import write_atomic
from verirepair.spec_types import Box, Spec, SpecCase, strict_flags
from verirepair.verify.types import Result, Stats, Verdict

log = logging.getLogger(__name__)

COVER_NODE_LIMIT = 2_000_000  # regions the coverage check may visit before giving up
MAX_BOXES = 1_000_000  # a repair writes thousands; more is a hostile or broken file
BOUND_CHUNK = 4096  # boxes per CROWN batch


@dataclass(frozen=True)
class Certificate:
    """Boxes tagged with case indices of one spec, and the reference last layer."""

    lower: np.ndarray  # (N, n_in) float64
    upper: np.ndarray  # (N, n_in)
    case: np.ndarray  # (N,) int
    ref_weight: np.ndarray  # (n_out, H)
    ref_bias: np.ndarray  # (n_out,)
    # Optional bounds already computed by this process (never read from a file): per box
    # the last-hidden post-ReLU bounds hl, hu (N, H) and the CROWN lower bound of every
    # unsafe row of its case on the reference network (N, >= rows; -inf pads), valid for
    # the hidden layers ``hidden``. Used only where the checked network's hidden layers
    # are exactly these; otherwise the bounds are computed again.
    cached: CachedBounds | None = None
    # hidden_digest of the network the certificate was made for ("" = not recorded). A
    # mismatch only earns a warning: the checks below never rely on it.
    digest: str = ""

    @property
    def size(self) -> int:
        return int(self.case.shape[0])


def hidden_digest(net: AffineReluNet) -> str:
    """SHA-256 of the shapes and float64 values of every layer but the last: identifies
    the network a certificate was made for (its last layer is the one a repair changes)."""
    h = hashlib.sha256()
    for layer in net.layers[:-1]:
        for a in (layer.weight, layer.bias):
            a = np.ascontiguousarray(a, dtype=np.float64)
            h.update(repr(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CachedBounds:
    hl: np.ndarray
    hu: np.ndarray
    row_lb: np.ndarray
    hidden: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight, bias) per hidden layer

    def valid_for(self, net: AffineReluNet) -> bool:
        layers = net.layers[:-1]
        return len(layers) == len(self.hidden) and all(
            np.array_equal(l.weight, w) and np.array_equal(l.bias, b)
            for l, (w, b) in zip(layers, self.hidden))


@dataclass(frozen=True)
class CertificateCheck:
    covered: bool
    safe: np.ndarray  # (N,) bool: the box's bound proves its case's rows
    reason: str = ""
    timed_out: bool = False  # the deadline passed before every box was checked

    @property
    def holds(self) -> bool:
        return self.covered and bool(self.safe.all())


def validate(cert: Certificate, net: AffineReluNet, spec: Spec) -> None:
    """Raise MismatchError when the certificate does not fit ``net``/``spec`` (or the
    spec does not fit ``net``)."""
    last = net.layers[-1]
    n_in, n_out = net.layers[0].weight.shape[1], last.weight.shape[0]
    if (spec.n_inputs, spec.n_outputs) != (n_in, n_out):
        raise MismatchError(f"{spec.source} declares {spec.n_inputs} inputs and "
                            f"{spec.n_outputs} outputs but the model has {n_in} and {n_out}")
    if len(net.layers) < 2:
        raise MismatchError("a certificate needs a network with at least one hidden layer")
    if cert.ref_weight.shape != last.weight.shape or cert.ref_bias.shape != last.bias.shape:
        raise MismatchError(f"certificate reference last layer {cert.ref_weight.shape} does "
                            f"not match the model's last layer {last.weight.shape}")
    if cert.case.ndim != 1:
        raise MismatchError(f"certificate case indices have shape {cert.case.shape}, "
                            f"not one index per box")
    n = cert.size
    if n > MAX_BOXES:
        raise MismatchError(f"certificate holds {n:,} boxes, more than the {MAX_BOXES:,} "
                            "accepted")
    if cert.lower.shape != (n, spec.n_inputs) or cert.upper.shape != (n, spec.n_inputs):
        raise MismatchError(f"certificate boxes are not {spec.n_inputs}-dimensional")
    if n and (cert.case.min() < 0 or cert.case.max() >= len(spec.cases)):
        raise MismatchError(f"certificate names a case outside 0..{len(spec.cases) - 1}")
    arrays = (cert.lower, cert.upper, cert.ref_weight, cert.ref_bias)
    if not all(np.isfinite(a).all() for a in arrays):
        raise MismatchError("certificate holds non-finite numbers")


def _split_choice(lo: np.ndarray, hi: np.ndarray, r_lo: np.ndarray, r_hi: np.ndarray
                  ) -> tuple[int, float]:
    """A face of some box strictly inside the region: per dimension the face nearest the
    region's middle; among dimensions the one fewest boxes straddle (a bisection tree's
    own split straddles none)."""
    width = r_hi - r_lo
    mid = (r_lo + r_hi) / 2
    faces = np.concatenate([lo, hi])
    inside = (faces > r_lo) & (faces < r_hi)
    dist = np.where(inside, np.abs(faces - mid), np.inf)
    best = dist.argmin(axis=0)
    dims = np.nonzero(np.isfinite(dist[best, np.arange(lo.shape[1])]))[0]
    values = faces[best[dims], dims]
    straddle = ((lo[:, dims] < values) & (hi[:, dims] > values)).sum(axis=0)
    rel = dist[best[dims], dims] / width[dims]
    pick = np.lexsort((rel, straddle))[0]
    return int(dims[pick]), float(values[pick])


def covers(box_lower: np.ndarray, box_upper: np.ndarray, lower: np.ndarray,
           upper: np.ndarray, node_limit: int = COVER_NODE_LIMIT,
           deadline: float | None = None) -> tuple[bool, str]:
    """Whether the union of the closed boxes [lower_i, upper_i] contains the closed box
    [box_lower, box_upper]. Exact (float comparisons only).

    Region by region: keep the boxes that overlap it (with positive width where the region
    has width, containing it where it is flat); done if one contains it; a hole if none
    overlaps it, or only one overlaps it without containing it; otherwise cut it at a
    face of an overlapping box that lies strictly inside. Finitely many faces, so this
    ends; a union of finitely many closed boxes that covers all but a null set of a box
    covers all of it. Returns (False, reason) after ``node_limit`` regions; raises
    _OutOfTime when ``deadline`` (time.monotonic()) passes.
    """
    stack = [(np.asarray(box_lower, float), np.asarray(box_upper, float),
              np.arange(lower.shape[0]))]
    nodes = 0
    while stack:
        r_lo, r_hi, idx = stack.pop()
        nodes += 1
        if nodes > node_limit:
            return False, f"coverage check gave up after {node_limit} regions"
        if nodes % 1024 == 0:
            _on_time(deadline)
        lo, hi = lower[idx], upper[idx]
        flat = r_hi <= r_lo
        overlap = np.where(flat, (lo <= r_lo) & (hi >= r_hi),
                           (lo < r_hi) & (hi > r_lo)).all(axis=1)
        idx, lo, hi = idx[overlap], lo[overlap], hi[overlap]
        if ((lo <= r_lo) & (hi >= r_hi)).all(axis=1).any():
            continue
        if idx.size < 2:
            return False, f"not covered: a part of [{_fmt(r_lo)}, {_fmt(r_hi)}]"
        dim, value = _split_choice(lo, hi, r_lo, r_hi)
        left_hi, right_lo = r_hi.copy(), r_lo.copy()
        left_hi[dim] = value
        right_lo[dim] = value
        stack.append((r_lo, left_hi, idx))
        stack.append((right_lo, r_hi, idx))
    return True, ""


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.6g}" for x in v) + ")"


def _reference_layers(net: AffineReluNet, cert: Certificate) -> list:
    layers = torch_layers(net)
    return layers[:-1] + [(torch.as_tensor(cert.ref_weight, dtype=torch.float64),
                           torch.as_tensor(cert.ref_bias, dtype=torch.float64))]


class _OutOfTime(Exception):
    """The check's deadline passed."""


def _on_time(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise _OutOfTime


def _bounds(layers: list, rows: CaseRows, lower: np.ndarray, upper: np.ndarray,
            deadline: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hl, hu, row_lb) of every box by CROWN, in chunks. Sound. Raises _OutOfTime when
    ``deadline`` (time.monotonic()) passes between chunks."""
    hl, hu, lb = [], [], []
    for start in range(0, lower.shape[0], BOUND_CHUNK):
        _on_time(deadline)
        sl = slice(start, start + BOUND_CHUNK)
        b = box_bounds(layers, torch.as_tensor(lower[sl], dtype=torch.float64),
                        torch.as_tensor(upper[sl], dtype=torch.float64), rows)
        hl.append(b.hl)
        hu.append(b.hu)
        lb.append(b.row_lb)
    return np.concatenate(hl), np.concatenate(hu), np.concatenate(lb)


def safe_boxes(net: AffineReluNet, case: SpecCase, cert: Certificate,
               select: np.ndarray, deadline: float | None = None) -> np.ndarray:
    """(N,) bool for the boxes ``cert[select]`` (all of ``case``): every disjunct has a
    row with a positive certified bound on the box's part inside the case (module
    docstring, step 2), or the box misses the case. Sound: yes."""
    rows = case_rows(case.unsafe)
    n_boxes = int(np.count_nonzero(select))
    if rows.has_empty_disjunct:  # every output is unsafe: no box is safe
        return np.zeros(n_boxes, dtype=bool)
    if rows.n_disjuncts == 0:  # nothing is unsafe
        return np.ones(n_boxes, dtype=bool)
    # Only each box's part inside the case matters (coverage makes those parts cover the
    # case): a box that misses the case proves nothing and needs nothing; the others are
    # bounded on their part inside (tighter and cheaper than on the whole box).
    lower = np.maximum(cert.lower[select], case.box.lower)
    upper = np.minimum(cert.upper[select], case.box.upper)
    inside = np.all(lower <= upper, axis=1)
    safe = np.ones(n_boxes, dtype=bool)
    if not inside.any():
        return safe
    if cert.cached is not None and cert.cached.valid_for(net):
        hl, hu = cert.cached.hl[select][inside], cert.cached.hu[select][inside]
        row_lb = cert.cached.row_lb[select][inside][:, :rows.count]
    else:
        hl, hu, row_lb = _bounds(_reference_layers(net, cert), rows, lower[inside],
                                 upper[inside], deadline)
    last = net.layers[-1]
    n, r = row_lb.shape
    mid, rad = (hl + hu) / 2, (hu - hl) / 2
    box_rows = BoxRows(mid=np.repeat(mid, r, axis=0), rad=np.repeat(rad, r, axis=0),
                       c=np.tile(rows.c, (n, 1)), base=row_lb.reshape(-1),
                       d=np.tile(rows.d, n), leaf=np.repeat(np.arange(n), r))
    margin = sound_box_margin(cert.ref_weight, cert.ref_bias, last.weight - cert.ref_weight,
                              last.bias - cert.ref_bias, box_rows)
    safe[inside] = proven_by(margin.reshape(n, r), rows)
    return safe


def check_certificate(net: AffineReluNet, spec: Spec, cert: Certificate,
                      node_limit: int = COVER_NODE_LIMIT,
                      deadline: float | None = None) -> CertificateCheck:
    """Coverage of every case and the certified bound of every box (module docstring).

    Raises MismatchError when the certificate does not fit. Sound: ``holds`` only when
    the spec holds on ``net``. The coverage check of a case visits at most 8 regions per
    box (a bisection tiling needs about 2) before it gives up (not covered). Past
    ``deadline`` (time.monotonic()) the check stops with ``timed_out`` (not covered).
    """
    validate(cert, net, spec)
    safe = np.zeros(cert.size, dtype=bool)
    try:
        for index, case in enumerate(spec.cases):
            _on_time(deadline)
            mine = cert.case == index
            ok, why = covers(case.box.lower, case.box.upper, cert.lower[mine],
                             cert.upper[mine], min(node_limit, 8 * int(mine.sum()) + 1000),
                             deadline)
            if not ok:
                return CertificateCheck(False, safe, f"case {index}: {why}")
            if mine.any():
                safe[mine] = safe_boxes(net, case, cert, mine, deadline)
    except _OutOfTime:
        return CertificateCheck(False, np.zeros(cert.size, dtype=bool),
                                "the time ran out while checking the certificate",
                                timed_out=True)
    return CertificateCheck(True, safe)


def open_spec(spec: Spec, cert: Certificate, safe: np.ndarray) -> tuple[Spec, np.ndarray]:
    """The sub-spec whose cases are the boxes not proven (each cut to its case box), and
    for each of its cases the index of the original case."""
    cases, origin = [], []
    for i in np.nonzero(~safe)[0]:
        parent = spec.cases[int(cert.case[i])]
        lo = np.maximum(cert.lower[i], parent.box.lower)
        hi = np.minimum(cert.upper[i], parent.box.upper)
        # a strict bound of the case stays strict where it is a face of the part
        strict_lo = _strict_face(parent.box.strict_lower, lo, parent.box.lower)
        strict_hi = _strict_face(parent.box.strict_upper, hi, parent.box.upper)
        flat_on_strict = (lo == hi) & (strict_flags(strict_lo, lo)
                                       | strict_flags(strict_hi, hi))
        if np.all(lo <= hi) and not flat_on_strict.any():  # else: no point of the case
            cases.append(SpecCase(Box(lo, hi, strict_lo, strict_hi), parent.unsafe))
            origin.append(int(cert.case[i]))
    return replace(spec, cases=tuple(cases)), np.asarray(origin, dtype=np.int64)


def _strict_face(strict: np.ndarray | None, bound: np.ndarray, parent: np.ndarray
                 ) -> np.ndarray | None:
    return None if strict is None else strict & (bound == parent)


def verify_with_certificate(network: Network, spec: Spec, cert: Certificate, timeout: float,
                            run_bab) -> Result:
    """HOLDS when the certificate proves the spec; otherwise branch and bound decides,
    only on the boxes left open when every case is covered. ``run_bab(network, spec,
    timeout) -> Result`` is the complete engine (the one the user chose). Engine name:
    "certificate", "certificate+<engine>" when that engine decided the open boxes, or the
    engine's own when the certificate does not cover the spec. Like ``verify``, raises
    ModelError when the lowered network and onnxruntime differ on the spec's input boxes
    (a certificate that covers everything never reaches ``verify``'s own comparison)."""
    t0 = time.monotonic()
    validate(cert, network.net, spec)  # a spec that does not fit: its own clear line first
    check_lowering_on_boxes(network, [(c.box.lower, c.box.upper) for c in spec.cases])
    if cert.digest and cert.digest != hidden_digest(network.net):
        log.warning("the certificate was made for a network with other hidden layers; "
                    "it is checked anyway, but expect it to prove little")
    check = check_certificate(network.net, spec, cert, deadline=t0 + timeout)
    left = max(timeout - (time.monotonic() - t0), 1.0)
    if check.timed_out:
        return Result(Verdict.TIMEOUT, reason=check.reason, engine="certificate",
                      stats=Stats(boxes=cert.size, seconds=time.monotonic() - t0))
    if not check.covered:
        log.warning("certificate not used: %s", check.reason)
        result = run_bab(network, spec, left)
        return replace(result, reason=_join(check.reason, result.reason))
    n_open = int((~check.safe).sum())
    if n_open == 0:
        stats = Stats(boxes=cert.size, seconds=time.monotonic() - t0)
        return Result(Verdict.HOLDS, engine="certificate", stats=stats)
    log.info("certificate: %d of %d boxes left to branch and bound", n_open, cert.size)
    sub, origin = open_spec(spec, cert, check.safe)
    result = run_bab(network, sub, left)
    cex = result.counterexample
    if cex is not None:
        cex = replace(cex, case_index=int(origin[cex.case_index]))
    result.stats.seconds = time.monotonic() - t0
    if cex is not None and not spec.cases[cex.case_index].box.contains(cex.x):
        return Result(Verdict.UNKNOWN, reason="a counterexample of a certificate box lies "
                      "outside its case (never expected)",
                      engine=f"certificate+{result.engine}",
                      stats=result.stats)
    return replace(result, counterexample=cex, engine=f"certificate+{result.engine}")


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# ---- files: one .npz holding the certificates of several properties ----------------

def spec_key(path: str | Path) -> str:
    """A property file's identity in a certificate file: the SHA-256 of its bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_certificates(path: str | Path, certs: dict[str, Certificate]) -> None:
    """Write ``{spec_key: Certificate}`` to ``path`` atomically (npz, no pickles)."""
    arrays: dict[str, np.ndarray] = {"keys": np.asarray(sorted(certs), dtype=str)}
    for i, key in enumerate(sorted(certs)):
        c = certs[key]
        arrays |= {f"lower_{i}": c.lower, f"upper_{i}": c.upper, f"case_{i}": c.case,
                   f"ref_weight_{i}": c.ref_weight, f"ref_bias_{i}": c.ref_bias,
                   f"digest_{i}": np.asarray(c.digest, dtype=str)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


MAX_ARRAY_BYTES = 2e9  # one array of a certificate, uncompressed


def _check_sizes(data, names: list[str], path: str | Path) -> None:
    """Refuse, before anything is decompressed, a certificate whose arrays would be huge
    (a small compressed file can hold gigabytes of equal boxes)."""
    for name in names:
        try:
            size = data.zip.getinfo(f"{name}.npy").file_size
        except KeyError:  # absent: reading it fails as "not a verirepair certificate"
            continue
        if size > MAX_ARRAY_BYTES:
            label = name.rsplit("_", 1)[0] if name[-1].isdigit() else name
            raise InputFileError(f"{path}: the certificate's {label} array would take "
                                 f"{size:,} bytes, more than the {MAX_ARRAY_BYTES:,.0f} "
                                 "accepted")


def load_certificate(path: str | Path, key: str) -> Certificate | None:
    """The certificate stored for ``key`` (see :func:`spec_key`), None if there is none.
    Raises InputFileError for a missing or unreadable file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            _check_sizes(data, ["keys"], path)
            keys = [str(k) for k in data["keys"]]
            if key not in keys:
                return None
            i = keys.index(key)
            _check_sizes(data, [f"{name}_{i}" for name in
                                ("lower", "upper", "case", "ref_weight", "ref_bias",
                                 "digest")], path)
            return Certificate(lower=data[f"lower_{i}"].astype(np.float64),
                               upper=data[f"upper_{i}"].astype(np.float64),
                               case=data[f"case_{i}"].astype(np.int64),
                               ref_weight=data[f"ref_weight_{i}"].astype(np.float64),
                               ref_bias=data[f"ref_bias_{i}"].astype(np.float64),
                               digest=str(data[f"digest_{i}"]) if f"digest_{i}" in data
                               else "")
    except FileNotFoundError:
        raise InputFileError(f"{path}: certificate file not found") from None
    except InputFileError:
        raise
    except Exception as exc:  # numpy/zipfile raise many kinds for a file that is not ours
        raise InputFileError(f"{path}: not a verirepair certificate file "
                             f"({type(exc).__name__}: {exc})") from None
