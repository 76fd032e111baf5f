"""``repair(...)``: last-layer repair that is proven by construction, then re-verified.

Steps: verify targets -> partition every target and preserved region on the original
network -> QP (incremental rows; split boxes when infeasible) -> round to float32 and
re-check every box row soundly -> save to a temporary file -> RE-LOAD it and verify every
property with the complete verifier -> rename to ``out_path`` only if all hold.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from verirepair.errors import InputFileError, MismatchError
from verirepair.net_types import AffineReluNet
from verirepair.network import Network, load_network, read_model_bytes
from verirepair.repair.focus import FreeSet, all_parameters, escalation, ranked_neurons
from verirepair.repair.partition import Partition, partition, refine
from verirepair.lastlayer import BoxRows, box_slack, case_rows, sound_box_margin
from verirepair.repair.qp import Penalties, QPOutcome, SampleRows, all_free, solve_incremental
from verirepair.repair.rows import (box_rows, counterexample_mask, decision_rows,
                                    hidden_and_output, near_boundary, sample_boxes)
from verirepair.repair.save import last_layer_initializers, patched_layers, save_temp
from verirepair.report import write_atomic
from verirepair.spec import load_spec
from verirepair.spec_types import Spec
from verirepair.verify.certificate import (CachedBounds, Certificate, hidden_digest,
                                           save_certificates, spec_key,
                                           verify_with_certificate)
from verirepair.verify.engine import (VerifyOptions, check_compatible, cross_check,
                                      engine_info, verify)
from verirepair.verify.types import Result, Verdict


log = logging.getLogger("verirepair.repair")


@dataclass(frozen=True)
class RepairOptions:
    max_boxes: int = 1500  # leaves per case in the first partition
    min_width: float = 1.0 / 64  # smallest relative box width that is still split
    eps_rel: float = 1e-5  # box margin kept where the original is proven, relative
    fix_margin_rel: float = 2e-3  # box margin where a fix is needed (eases the final proof)
    margin_rel: float = 1e-5  # decision margin kept on benign samples, relative
    # Decision rows on this many uniform domain samples. ACAS Xu, same machine, N2,5 /
    # N4,1 / N2,4 / N3,4 phi2: 20k -> 99.70 / 99.70 / 99.75 / 99.75 % agreement, 100k ->
    # 99.91 / 99.91 / 99.92 / 99.89 % at 1.2-2.9x the time (200k: 99.95 / 99.95 / 99.92 /
    # 99.90 % at 1.4-5.6x). Flips sit between samples, not only at the boundary.
    domain_samples: int = 100_000
    # Decision rows also on near-boundary samples: the boundary_samples points with the
    # smallest decision gap among boundary_pool uniform domain samples (a flip happens
    # where the change exceeds the gap). ACAS Xu, same run: agreement +0.05..0.2 points
    # per pair at 1.5-3x the QP time, and N2,9 phi2 ran out of a 600 s budget; so off by
    # default (0), on with --fidelity-samples.
    boundary_pool: int = 0
    boundary_samples: int = 0
    box_samples: int = 500  # per case box
    split_rounds: int = 20
    # A box that falls short is bisected this often per round (into 2**depth boxes).
    # Same machine, 100k decision samples: depth 2 vs 1 on N2,1 / N4,7 / N2,5 / N4,1 phi2:
    # 26.6 / 19.4 / 18.3 / 13.9 s vs 33.6 / 24.0 / 27.6 / 16.2 s, agreement within 0.02.
    split_depth: int = 2
    rounding_rounds: int = 6
    max_qp_iterations: int = 40
    qp_add_rows: int = 400  # box rows and decision rows added per incremental QP step
    fidelity_samples: int = 100_000
    argmax: bool = False
    soft_weight: float = 100.0  # cost per unit of a broken decision margin (soft mode)
    box_penalty: float = 1e3  # cost per unit of box shortfall (such boxes are split)
    decision_split_rounds: int = 12  # split boxes that conflict with decisions this often
    decision_split_boxes: int = 400  # ... while at most this many boxes conflict
    localize: str = "none"  # a verirepair.localize method, or "none": all parameters
    cross_check: str | None = None  # a second engine that must not contradict the proof
    patch: str = "qp"  # "qp" (minimal change, Clarabel) or a derivative-free search
    milp_neurons: int = 8  # --patch milp: last-hidden neurons whose inputs may change
    milp_seconds: float = 60.0  # --patch milp: time limit of the hidden-layer MILP
    localize_fraction: float = 0.1  # first try the top 10 % of the last-hidden neurons
    # Candidates must be active on at least this share of the counterexamples (a neuron
    # that is 0 there cannot move those outputs through its outgoing weights). Off (0) by
    # default: CARE has no such filter, and with it few neurons may remain.
    localize_min_active: float = 0.0
    # A localised parameter set's patch is refused (the next, wider set is tried) when it
    # changes some output on the fidelity samples by more than this many times the
    # original network's output scale (max |y| on the same samples; both as reported).
    # If no wider set gives an accepted patch, the least-changing refused one is used;
    # the last set's (all parameters) is used unless a refused one changed outputs less;
    # a patch used above the ratio gets a note and a warning.
    # Why: ACAS Xu ablation at 4801523 (24 pairs, benchmarks/reports/ablation_grid.md;
    # measured without this rule): the largest ratio of none:qp was 3.6, of PSO / CMA-ES
    # 1.8, of none:milp 14.8 (all parameters: never refused), but 5-7 of the 24 localised
    # qp repairs per localiser were above 10, up to 833 (causal N3,7), decisions still
    # 98.96-99.99 % kept, and gradient:milp N3,9 4.1e7 with 12.6 %: a few neurons'
    # weights grown until they move the boxes, outputs far off wherever they are active.
    max_output_change_ratio: float = 10.0
    domain_lower: tuple[float, ...] | None = None
    domain_upper: tuple[float, ...] | None = None
    seed: int = 0


@dataclass
class PropertyReport:
    path: str
    role: str  # "target" | "preserve"
    before: str
    after: str = "not checked"
    seconds: float = 0.0  # verification of the repaired file
    seconds_before: float = 0.0  # verification of the original
    engine: str = "bab"
    cross_check: str = ""  # "<engine>: <verdict>" of the second proof, when asked for
    cross_check_seconds: float = 0.0


@dataclass
class RepairReport:
    model: str
    output: str | None
    status: str = "failed: not started"
    properties: list[PropertyReport] = field(default_factory=list)
    changed_parameters: int = 0
    l2_change: float = 0.0
    linf_change: float = 0.0
    iterations: int = 0
    qp_sizes: list[tuple[int, int]] = field(default_factory=list)
    leaf_boxes: int = 0
    box_rows: int = 0
    sample_rows: int = 0
    eps: float = 0.0  # smallest box margin required
    fix_margin: float = 0.0  # largest box margin required (where a fix was needed)
    agreement: float | None = None
    max_output_change: float | None = None
    output_scale: float | None = None  # the original's max |y| on the fidelity samples
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    localize: str = "none"
    patch: str = "qp"
    patched_neurons: list[int] = field(default_factory=list)  # last-hidden, outgoing weights
    free_set: str = ""
    hidden_patch: dict = field(default_factory=dict)  # --patch milp: the hidden-layer stage
    # where agreement/max_output_change were measured: the domain box (--domain-*, else
    # the hull of the property boxes), the decision rule and the number of samples
    fidelity_domain: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Problem:
    network: Network
    specs: list[Spec]
    parts: list[Partition]
    samples: SampleRows
    domain: tuple[np.ndarray, np.ndarray]
    scale: float
    free: np.ndarray | None = None  # (n_out, H) weight entries the patch may change
    conflicts: list[int] = field(default_factory=list)  # boxes short, per split round


def _deadline_left(start: float, budget: float) -> float:
    return max(0.0, budget - (time.monotonic() - start))


def _domain(specs: list[Spec], options: RepairOptions) -> tuple[np.ndarray, np.ndarray]:
    """The user's domain box, or the hull of all property boxes."""
    if options.domain_lower is not None and options.domain_upper is not None:
        return (np.asarray(options.domain_lower, float), np.asarray(options.domain_upper, float))
    lows = [c.box.lower for s in specs for c in s.cases]
    ups = [c.box.upper for s in specs for c in s.cases]
    return np.min(lows, axis=0), np.max(ups, axis=0)


def _check_repairable(specs: list[Spec], paths: list[str]) -> None:
    """A case whose unsafe set has a disjunct without output constraints is unsafe for
    every output: no change of the network can make that property hold."""
    for spec, path in zip(specs, paths):
        for index, case in enumerate(spec.cases):
            if case_rows(case.unsafe).has_empty_disjunct:
                raise MismatchError(f"{path}: case {index} has an unsafe disjunct without "
                                    f"output constraints (every output is unsafe there); "
                                    f"no repair can make it hold")


def _check_domain(options: RepairOptions, n_inputs: int) -> None:
    for bound in (options.domain_lower, options.domain_upper):
        if bound is not None and len(bound) != n_inputs:
            raise MismatchError(f"the input domain has {len(bound)} numbers but the model "
                                f"has {n_inputs} inputs")


def _samples(network: Network, specs: list[Spec], domain, options: RepairOptions,
             stage: AffineReluNet) -> tuple[SampleRows, float]:
    """Decision rows on benign samples and the output scale (max |y| on them). The
    decisions are the original network's; the rows are written over the last hidden layer
    of ``stage`` (the network the last-layer patch starts from: the original, or the one
    after a hidden-layer patch)."""
    rng = np.random.default_rng(options.seed)
    boxes = [domain] + [(c.box.lower, c.box.upper) for s in specs for c in s.cases]
    counts = [options.domain_samples] + [options.box_samples] * (len(boxes) - 1)
    x = sample_boxes(rng, boxes, counts)
    if options.boundary_pool and options.boundary_samples:
        x = np.concatenate([x, near_boundary(network.net, domain, options.boundary_samples,
                                             options.boundary_pool, options.argmax, rng)])
    h, y = hidden_and_output(network.net, x)
    if stage is not network.net:
        h, _ = hidden_and_output(stage, x)
    scale = float(max(np.abs(y).max(), 1e-6))
    bad = counterexample_mask(x, y, specs)
    return decision_rows(h, y, bad, options.margin_rel * scale, options.argmax), scale


RESERVE_PER_SPEC = 2.0  # seconds kept back for each spec still to verify


def _bab(network: Network, spec: Spec, timeout: float) -> Result:
    return verify(network, spec, VerifyOptions(timeout=timeout))


def _verify_all(network: Network, specs: list[Spec], seconds: float,
                certs: list[Certificate] | None = None) -> list[tuple[Verdict, float, str]]:
    """Verify every spec within ``seconds`` in all: (verdict, seconds, engine) each. Most
    take about a second, so each one may use what is left, minus a small reserve for
    each spec after it. With ``certs`` (one per spec) each proof starts from its
    certificate (verify/certificate.py: checked from scratch; bab decides what it
    leaves open)."""
    out = []
    end = time.monotonic() + seconds
    for index, spec in enumerate(specs):
        t0 = time.monotonic()
        later = len(specs) - 1 - index
        timeout = max(end - t0 - RESERVE_PER_SPEC * later, 1.0)
        if certs is None:
            result = _bab(network, spec, timeout)
        else:
            result = verify_with_certificate(network, spec, certs[index], timeout, _bab)
        out.append((result.verdict, time.monotonic() - t0, result.engine))
    return out


def _split_leaves(prob: _Problem, rows: BoxRows, which: np.ndarray, depth: int = 1) -> int:
    """Bisect the leaves of the selected box rows ``depth`` times (each into 2**depth
    boxes); returns how many leaves were selected."""
    bad = np.zeros(sum(p.size for p in prob.parts), dtype=bool)
    bad[rows.leaf[which]] = True
    offset = 0
    for i, part in enumerate(prob.parts):
        mask = bad[offset:offset + part.size]
        offset += part.size
        for _ in range(depth if mask.any() else 0):
            n_new = 2 * int(mask.sum())
            part = refine(prob.network.net, prob.specs[i], part, mask)
            mask = np.zeros(part.size, dtype=bool)
            mask[part.size - n_new:] = True  # refine() appends the children at the end
        prob.parts[i] = part
    return int(bad.sum())


def row_margins(prob: _Problem, rows: BoxRows, options: RepairOptions) -> np.ndarray:
    """Margin each box row must reach: ``fix_margin_rel`` where the original network is
    not proven on the box (a comfortable margin keeps the final proof short), else
    ``eps_rel`` (relative to the output scale)."""
    last = prob.network.net.layers[-1]
    zero_w, zero_b = np.zeros_like(last.weight), np.zeros_like(last.bias)
    before = box_slack(last.weight, last.bias, zero_w, zero_b, rows)
    return np.where(before > 0, options.eps_rel, options.fix_margin_rel) * prob.scale


def _qp_patch(prob: _Problem, rows: BoxRows, eps: np.ndarray, options: RepairOptions,
              seconds: float, splits: int) -> QPOutcome:
    """Box rows carry the proof, decision rows only fidelity. Stages: all rows hard; then,
    while few boxes conflict and split rounds remain, penalised box rows with hard
    decision rows (the boxes that fall short are split by the caller: a conflict with a
    decision usually comes from a box whose bounds are loose); then penalised decision
    rows; then both penalised."""
    last = prob.network.net.layers[-1]
    margin = options.margin_rel * prob.scale

    deadline = time.monotonic() + seconds

    def run(penalties: Penalties) -> QPOutcome:
        t0 = time.monotonic()
        out = solve_incremental(last.weight, last.bias, rows, prob.samples, eps, margin,
                                options.max_qp_iterations, options.qp_add_rows,
                                penalties=penalties, free=prob.free, deadline=deadline)
        log.debug("QP %s: %s after %d solves, %.2f s", penalties,
                  "solved" if out.dW is not None else "no solution", out.iterations,
                  time.monotonic() - t0)
        return out

    splitting = splits < options.decision_split_rounds and not _stalled(prob)
    if not (prob.conflicts and splitting):  # see below
        out = run(Penalties())
        if out.dW is not None:
            return out
    if splitting:
        # Once boxes have conflicted with decisions, the hard QP is skipped while
        # splitting goes on: a box-penalised solution without shortfall is the hard
        # optimum anyway, and with shortfall the hard QP would have failed (it cost a
        # failed hard solve per round: N2,1 with 100k decision samples 40.6 -> 33.6 s).
        out = run(Penalties(box=options.box_penalty))
        short = int(out.short.sum())
        if out.dW is not None and short <= options.decision_split_boxes:
            if short:
                prob.conflicts.append(short)
            return out
    for penalties in (Penalties(sample=options.soft_weight),
                      Penalties(box=options.box_penalty, sample=options.soft_weight)):
        out = run(penalties)
        if out.dW is not None:
            return out
    return out


STALL_PATIENCE = 2  # split rounds without a new minimum of conflicts before giving up


LOCALIZED_SHORT_SHARE = 0.2  # a localised set that leaves this share of rows short is too small


def _set_too_small(shorts: list[int], rows: BoxRows) -> bool:
    """A localised parameter set is given up (before more splitting) when a large share
    of the box rows falls short, or when the count of short rows did not shrink in the
    last round: splitting then only grows the partition for the sets after it (ACAS Xu
    N2,1, top 5 neurons: 610 then 1538 short leaves, and the QPs of the later sets slowed
    down on the 4x larger partition)."""
    return (shorts[-1] > LOCALIZED_SHORT_SHARE * rows.size
            or (len(shorts) > 1 and shorts[-1] >= shorts[-2]))


def _stalled(prob: _Problem) -> bool:
    """Splitting helps while the boxes in conflict with decisions get fewer; once no
    round in the last ``STALL_PATIENCE`` set a new minimum the conflict is real (not every
    decision can be kept) and decisions are penalised instead. (Patience 1 stopped N4,7 at
    12 -> 13 conflicts: 99.45 % agreement instead of 99.89 %.)"""
    c = prob.conflicts
    return (len(c) > STALL_PATIENCE
            and min(c[-STALL_PATIENCE:]) >= min(c[:-STALL_PATIENCE]))


def _search_patch(method: str) -> Callable[..., QPOutcome]:
    """A derivative-free patcher (repair/search.py) with the QP patcher's contract."""
    def run(prob: _Problem, rows: BoxRows, eps: np.ndarray, options: RepairOptions,
            seconds: float, splits: int) -> QPOutcome:
        from verirepair.repair.search import PATCHERS, SearchOptions

        last = prob.network.net.layers[-1]
        free = prob.free if prob.free is not None else all_free(last.weight)
        return PATCHERS[method](last.weight, last.bias, rows, prob.samples, eps,
                                options.margin_rel * prob.scale, free,
                                SearchOptions(seed=options.seed), seconds)
    return run


PATCH_METHODS: dict[str, Callable[..., QPOutcome]] = {
    "qp": _qp_patch,
    "pso": _search_patch("pso"),
    "cmaes": _search_patch("cmaes"),
    "milp": _qp_patch,  # after the hidden-layer MILP (_escalate) the last layer is a QP
}


def _solve_once(prob: _Problem, rows: BoxRows, eps: np.ndarray, options: RepairOptions,
                seconds: float, splits: int) -> QPOutcome:
    return PATCH_METHODS[options.patch](prob, rows, eps, options, seconds, splits)


def _free_sets(network: Network, specs: list[Spec], options: RepairOptions,
               report: RepairReport, start: float, budget: float) -> list[FreeSet]:
    """The escalating parameter sets to try (just "all" without a localiser)."""
    last = network.net.layers[-1]
    if options.localize == "none":
        return [all_parameters(*last.weight.shape)]
    targets = [s for s, p in zip(specs, report.properties)
               if p.role == "target" and p.before == Verdict.VIOLATED.value]
    t0 = time.monotonic()
    order = ranked_neurons(network, targets, options.localize, options.seed,
                           min(30.0, _deadline_left(start, budget) / 4),
                           options.localize_min_active)
    log.info("localize (%s): %s in %.1f s", options.localize, order[:10],
             time.monotonic() - t0)
    return escalation(order, *last.weight.shape, options.localize_fraction)


def _solve(prob: _Problem, options: RepairOptions, report: RepairReport, start: float,
           budget: float, split_rounds: int, give_up_on_stall: bool = False
           ) -> tuple[np.ndarray, np.ndarray] | None:
    """Patch with penalised box shortfall: split the boxes that fall short and solve
    again (for every patcher: a search that finds no feasible candidate marks the rows it
    could not reach); grow eps when float32 rounding breaks a box row. With
    ``give_up_on_stall`` (a localised parameter set) stop when :func:`_set_too_small`
    says the set, not the boxes, is the problem. Returns float32-exact (W, b)."""
    last = prob.network.net.layers[-1]
    grow = 1.0
    splits = 0
    shorts: list[int] = []
    for _ in range(options.split_rounds + options.rounding_rounds + 2):
        if _deadline_left(start, budget) <= 0:
            report.notes.append(f"budget ended during the {options.patch} patch phase")
            return None
        rows = box_rows(list(zip(prob.specs, prob.parts)))
        eps = grow * row_margins(prob, rows, options)
        out = _solve_once(prob, rows, eps, options, _deadline_left(start, budget) / 2,
                          splits)
        _record(report, out, rows, eps)
        if out.dW is None and not out.short.any():
            report.notes.append(f"the {options.patch} patcher found no patch (solver "
                                f"failure, infeasible, or its iteration/time limit)")
            return None
        if out.short.any():
            shorts.append(int(out.short.sum()))
            if splits >= split_rounds:
                report.notes.append(f"{shorts[-1]} boxes still fall short after {splits} "
                                    f"split rounds")
                return None
            if give_up_on_stall and _set_too_small(shorts, rows):
                report.notes.append(f"{shorts[-1]} of {rows.size} box rows fall short "
                                    f"after {splits} split rounds: too few parameters")
                return None
            count = _split_leaves(prob, rows, out.short, options.split_depth)
            splits += 1
            log.info("split round %d: %d leaves fell short", splits, count)
            continue
        w32 = (last.weight + out.dW).astype(np.float32).astype(np.float64)
        b32 = (last.bias + out.db).astype(np.float32).astype(np.float64)
        if np.all(sound_box_margin(last.weight, last.bias, w32 - last.weight,
                                    b32 - last.bias, rows) > 0):
            return w32, b32
        grow *= 4.0
        report.notes.append("float32 rounding broke a box row: margins x4")
    report.notes.append("no sound solution within the iteration limits")
    return None


def _record(report: RepairReport, out: QPOutcome, rows: BoxRows, eps: np.ndarray) -> None:
    report.iterations += out.iterations
    report.qp_sizes.extend(out.sizes)
    report.box_rows = rows.size
    report.sample_rows = out.sample_rows_used
    report.leaf_boxes = int(rows.leaf.max()) + 1 if rows.size else 0
    report.eps = float(eps.min()) if eps.size else 0.0
    report.fix_margin = float(eps.max()) if eps.size else 0.0


def _fidelity_samples(domain, options: RepairOptions) -> np.ndarray:
    """Uniform domain samples on which fidelity is measured (and the output guard)."""
    return sample_boxes(np.random.default_rng(options.seed + 1), [domain],
                        [options.fidelity_samples])


def _fidelity(original: AffineReluNet, repaired: AffineReluNet, domain, options
              ) -> tuple[float, float, float]:
    """(decision agreement, largest output change, the original's max |y|) on uniform
    samples of the domain."""
    x = _fidelity_samples(domain, options)
    y0, y1 = original.forward(x), repaired.forward(x)
    pick = np.argmax if options.argmax else np.argmin
    return (float(np.mean(pick(y0, axis=1) == pick(y1, axis=1))),
            float(np.abs(y1 - y0).max()), float(np.abs(y0).max()))


def _change_stats(report: RepairReport, original: AffineReluNet,
                  new: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """Changed parameters and the L2 / Linf size of the change over every patched layer."""
    delta = np.concatenate([np.concatenate([(w - original.layers[i].weight).ravel(),
                                            b - original.layers[i].bias])
                            for i, (w, b) in sorted(new.items())])
    report.changed_parameters = int(np.sum(np.abs(delta) > 1e-12))
    report.l2_change = float(np.linalg.norm(delta))
    report.linf_change = float(np.abs(delta).max())


def _save_certificates(path: str | Path, certs: dict) -> None:
    """save_certificates; a failed write is one line naming the file."""
    try:
        save_certificates(path, certs)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot write the certificate: "
                             f"{exc.strerror or type(exc).__name__}") from None


def repair(network_path: str | Path, target_spec_paths: list[str | Path],
           preserve_spec_paths: list[str | Path], out_path: str | Path, budget_s: float,
           options: RepairOptions = RepairOptions(),
           certificate_path: str | Path | None = None) -> RepairReport:
    """Repair the last layer so that every target and preserved property is proven.

    Requires: readable model and specs (bad input raises VerirepairError). Returns the
    report; ``out_path`` is written only when status == "proven" (sound: the saved file
    is re-loaded and every property verified: each from the repair's own certificate,
    checked from scratch, with branch and bound for whatever it leaves open). With
    ``certificate_path`` the certificates are saved there too (``check --certificate``).
    """
    start = time.monotonic()
    network = load_network(network_path)
    if options.cross_check:  # unavailable engine or a network it cannot take: at once
        engine_info(options.cross_check).fits(network)
    targets = [load_spec(p) for p in target_spec_paths]
    preserves = [load_spec(p) for p in preserve_spec_paths]
    specs = targets + preserves
    for spec in specs:
        check_compatible(network, spec)
    last_layer_initializers(network)  # unsupported last layer: clear error up front
    _check_domain(options, network.n_inputs)
    paths = [str(p) for p in list(target_spec_paths) + list(preserve_spec_paths)]
    _check_repairable(specs, paths)
    report = RepairReport(model=str(network_path), output=None)
    roles = ["target"] * len(targets) + ["preserve"] * len(preserves)
    before = _verify_all(network, specs, min(_deadline_left(start, budget_s) / 4, 60.0))
    report.properties = [PropertyReport(p, r, v.value, seconds_before=round(t, 3))
                         for p, r, (v, t, _) in zip(paths, roles, before)]
    log.info("before: %s", ", ".join(f"{p}: {v.value}" for p, (v, _, _) in zip(paths, before)))
    if all(v is Verdict.HOLDS for v, _, _ in before):
        report.status = "nothing to repair: every property already holds"
        _publish_unchanged(network, out_path, certificate_path, report)
        report.seconds = time.monotonic() - start
        return report
    _run(network, specs, out_path, budget_s, options, report, start, certificate_path)
    report.seconds = time.monotonic() - start
    return report


def _publish_unchanged(network: Network, out_path, certificate_path: str | Path | None,
                       report: RepairReport) -> None:
    """Nothing to repair: ``out_path`` gets the original file's bytes, so that a pipeline
    reading it after exit 0 never finds the file of an earlier run; the certificate file,
    when asked for, holds no certificate (``check --certificate`` then verifies from
    scratch, as it must: no partition was built). Raises InputFileError, writing nothing,
    when the file is no longer the one that was loaded and verified."""
    model_path = Path(network.source)
    data = read_model_bytes(model_path)  # a .onnx.gz input: -o is written uncompressed
    if network.digest and hashlib.sha256(data).hexdigest() != network.digest:
        raise InputFileError(f"{model_path}: the file changed while repair was running "
                             f"(it is not the model that was verified); nothing written")
    if certificate_path is not None:
        _save_certificates(certificate_path, {})
    try:
        write_atomic(out_path, data)
    except OSError as exc:
        raise InputFileError(f"{out_path}: cannot write the model: "
                             f"{exc.strerror or exc}") from None
    report.output = str(out_path)
    report.notes.append("the original model is written unchanged"
                        + ("; the certificate file holds no certificate"
                           if certificate_path is not None else ""))


def _run(network: Network, specs: list[Spec], out_path, budget_s: float,
         options: RepairOptions, report: RepairReport, start: float,
         certificate_path: str | Path | None = None) -> None:
    domain = _domain(specs, options)
    report.localize, report.patch = options.localize, options.patch
    report.fidelity_domain = {
        "lower": [float(v) for v in domain[0]], "upper": [float(v) for v in domain[1]],
        "given": options.domain_lower is not None,
        "decision": "argmax" if options.argmax else "argmin",
        "samples": options.fidelity_samples}
    stage = network
    hidden: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if options.patch == "milp":
        stage, hidden = _escalate(network, specs, domain, options, report, start, budget_s)
    parts = [partition(stage.net, s, options.max_boxes, options.min_width) for s in specs]
    log.info("partition: %d leaf boxes", sum(p.size for p in parts))
    samples, scale = _samples(network, specs, domain, options, stage.net)
    prob = _Problem(stage, specs, parts, samples, domain, scale)
    guard = _output_guard(network.net, stage.net, domain, options)
    sets = _free_sets(network, specs, options, report, start, budget_s)
    solved = _patch_sets(prob, sets, guard, options, report, start, budget_s)
    del guard  # N x H floats, not needed through the proof
    if solved is None:
        report.status = "failed: " + report.notes[-1]
        return
    w32, b32 = solved
    _change_stats(report, network.net, {**hidden, len(network.net.layers) - 1: (w32, b32)})
    log.info("QP solved (%d solves); verifying the saved file", report.iterations)
    certs = [_certificate(prob.network.net, p) for p in prob.parts]
    tmp = save_temp(patched_layers(network, {**hidden,
                                             len(network.net.layers) - 1: (w32, b32)}),
                    out_path)
    try:
        _prove_and_publish(network, specs, tmp, out_path, domain, options, report, start,
                           budget_s, certs, certificate_path)
    finally:
        if tmp.exists():
            os.unlink(tmp)


@dataclass(frozen=True)
class _OutputGuard:
    """The fidelity samples (the report's): the last hidden layer of the network the
    last-layer patch applies to (``stage``: the original, or the one after a hidden-layer
    patch) and the original network's outputs, whose max |y| is the output scale."""

    h: np.ndarray  # (N, H) last hidden layer of the stage network
    y: np.ndarray  # (N, n_out) the original network's outputs
    scale: float

    def ratio(self, weight: np.ndarray, bias: np.ndarray) -> float:
        """Largest |output with last layer (weight, bias) - original output| over the
        samples, divided by the output scale (inf for a NaN: it counts as too large)."""
        change = np.abs(self.h @ weight.T + bias - self.y)
        ratio = float(change.max() / self.scale) if change.size else 0.0
        return math.inf if math.isnan(ratio) else ratio


def _output_guard(original: AffineReluNet, stage: AffineReluNet, domain,
                  options: RepairOptions) -> _OutputGuard:
    x = _fidelity_samples(domain, options)
    y = original.forward(x)  # one N x H array at a time, not the original's too
    h, _ = hidden_and_output(stage, x)
    return _OutputGuard(h, y, float(max(np.abs(y).max(initial=0.0), 1e-12)))


def _patch_sets(prob: _Problem, sets: list[FreeSet], guard: _OutputGuard,
                options: RepairOptions, report: RepairReport, start: float,
                budget_s: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Try the parameter sets in order (localised ones first, all parameters last);
    returns the float32-exact (W, b) of the first set that solves every box row. A
    localised set's patch that changes an output by more than ``max_output_change_ratio``
    times the output scale is refused and the wider sets are tried; if none of them gives
    an accepted patch (the last set's is accepted unless a refused one changed outputs
    less), the least-changing refused patch is taken after all, with a note. With a
    hidden-layer patch that alone exceeds the ratio nothing is refused."""
    last = prob.network.net.layers[-1]
    limit = options.max_output_change_ratio
    before = guard.ratio(last.weight, last.bias)  # the hidden-layer patch alone
    refuse = before <= limit
    if not refuse and len(sets) > 1:
        report.notes.append(f"the hidden-layer patch alone changes an output by "
                            f"{before:.3g}x the output scale: no patch refused for size")
    fallback = None  # (ratio, (W, b), parts, set, report fields) of the least-changing
    for index, free in enumerate(sets):
        prob.free = free.mask
        prob.conflicts = []
        last_try = index == len(sets) - 1
        # each parameter set gets an equal share of the time left (the last one all of
        # it): a search on a localised set must not use up the budget of the sets after
        set_start, set_budget = time.monotonic(), _deadline_left(start, budget_s)
        if not last_try:
            set_budget /= len(sets) - index
        if fallback is not None:  # a usable patch is in hand: keep time to prove it
            set_budget *= 1.0 - FALLBACK_PROOF_SHARE
        parts_before = list(prob.parts)
        solved = _solve(prob, options, report, set_start, set_budget, options.split_rounds,
                        give_up_on_stall=not last_try)
        if solved is None:
            if not last_try:  # the next set starts from the same boxes
                prob.parts = parts_before
                report.notes.append(f"{free.label}: not enough, escalating")
            continue
        ratio = guard.ratio(*solved)
        if ratio > limit and refuse and not last_try:
            report.notes.append(f"{free.label}: the patch changes an output by "
                                f"{ratio:.3g}x the output scale (more than {limit:g}x): "
                                f"refused, escalating")
            if fallback is None or ratio < fallback[0]:
                fallback = (ratio, solved, list(prob.parts), free, _qp_fields(report))
            prob.parts = parts_before
            continue
        if ratio > limit and fallback is not None and fallback[0] < ratio:
            break  # the last set changes outputs even more than a refused patch
        return _taken(report, free, solved, ratio, limit)
    if fallback is None:
        return None
    ratio, solved, prob.parts, free, fields = fallback
    prob.free = free.mask
    for name, value in fields.items():  # the report describes the patch that is used
        setattr(report, name, value)
    report.notes.append(f"no wider set gave an accepted patch: the least-changing refused "
                        f"one ({free.label}) is taken")
    return _taken(report, free, solved, ratio, limit)


# Once a localised patch has been refused (it is used if no wider set gives an accepted
# one), the wider sets leave this share of the time left for its proof: without it the
# last set could run to the deadline and leave the fallback the 5 s minimum.
FALLBACK_PROOF_SHARE = 0.25

QP_FIELDS = ("box_rows", "sample_rows", "leaf_boxes", "eps", "fix_margin")  # see _record


def _qp_fields(report: RepairReport) -> dict:
    return {name: getattr(report, name) for name in QP_FIELDS}


def _taken(report: RepairReport, free: FreeSet,
           solved: tuple[np.ndarray, np.ndarray], ratio: float, limit: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """Record the parameter set whose patch is used; warn when it moves outputs far."""
    report.free_set = free.label
    report.patched_neurons = list(free.neurons)
    if ratio > limit:
        note = (f"{free.label}: the patch changes an output by {ratio:.3g}x the output "
                f"scale (more than {limit:g}x)")
        report.notes.append(note)
        log.warning("%s", note)
    return solved


def _certificate(stage: AffineReluNet, part: Partition) -> Certificate:
    """The partition as a proof certificate: its boxes, the last layer it was built on
    as the reference, and its bounds (reused only if the saved file's hidden layers are
    exactly ``stage``'s)."""
    last = stage.layers[-1]
    cached = CachedBounds(part.hl, part.hu, part.row_lb,
                          tuple((l.weight, l.bias) for l in stage.layers[:-1]))
    return Certificate(part.lower, part.upper, part.case, last.weight, last.bias, cached,
                       digest=hidden_digest(stage))


def _escalate(network: Network, specs: list[Spec], domain, options: RepairOptions,
              report: RepairReport, start: float, budget_s: float
              ) -> tuple[Network, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """``--patch milp``: patch the incoming weights of a few last-hidden neurons on points
    (repair/escalate.py), rounded to float32 so that the proof is built on exactly the
    network that is saved. Returns the network to continue from and the changed layer
    (nothing when the MILP finds no patch: the last-layer QP then works alone)."""
    from verirepair.repair.escalate import EscalateOptions, hidden_patch
    from verirepair.repair.milp import patched_net

    targets = [s for s, p in zip(specs, report.properties)
               if p.role == "target" and p.before == Verdict.VIOLATED.value]
    method = options.localize if options.localize != "none" else "gradient"
    seconds = min(options.milp_seconds, _deadline_left(start, budget_s) / 4)
    t0 = time.monotonic()
    order = ranked_neurons(network, targets, method, options.seed, seconds / 2, 0.0)
    _, y = hidden_and_output(network.net, sample_boxes(np.random.default_rng(options.seed),
                                                       [domain], [2000]))
    patch, neurons = hidden_patch(
        network, targets, order, domain, float(max(np.abs(y).max(), 1e-6)),
        EscalateOptions(neurons=options.milp_neurons, time_limit=seconds,
                        argmax=options.argmax, seed=options.seed))
    index = len(network.net.layers) - 2
    report.hidden_patch = {"layer": index, "neurons": list(neurons), "localize": method,
                           "seconds": round(time.monotonic() - t0, 3),
                           "status": patch.status if patch else "no patch"}
    if patch is None:
        report.notes.append("hidden-layer MILP found no patch; last layer only")
        return network, {}
    w = patch.weight.astype(np.float32).astype(np.float64)
    b = patch.bias.astype(np.float32).astype(np.float64)
    stage = patched_net(network.net, replace(patch, weight=w, bias=b))
    report.hidden_patch["objective"] = round(float(patch.objective), 6)
    # the model too: a Network's lowering and its file must never disagree (a check on
    # it confirms counterexamples in onnxruntime on ``model``)
    return replace(network, net=stage, model=patched_layers(network, {index: (w, b)}),
                   digest=""), \
        {index: (w, b)}


def _prove_and_publish(network: Network, specs: list[Spec], tmp: Path, out_path,
                       domain, options: RepairOptions, report: RepairReport, start: float,
                       budget_s: float, certs: list[Certificate],
                       certificate_path: str | Path | None = None) -> None:
    """Prove every property on the saved file ``tmp``; only then the certificates are
    written (a failed write publishes nothing) and ``tmp`` renamed to ``out_path``."""
    repaired = load_network(tmp)
    results = _verify_all(repaired, specs, max(_deadline_left(start, budget_s), 5.0), certs)
    for prop, (verdict, seconds, engine) in zip(report.properties, results):
        prop.after, prop.seconds, prop.engine = verdict.value, round(seconds, 3), engine
    report.agreement, report.max_output_change, report.output_scale = _fidelity(
        network.net, repaired.net, domain, options)
    failed = [p.path for p in report.properties if p.after != Verdict.HOLDS.value]
    if failed:
        report.status = "failed: not proven on the saved file: " + ", ".join(failed)
        return
    if options.cross_check and not _cross_check(repaired, specs, options.cross_check,
                                                report, start, budget_s):
        return
    if certificate_path is not None:
        _save_certificates(certificate_path, {spec_key(p.path): c for p, c in
                                              zip(report.properties, certs)})
    try:
        os.replace(tmp, out_path)
    except OSError as exc:
        raise InputFileError(f"{out_path}: cannot write the model: "
                             f"{exc.strerror or exc}") from None
    report.output = str(out_path)
    report.status = "proven"


def _cross_check(repaired: Network, specs: list[Spec], engine: str, report: RepairReport,
                 start: float, budget_s: float) -> bool:
    """Second proof of every property by ``engine``; False (status set) when it finds a
    counterexample to a property our engine proved: that is a bug in one of them, and
    nothing is published; so is z3's exact real-arithmetic counterexample (an UNKNOWN
    with a witness). Other unknown/timeout answers are recorded and do not block."""
    per = max(_deadline_left(start, budget_s) / max(len(specs), 1), 5.0)
    for prop, spec in zip(report.properties, specs):
        t0 = time.monotonic()
        result = cross_check(repaired, spec, engine, per)
        prop.cross_check = f"{engine}: {result.verdict.value}"
        prop.cross_check_seconds = round(time.monotonic() - t0, 3)
        if result.verdict is Verdict.VIOLATED or result.witness is not None:
            what = ("a counterexample" if result.counterexample is not None else
                    "an exact real-arithmetic counterexample")
            report.status = (f"failed: {engine} found {what} to {prop.path} that bab "
                             f"proved; this is a bug, please report it")
            return False
    return True
