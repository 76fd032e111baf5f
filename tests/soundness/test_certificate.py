"""Proof certificates (verify/certificate.py): exact coverage, soundness against z3, files.

A certificate is a hint, never trusted: whatever its boxes and reference last layer say,
``check_certificate(...).holds`` may be True only when the property holds on the checked
network. The backbone (:func:`test_certificate_never_claims_a_violated_property`) checks
that against the exact z3 encoding (real arithmetic, no rounding) on many seeded tiny
networks whose last layer differs from the certificate's reference by small and large
amounts, with and without cached bounds. The remaining tests pin down the exact coverage
check, the rounding term of the bound, cached-bound validity, the hand-over of open boxes
to branch and bound, and the certificate file format.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import pytest

from nets import (corners, export_and_load, random_box, random_net, random_spec,
                  sample_box, spec_of)
from verirepair.errors import InputFileError, MismatchError
from verirepair.net_types import Affine, AffineReluNet
from verirepair.repair.partition import Partition, partition
from verirepair.spec_types import Box, Halfspaces, Spec, SpecCase
from verirepair.verify.certificate import (CachedBounds, Certificate, check_certificate,
                                           covers, hidden_digest, load_certificate,
                                           open_spec, save_certificates, spec_key, validate,
                                           verify_with_certificate)
from verirepair.verify.confirm import satisfied_disjunct
from verirepair.verify.engine import VerifyOptions, verify
from verirepair.verify.types import Counterexample, Result, Verdict
from verirepair.verify.z3_engine import encode, exact_unsafe, solve

Z3_TIMEOUT = 30.0
BAB_TIMEOUT = 20.0
SEEDS = range(100)
# last-layer perturbation scales of the checked networks (0: the reference itself)
VARIANTS = {"reference": 0.0, "small": 1e-3, "medium": 3e-2, "large": 0.3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- helpers

def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def with_last(net: AffineReluNet, weight: np.ndarray, bias: np.ndarray) -> AffineReluNet:
    return AffineReluNet(net.layers[:-1] + (Affine(weight, bias),))


def certificate_of(net: AffineReluNet, part: Partition, cached: bool = False,
                   keep: np.ndarray | None = None) -> Certificate:
    """The partition's leaves (``keep`` selects some) with ``net``'s last layer as the
    reference, and optionally the partition's bounds as cached bounds."""
    keep = np.ones(part.size, dtype=bool) if keep is None else keep
    cache = None
    if cached:
        cache = CachedBounds(hl=part.hl[keep], hu=part.hu[keep], row_lb=part.row_lb[keep],
                             hidden=tuple((l.weight.copy(), l.bias.copy())
                                          for l in net.layers[:-1]))
    last = net.layers[-1]
    return Certificate(lower=part.lower[keep], upper=part.upper[keep], case=part.case[keep],
                       ref_weight=last.weight.copy(), ref_bias=last.bias.copy(), cached=cache)


@dataclass(frozen=True)
class Exact:
    """z3 over the reals: "holds", "violated" (with the case and the exact input) or
    "undecided"."""

    status: str
    case: int | None = None
    x: tuple[Fraction, ...] | None = None


def exact_verdict(net: AffineReluNet, spec: Spec) -> Exact:
    undecided = False
    for k, case in enumerate(spec.cases):
        status, x = solve(encode(net, case), Z3_TIMEOUT)
        if status == "sat":
            return Exact("violated", k, x)
        undecided |= status != "unsat"
    return Exact("undecided" if undecided else "holds")


def boxes_containing(lower: np.ndarray, upper: np.ndarray, x) -> np.ndarray:
    """(N,) bool: the closed boxes that contain the exact point ``x`` (Fractions)."""
    return np.array([all(Fraction(float(lo)) <= v <= Fraction(float(hi))
                         for lo, hi, v in zip(lower[i], upper[i], x))
                     for i in range(lower.shape[0])], dtype=bool)


@dataclass(frozen=True)
class Instance:
    seed: int
    net: AffineReluNet  # the reference network (its partition is the certificate)
    spec: Spec
    part: Partition


@functools.lru_cache(maxsize=None)
def instance(seed: int) -> Instance:
    """2-3 inputs, 1-2 hidden layers of 3-6 neurons, 2-3 outputs; a random spec whose
    thresholds sit around the sampled minimum (about half hold on the reference)."""
    rng = np.random.default_rng(seed)
    n_in, n_out = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    hidden = [int(rng.integers(3, 7)) for _ in range(int(rng.integers(1, 3)))]
    net = random_net(rng, n_in, n_out, hidden)
    spec = random_spec(rng, net)
    return Instance(seed, net, spec, partition(net, spec, max_boxes=256, min_width=1 / 32))


@functools.lru_cache(maxsize=None)
def checked_net(seed: int, variant: str) -> AffineReluNet:
    """The reference's hidden layers with a perturbed (float32-exact) last layer."""
    net = instance(seed).net
    scale = VARIANTS[variant]
    rng = np.random.default_rng([seed, list(VARIANTS).index(variant)])
    last = net.layers[-1]
    return with_last(net, f32(last.weight + scale * rng.standard_normal(last.weight.shape)),
                     f32(last.bias + scale * rng.standard_normal(last.bias.shape)))


@functools.lru_cache(maxsize=None)
def exact_of(seed: int, variant: str) -> Exact:
    return exact_verdict(checked_net(seed, variant), instance(seed).spec)


def assert_sound(check, cert: Certificate, exact: Exact, where: str) -> None:
    """holds => z3 proves the spec; no box marked safe contains z3's counterexample."""
    if check.holds:
        assert exact.status == "holds", f"{where}: certificate holds, z3 says {exact.status}"
    if exact.status == "violated":
        mine = cert.case == exact.case
        inside = np.zeros(cert.size, dtype=bool)
        inside[mine] = boxes_containing(cert.lower[mine], cert.upper[mine], exact.x)
        assert not (inside & check.safe).any(), (
            f"{where}: box {np.nonzero(inside & check.safe)[0]} is certified safe but "
            f"contains the counterexample {[float(v) for v in exact.x]}")


def recording(run_bab=None):
    """A run_bab that records its specs and delegates (to a HOLDS stub by default)."""
    calls: list[Spec] = []

    def run(network, spec, timeout):
        calls.append(spec)
        return run_bab(network, spec, timeout) if run_bab else Result(Verdict.HOLDS)
    return run, calls


def real_bab(network, spec, timeout) -> Result:
    return verify(network, spec, VerifyOptions(timeout=timeout, engine="bab"))


def never_called(network, spec, timeout) -> Result:
    raise AssertionError("run_bab called although the certificate proves the spec")


def split_heavy_partition(seed: int, n_in: int, max_boxes: int = 200) -> tuple[Spec, Partition]:
    """A partition that splits a lot: thresholds inside the sampled range (violated), so
    CROWN never proves a leaf and bisection runs to the box limit; two cases."""
    rng = np.random.default_rng(seed)
    net = random_net(rng, n_in, 2, [5])
    cases = []
    for _ in range(2):
        box = random_box(rng, n_in, zero_width_prob=0.0, tiny_prob=0.0)
        y = net.forward(sample_box(rng, box, 256))
        c = np.array([[1.0, -1.0]])
        cases.append(SpecCase(box, (Halfspaces(c, np.array([np.median(y @ c[0])])),)))
    spec = spec_of(net, *cases)
    return spec, partition(net, spec, max_boxes=max_boxes, min_width=1 / 64)


def case_leaves(spec: Spec, part: Partition, k: int):
    mine = part.case == k
    return spec.cases[k].box, part.lower[mine], part.upper[mine]


def covered(box: Box, lower: np.ndarray, upper: np.ndarray) -> bool:
    return covers(box.lower, box.upper, lower, upper)[0]


# --------------------------------------------------------------------------- 1. coverage

@pytest.mark.parametrize("seed,n_in", [(1, 2), (2, 3), (3, 3)])
def test_partition_leaves_cover_their_case_box(seed: int, n_in: int) -> None:
    spec, part = split_heavy_partition(seed, n_in)
    rng = np.random.default_rng(seed)
    for k in range(len(spec.cases)):
        box, lo, hi = case_leaves(spec, part, k)
        assert lo.shape[0] > 50, "the partition should split a lot"
        assert covers(box.lower, box.upper, lo, hi) == (True, "")
        # shuffled and with duplicates
        order = np.concatenate([rng.permutation(lo.shape[0]),
                                rng.integers(0, lo.shape[0], 20)])
        assert covered(box, lo[order], hi[order])
        # leaves that stick out of the case box (and the leaves of the other case mixed in)
        grow = rng.random(lo.shape) < 0.3
        out_lo = np.where(grow, lo - rng.uniform(0, 1, lo.shape), lo)
        out_hi = np.where(grow, hi + rng.uniform(0, 1, hi.shape), hi)
        other = part.case != k
        assert covered(box, np.vstack([out_lo, part.lower[other]]),
                       np.vstack([out_hi, part.upper[other]]))
        # the other case's leaves alone do not cover this case's box (different boxes)
        assert not covered(box, part.lower[other], part.upper[other])


@pytest.mark.parametrize("seed,n_in", [(1, 2), (2, 3)])
def test_removing_any_single_leaf_leaves_a_hole(seed: int, n_in: int) -> None:
    spec, part = split_heavy_partition(seed, n_in)
    rng = np.random.default_rng(100 + seed)
    box, lo, hi = case_leaves(spec, part, 0)
    n = lo.shape[0]
    for drop in {0, n - 1, *rng.integers(0, n, 12).tolist()}:
        keep = np.arange(n) != drop
        ok, reason = covers(box.lower, box.upper, lo[keep], hi[keep])
        assert not ok and "not covered" in reason, f"leaf {drop} of {n} removed"


@pytest.mark.parametrize("seed,n_in", [(1, 2), (2, 3)])
def test_one_ulp_gaps_are_holes_and_one_ulp_overlaps_are_not(seed: int, n_in: int) -> None:
    spec, part = split_heavy_partition(seed, n_in)
    rng = np.random.default_rng(200 + seed)
    box, lo, hi = case_leaves(spec, part, 0)
    for _ in range(12):
        i, j = int(rng.integers(lo.shape[0])), int(rng.integers(n_in))
        side = rng.integers(2)
        lo2, hi2 = lo.copy(), hi.copy()
        if side:  # upper face one ulp down
            hi2[i, j] = np.nextafter(hi[i, j], -np.inf)
        else:  # lower face one ulp up
            lo2[i, j] = np.nextafter(lo[i, j], np.inf)
        assert not covered(box, lo2, hi2), f"leaf {i} dim {j} side {side}"
        # the opposite nudge makes the leaf overlap its neighbour (or stick out): covered
        lo3, hi3 = lo.copy(), hi.copy()
        if side:
            hi3[i, j] = np.nextafter(hi[i, j], np.inf)
        else:
            lo3[i, j] = np.nextafter(lo[i, j], -np.inf)
        assert covered(box, lo3, hi3)


def test_moving_an_interior_face_by_one_ulp_on_both_sides_stays_covered() -> None:
    spec, part = split_heavy_partition(1, 2)
    box, lo, hi = case_leaves(spec, part, 0)
    rng = np.random.default_rng(5)
    moved = 0
    for _ in range(10):
        j = int(rng.integers(2))
        interior = np.unique(hi[:, j][hi[:, j] < box.upper[j]])
        m = float(rng.choice(interior))
        m2 = np.nextafter(m, np.inf)
        assert not np.isin(m2, np.concatenate([lo[:, j], hi[:, j]]))
        lo2, hi2 = lo.copy(), hi.copy()
        lo2[lo[:, j] == m, j] = m2
        hi2[hi[:, j] == m, j] = m2
        assert covered(box, lo2, hi2), f"face {m!r} of dim {j} moved to {m2!r}"
        # moving only the boxes below the face opens a one-ulp slab
        hi3 = hi.copy()
        hi3[hi[:, j] == m, j] = np.nextafter(m, -np.inf)
        assert not covered(box, lo, hi3)
        moved += 1
    assert moved == 10


def test_zero_width_dimensions() -> None:
    v = 0.3
    box = Box(lower=np.array([0.0, v, -1.0]), upper=np.array([1.0, v, 1.0]))
    up, down = np.nextafter(v, np.inf), np.nextafter(v, -np.inf)

    def tiling(flat_lo: float, flat_hi: float) -> tuple[np.ndarray, np.ndarray]:
        """Four leaves over dims 0 and 2, all with [flat_lo, flat_hi] in dim 1."""
        lo, hi = [], []
        for a, b in itertools.product([(0.0, 0.5), (0.5, 1.0)], [(-1.0, 0.25), (0.25, 1.0)]):
            lo.append([a[0], flat_lo, b[0]])
            hi.append([a[1], flat_hi, b[1]])
        return np.array(lo), np.array(hi)

    for flat in [(v, v), (0.0, 1.0), (v, 1.0), (-5.0, v), (down, up)]:
        assert covered(box, *tiling(*flat)), flat
    for flat in [(up, 1.0), (-5.0, down), (0.31, 0.4)]:
        ok, reason = covers(box.lower, box.upper, *tiling(*flat))
        assert not ok and "not covered" in reason, flat
    # leaves that contain the flat coordinate on different sides still cover together
    lo, hi = tiling(v, v)
    lo[:2, 1], hi[:2, 1] = v, 1.0  # two leaves above, two below, all touching v
    lo[2:, 1], hi[2:, 1] = -1.0, v
    assert covered(box, lo, hi)
    # ... but one leaf that misses v by one ulp is a hole
    lo[3, 1] = up
    hi[3, 1] = 1.0
    assert not covered(box, lo, hi)
    # a point box
    point = Box(lower=np.array([v, v]), upper=np.array([v, v]))
    assert covered(point, np.array([[v, 0.0]]), np.array([[1.0, v]]))
    assert covered(point, np.array([[0.0, 0.0], [v, v]]), np.array([[down, 1.0], [v, v]]))
    assert not covered(point, np.array([[0.0, 0.0], [up, 0.0]]), np.array([[down, 1.0],
                                                                          [1.0, 1.0]]))
    assert not covered(point, np.zeros((0, 2)), np.zeros((0, 2)))


def test_zero_width_case_box_partition() -> None:
    """The partition of a case box that is flat in one dimension covers it; the case box
    moved by one ulp in its flat dimension is not covered."""
    rng = np.random.default_rng(9)
    net = random_net(rng, 3, 2, [5])
    v = float(np.float32(0.2))
    box = Box(lower=np.array([-1.0, v, -0.5]), upper=np.array([1.0, v, 0.5]))
    y = net.forward(sample_box(rng, box, 256))
    case = SpecCase(box, (Halfspaces(np.array([[1.0, -1.0]]),
                                     np.array([np.median(y[:, 0] - y[:, 1])])),))
    part = partition(net, spec_of(net, case), max_boxes=100, min_width=1 / 64)
    assert part.size > 20 and np.all(part.lower[:, 1] == v) and np.all(part.upper[:, 1] == v)
    assert covered(box, part.lower, part.upper)
    for w in (np.nextafter(v, np.inf), np.nextafter(v, -np.inf)):
        moved = Box(lower=np.array([-1.0, w, -0.5]), upper=np.array([1.0, w, 0.5]))
        assert not covered(moved, part.lower, part.upper)


def random_grid_boxes(rng: np.random.Generator, dims: int):
    """Random rectangles of grid cells over a random grid; some cells left out."""
    shape = tuple(int(s) for s in rng.integers(1, 6, dims))
    present = rng.random(shape) >= rng.choice([0.0, 0.05, 0.2, 0.4])
    uncovered = present.copy()
    boxes = []
    while uncovered.any():
        cells = np.argwhere(uncovered)
        lo = cells[rng.integers(len(cells))].copy()
        hi = lo + 1
        for _ in range(int(rng.integers(0, 8))):  # grow over present cells only
            j, step = int(rng.integers(dims)), int(rng.choice([-1, 1]))
            lo2, hi2 = lo.copy(), hi.copy()
            if step < 0:
                lo2[j] -= 1
            else:
                hi2[j] += 1
            if lo2[j] >= 0 and hi2[j] <= shape[j] and present[tuple(
                    slice(a, b) for a, b in zip(lo2, hi2))].all():
                lo, hi = lo2, hi2
        boxes.append((lo, hi))
        uncovered[tuple(slice(a, b) for a, b in zip(lo, hi))] = False
    for _ in range(int(rng.integers(0, 3))):  # extra overlapping boxes, maybe outside
        lo = rng.integers(-1, max(shape), dims)
        boxes.append((lo, lo + rng.integers(1, 3, dims)))
    order = rng.permutation(len(boxes))
    return (shape, np.array([boxes[i][0] for i in order]).reshape(-1, dims),
            np.array([boxes[i][1] for i in order]).reshape(-1, dims))


def test_coverage_matches_brute_force_on_a_grid() -> None:
    rng = np.random.default_rng(11)
    outcomes = Counter()
    for trial in range(400):
        dims = int(rng.choice([2, 3]))
        shape, lo, hi = random_grid_boxes(rng, dims)
        # case box: a random sub-rectangle of the grid (integer corners)
        c_lo = np.array([rng.integers(0, s) for s in shape])
        c_hi = np.array([rng.integers(a + 1, s + 1) for a, s in zip(c_lo, shape)])
        centres = np.array(list(itertools.product(*[np.arange(a, b) + 0.5
                                                    for a, b in zip(c_lo, c_hi)])))
        inside = ((centres[:, None, :] >= lo[None]) & (centres[:, None, :] <= hi[None]))
        expected = bool(inside.all(axis=2).any(axis=1).all())
        # a monotone map to non-integer floats keeps equal faces equal
        scale, offset = rng.choice([1.0, 0.1, 1 / 3, 7.3], dims), rng.uniform(-2, 2, dims)
        f = lambda a: offset + scale * a  # noqa: E731
        got = covers(f(c_lo), f(c_hi), f(lo), f(hi))[0]
        assert got == expected, (f"trial {trial}: covers says {got}, grid says {expected}\n"
                                 f"case {c_lo}..{c_hi}\nboxes {lo.tolist()} {hi.tolist()}")
        outcomes[expected] += 1
    print(f"\ngrid outcomes: {dict(outcomes)}")
    assert outcomes[True] > 100 and outcomes[False] > 50, outcomes


def test_coverage_gives_up_with_false_at_the_node_limit() -> None:
    box = Box(lower=np.zeros(2), upper=np.ones(2))
    lo, hi = np.array([[0.0, 0.0], [0.5, 0.0]]), np.array([[0.5, 1.0], [1.0, 1.0]])
    assert covers(box.lower, box.upper, lo, hi) == (True, "")
    ok, reason = covers(box.lower, box.upper, lo, hi, node_limit=1)
    assert not ok and "gave up" in reason


def test_boxes_count_only_for_their_own_case() -> None:
    """Two cases with the same box: case 0's box does not cover case 1."""
    net, spec, cert = two_case_setup()
    only_case0 = replace(cert, lower=cert.lower[:1], upper=cert.upper[:1], case=cert.case[:1])
    check = check_certificate(net, spec, only_case0)
    assert not check.covered and not check.holds and check.reason.startswith("case 1")
    relabelled = replace(cert, case=np.zeros(cert.size, dtype=np.int64))
    assert not check_certificate(net, spec, relabelled).covered


# --------------------------------------------------------------------------- 2. soundness

@pytest.mark.parametrize("cached", [False, True], ids=["recomputed", "cached"])
def test_certificate_never_claims_a_violated_property(cached: bool) -> None:
    """The reference network's partition as a certificate for networks that share its
    hidden layers: ``holds`` only where z3 proves the spec, never a certified-safe box
    around z3's counterexample; and the certificate proves a fair share."""
    tally: Counter = Counter()
    for seed in SEEDS:
        inst = instance(seed)
        cert = certificate_of(inst.net, inst.part, cached=cached)
        for variant in VARIANTS:
            net = checked_net(seed, variant)
            exact = exact_of(seed, variant)
            check = check_certificate(net, inst.spec, cert)
            assert check.covered, f"seed {seed}: the partition must cover ({check.reason})"
            assert_sound(check, cert, exact, f"seed {seed} {variant} cached={cached}")
            tally[(variant, check.holds, exact.status)] += 1
    total = sum(tally.values())
    held = sum(n for (_, h, _), n in tally.items() if h)
    violated = sum(n for (_, _, z), n in tally.items() if z == "violated")
    print(f"\ncached={cached}: {held} of {total} held by certificate (all z3-confirmed), "
          f"{violated} violated (z3); {dict(sorted(tally.items()))}")
    assert held >= 0.25 * total, tally
    assert violated >= 0.25 * total, tally  # the perturbations do break the property
    for variant in VARIANTS:  # every kind of checked network gets proofs
        assert sum(n for (v, h, _), n in tally.items() if v == variant and h) >= 5, tally


def test_unrelated_reference_layers_are_not_trusted() -> None:
    """A certificate whose reference last layer has nothing to do with the network (random,
    or huge enough to overflow) may prove less, but never a violated property."""
    held = 0
    for seed in list(SEEDS)[:30]:
        inst = instance(seed)
        rng = np.random.default_rng([seed, 99])
        last = inst.net.layers[-1]
        for scale in (1.0, 1e6, 1e300):
            cert = replace(certificate_of(inst.net, inst.part),
                           ref_weight=scale * rng.standard_normal(last.weight.shape),
                           ref_bias=scale * rng.standard_normal(last.bias.shape))
            for variant in ("reference", "medium"):
                check = check_certificate(checked_net(seed, variant), inst.spec, cert)
                assert_sound(check, cert, exact_of(seed, variant),
                             f"seed {seed} {variant} reference scale {scale}")
                held += check.holds
    assert held >= 10  # the interval bound still proves some


def round_to(q: Fraction, up: bool) -> float:
    """The float64 nearest to ``q`` on the given side (the smallest >= q, or largest <=)."""
    f = float(q)
    if up and Fraction(f) < q:
        f = float(np.nextafter(f, np.inf))
    if not up and Fraction(f) > q:
        f = float(np.nextafter(f, -np.inf))
    return f


def exact_dot(c: np.ndarray, v: np.ndarray) -> Fraction:
    return sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(c, v)), Fraction(0))


def constant_net(b: np.ndarray, n_in: int = 2, hidden: int = 3) -> AffineReluNet:
    """y = b for every input: a zero hidden layer (h = 0) and a zero last layer."""
    return AffineReluNet((Affine(np.zeros((hidden, n_in)), np.zeros(hidden)),
                          Affine(np.zeros((b.shape[0], hidden)), b)))


def everywhere_unsafe_cases(net: AffineReluNet, rows: list[np.ndarray]) -> list[SpecCase]:
    """One case per row c on [0, 1]^2 with d the smallest float64 >= the exact c.b of the
    constant network: c.y <= d at every input, in exact arithmetic."""
    b = net.layers[-1].bias
    cases = [SpecCase(Box(np.zeros(2), np.ones(2)),
                      (Halfspaces(c[None, :], np.array([round_to(exact_dot(c, b), True)])),))
             for c in rows]
    for case in cases:  # sanity
        assert exact_unsafe(net, case, (Fraction(1, 2), Fraction(1, 3)))
    return cases


def one_box_per_case(n: int, ref_bias: np.ndarray, cached: CachedBounds | None = None
                     ) -> Certificate:
    return Certificate(np.zeros((n, 2)), np.ones((n, 2)), np.arange(n),
                       ref_weight=np.zeros((ref_bias.shape[0], 3)), ref_bias=ref_bias,
                       cached=cached)


def test_rounding_of_the_interval_bound_is_accounted_for() -> None:
    """Constant output y = b, reference = the network: c @ b - d evaluated in float64 is
    positive for many rows (cancellation) although c.b <= d exactly. No box may be safe."""
    rng = np.random.default_rng(21)
    b = np.array([1.0 + 3 * 2.0 ** -25, 1.0, 1 / 3, -0.7])
    net = constant_net(b)
    rows = [r * np.array([1.0, -1.0, *(2.0 ** -24 * rng.standard_normal(2))])
            for r in rng.uniform(0.5, 2.0, 60)]
    cases = everywhere_unsafe_cases(net, rows)
    fooled = sum(float(c @ b) - case.unsafe[0].rhs[0] > 0 for c, case in zip(rows, cases))
    assert fooled >= 10  # a checker without the rounding term is fooled on these
    check = check_certificate(net, spec_of(net, *cases), one_box_per_case(len(cases), b))
    assert check.covered and not check.safe.any(), np.nonzero(check.safe)[0]


def test_rounding_of_the_change_bound_is_accounted_for() -> None:
    """Cached bounds that are sound and tight (base = exact c.b0 - d rounded down; h = 0
    exactly) for a reference y0 = b0 with two huge equal entries; the network is y = b.
    base + c.(b - b0) in float64 is positive for many rows (b - b0 rounds) although
    c.b <= d exactly. No box may be safe."""
    fooled = 0
    for seed in range(5):
        rng = np.random.default_rng([22, seed])
        big = 1e8 * rng.uniform(1, 2)
        b0 = np.array([big, big, *rng.standard_normal(2)])
        net = constant_net(rng.standard_normal(4))
        b = net.layers[-1].bias
        rows = [np.array([1.0, -1.0, *rng.standard_normal(2)]) for _ in range(12)]
        cases = everywhere_unsafe_cases(net, rows)
        base = np.array([round_to(exact_dot(c, b0) - Fraction(case.unsafe[0].rhs[0]), False)
                         for c, case in zip(rows, cases)])
        fooled += int(np.sum(base + np.array([c @ (b - b0) for c in rows]) > 0))
        n = len(cases)
        cache = CachedBounds(hl=np.zeros((n, 3)), hu=np.zeros((n, 3)), row_lb=base[:, None],
                             hidden=((np.zeros((3, 2)), np.zeros(3)),))
        check = check_certificate(net, spec_of(net, *cases), one_box_per_case(n, b0, cache))
        assert check.covered and not check.safe.any(), (seed, np.nonzero(check.safe)[0])
    assert fooled >= 10


# --------------------------------------------------------------------------- 3. cached bounds

def violated_instance(seed: int = 31) -> tuple[AffineReluNet, Spec, Partition]:
    """A network and a spec violated at sampled points (threshold at the sampled median)."""
    rng = np.random.default_rng(seed)
    net = random_net(rng, 2, 2, [4, 4])
    box = random_box(rng, 2, zero_width_prob=0.0, tiny_prob=0.0, float32_points=True)
    y = net.forward(sample_box(rng, box, 256))
    rows = np.array([[1.0, -1.0]])
    spec = spec_of(net, SpecCase(box, (Halfspaces(rows, np.array([np.median(y @ rows[0])])),)))
    return net, spec, partition(net, spec, max_boxes=16, min_width=1 / 4)


def hidden_changed(net: AffineReluNet, how: str) -> AffineReluNet:
    layers = list(net.layers)
    first = layers[0]
    if how == "weight":
        w = first.weight.copy()
        w[0, 0] = float(np.float32(w[0, 0] + 2.0 ** -10))
        layers[0] = Affine(w, first.bias)
    elif how == "weight-ulp":
        w = first.weight.copy()
        w[1, 0] = np.nextafter(w[1, 0], np.inf)
        layers[0] = Affine(w, first.bias)
    elif how == "bias":
        b = first.bias.copy()
        b[-1] = float(np.float32(b[-1] - 2.0 ** -8))
        layers[0] = Affine(first.weight, b)
    elif how == "extra-layer":  # an identity-like extra hidden layer (outputs unchanged)
        h = first.n_out
        layers.insert(1, Affine(np.eye(h), np.zeros(h)))
    return AffineReluNet(tuple(layers))


@pytest.mark.parametrize("how", ["weight", "weight-ulp", "bias", "extra-layer"])
def test_cached_bounds_are_ignored_when_the_hidden_layers_differ(how: str) -> None:
    net, spec, part = violated_instance()
    fake = certificate_of(net, part, cached=True)
    fake = replace(fake, cached=replace(fake.cached, row_lb=np.full_like(part.row_lb, 1e6)))
    other = hidden_changed(net, how)
    assert exact_verdict(other, spec).status == "violated"
    check = check_certificate(other, spec, fake)
    assert not check.holds
    # exactly what the certificate gives without any cache
    plain = check_certificate(other, spec, replace(fake, cached=None))
    np.testing.assert_array_equal(check.safe, plain.safe)


def test_cached_bounds_are_trusted_when_the_hidden_layers_are_equal() -> None:
    """In-process use only: equal (not identical) hidden layers make the cache count, so
    fake optimistic bounds 'prove' a violated spec. Files never carry the cache."""
    net, spec, part = violated_instance()
    assert exact_verdict(net, spec).status == "violated"
    fake = certificate_of(net, part, cached=True)
    assert all(w is not l.weight for (w, _), l in zip(fake.cached.hidden, net.layers))
    fake = replace(fake, cached=replace(fake.cached, row_lb=np.full_like(part.row_lb, 1e6)))
    assert check_certificate(net, spec, fake).holds
    assert not check_certificate(net, spec, replace(fake, cached=None)).holds
    # the honest cache is consistent with recomputation on the partition's own network
    honest = check_certificate(net, spec, certificate_of(net, part, cached=True))
    assert not honest.holds


# --------------------------------------------------------------------------- 4. sampling

def test_safe_boxes_have_no_unsafe_samples() -> None:
    rng = np.random.default_rng(4)
    checked = 0
    for seed in list(SEEDS)[:20]:
        inst = instance(seed)
        cert = certificate_of(inst.net, inst.part)
        for variant in VARIANTS:
            net = checked_net(seed, variant)
            check = check_certificate(net, inst.spec, cert)
            for i in np.nonzero(check.safe)[0]:
                box = Box(cert.lower[i], cert.upper[i])
                x = np.vstack([sample_box(rng, box, 48), corners(box)])
                case = inst.spec.cases[int(cert.case[i])]
                for y in net.forward(x):
                    assert satisfied_disjunct(case, y) is None, (
                        f"seed {seed} {variant}: safe box {i} has an unsafe output {y}")
                checked += 1
    assert checked > 1000


# --------------------------------------------------------------------------- 5. verify

def first_seed(predicate) -> int:
    return next(s for s in SEEDS if predicate(s))


def test_hole_around_a_counterexample_is_not_holds(tmp_path) -> None:
    seed = first_seed(lambda s: exact_of(s, "reference").status == "violated")
    inst, exact = instance(seed), exact_of(seed, "reference")
    mine = inst.part.case == exact.case
    around = np.zeros(inst.part.size, dtype=bool)
    around[mine] = boxes_containing(inst.part.lower[mine], inst.part.upper[mine], exact.x)
    assert around.any()
    cert = certificate_of(inst.net, inst.part, keep=~around)
    assert not check_certificate(inst.net, inst.spec, cert).covered
    network = export_and_load(inst.net, tmp_path / "net.onnx")
    run, calls = recording(real_bab)
    result = verify_with_certificate(network, inst.spec, cert, BAB_TIMEOUT, run)
    assert result.verdict is not Verdict.HOLDS
    assert result.engine == "bab" and "not covered" in result.reason
    assert len(calls) == 1 and calls[0] is inst.spec  # the whole spec, not a sub-spec


def test_complete_certificate_proves_without_branch_and_bound(tmp_path) -> None:
    seed = first_seed(lambda s: check_certificate(
        instance(s).net, instance(s).spec, certificate_of(instance(s).net, instance(s).part)
    ).holds)
    inst = instance(seed)
    assert exact_of(seed, "reference").status == "holds"
    network = export_and_load(inst.net, tmp_path / "net.onnx")
    cert = certificate_of(inst.net, inst.part)
    result = verify_with_certificate(network, inst.spec, cert, BAB_TIMEOUT, never_called)
    assert result.verdict is Verdict.HOLDS and result.engine == "certificate"
    assert result.stats.boxes == cert.size


def identity_net() -> AffineReluNet:
    """y = relu(x) - relu(-x) = x (one input, two hidden neurons)."""
    return AffineReluNet((Affine(np.array([[1.0], [-1.0]]), np.zeros(2)),
                          Affine(np.array([[1.0, -1.0]]), np.zeros(1))))


def y_at_least(t: float) -> Halfspaces:
    return Halfspaces(matrix=np.array([[-1.0]]), rhs=np.array([-t]))


def two_case_setup() -> tuple[AffineReluNet, Spec, Certificate]:
    """Case 0 holds (y >= 5 never on [-1, 1]); case 1 is violated on [0.5, 1] (y >= 0.5).
    Boxes: case 0 whole; case 1 [-1, 0] (safe), [0, 2] (open, sticks out), [5, 6]
    (outside its case box: nothing to prove)."""
    net = identity_net()
    box = Box(np.array([-1.0]), np.array([1.0]))
    spec = spec_of(net, SpecCase(box, (y_at_least(5.0),)), SpecCase(box, (y_at_least(0.5),)))
    cert = Certificate(lower=np.array([[-1.0], [-1.0], [0.0], [5.0]]),
                       upper=np.array([[1.0], [0.0], [2.0], [6.0]]),
                       case=np.array([0, 1, 1, 1]),
                       ref_weight=net.layers[-1].weight.copy(),
                       ref_bias=net.layers[-1].bias.copy())
    return net, spec, cert


def test_open_boxes_go_to_branch_and_bound_and_case_indices_map_back(tmp_path) -> None:
    net, spec, cert = two_case_setup()
    check = check_certificate(net, spec, cert)
    assert check.covered
    # [5, 6] misses its case: it needs no proof (and gets no bound)
    np.testing.assert_array_equal(check.safe, [True, True, False, True])
    sub, origin = open_spec(spec, cert, check.safe)
    assert len(sub.cases) == 1 and origin.tolist() == [1]
    network = export_and_load(net, tmp_path / "id.onnx")

    def fake(network_, sub_spec, timeout):
        calls.append(sub_spec)
        cex = Counterexample(x=np.array([0.75], dtype=np.float32),
                             y=np.array([0.75], dtype=np.float32),
                             case_index=0, disjunct_index=0)
        return Result(Verdict.VIOLATED, cex, engine="bab")
    calls: list[Spec] = []
    result = verify_with_certificate(network, spec, cert, BAB_TIMEOUT, fake)
    assert len(calls) == 1
    (case,) = calls[0].cases
    np.testing.assert_array_equal(case.box.lower, [0.0])  # [0, 2] cut to the case box
    np.testing.assert_array_equal(case.box.upper, [1.0])
    assert case.unsafe is spec.cases[1].unsafe
    assert calls[0].n_inputs == 1 and calls[0].n_outputs == 1
    assert result.verdict is Verdict.VIOLATED and result.engine == "certificate+bab"
    assert result.counterexample.case_index == 1

    # with the real branch and bound: a real counterexample, in the original case 1
    real = verify_with_certificate(network, spec, cert, BAB_TIMEOUT, real_bab)
    assert real.verdict is Verdict.VIOLATED and real.engine == "certificate+bab"
    cex = real.counterexample
    assert cex.case_index == 1 and spec.cases[1].box.contains(cex.x)
    assert satisfied_disjunct(spec.cases[1], cex.y) is not None and cex.x[0] >= 0.5

    # a stub HOLDS from branch and bound on the open boxes gives HOLDS
    run, stub_calls = recording()
    held = verify_with_certificate(network, spec, cert, BAB_TIMEOUT, run)
    assert held.verdict is Verdict.HOLDS and held.engine == "certificate+bab"
    assert len(stub_calls) == 1 and len(stub_calls[0].cases) == 1


def test_random_violated_spec_through_open_boxes(tmp_path) -> None:
    """A covering certificate on a violated instance, behind a case that holds: branch
    and bound on the open boxes finds a counterexample, reported in the original case."""
    seed = first_seed(lambda s: exact_of(s, "reference").status == "violated"
                      and instance(s).net.n_outputs >= 2)
    inst = instance(seed)
    n_out = inst.net.n_outputs
    never = Halfspaces(matrix=np.eye(n_out)[:1], rhs=np.array([-1e9]))  # y0 <= -1e9
    safe_case = SpecCase(inst.spec.cases[0].box, (never,))
    spec = replace(inst.spec, cases=(safe_case, *inst.spec.cases))
    part = inst.part
    cert = certificate_of(inst.net, part)
    cert = replace(cert, lower=np.vstack([safe_case.box.lower, cert.lower]),
                   upper=np.vstack([safe_case.box.upper, cert.upper]),
                   case=np.concatenate([[0], cert.case + 1]))
    check = check_certificate(inst.net, spec, cert)
    assert check.covered and check.safe[0] and not check.safe.all()
    network = export_and_load(inst.net, tmp_path / "net.onnx")
    run, calls = recording(real_bab)
    result = verify_with_certificate(network, spec, cert, BAB_TIMEOUT, run)
    assert result.verdict is Verdict.VIOLATED and result.engine == "certificate+bab"
    assert len(calls[0].cases) == int((~check.safe).sum())
    cex = result.counterexample
    assert cex.case_index >= 1
    case = spec.cases[cex.case_index]
    assert case.box.contains(cex.x) and satisfied_disjunct(case, cex.y) is not None


# --------------------------------------------------------------------------- 6. files

def small_cert(rng: np.random.Generator, n: int, n_in: int = 2, cached: bool = False
               ) -> Certificate:
    lower = rng.standard_normal((n, n_in))
    cache = None
    if cached:
        cache = CachedBounds(hl=np.zeros((n, 3)), hu=np.ones((n, 3)), row_lb=np.ones((n, 1)),
                             hidden=((np.ones((3, n_in)), np.zeros(3)),))
    return Certificate(lower=lower, upper=lower + rng.random((n, n_in)),
                       case=rng.integers(0, 3, n), ref_weight=rng.standard_normal((2, 3)),
                       ref_bias=rng.standard_normal(2), cached=cache)


def assert_same_cert(got: Certificate, want: Certificate) -> None:
    for name in ("lower", "upper", "case", "ref_weight", "ref_bias"):
        a, b = getattr(got, name), getattr(want, name)
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert a.dtype == (np.int64 if name == "case" else np.float64), name
    assert got.cached is None
    assert got.digest == want.digest


def test_save_and_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(6)
    props = [tmp_path / f"prop{i}.vnnlib" for i in range(3)]
    for i, p in enumerate(props):
        p.write_text(f"; property {i}\n(declare-const X_0 Real)\n")
    keys = [spec_key(p) for p in props]
    assert keys[0] == hashlib.sha256(props[0].read_bytes()).hexdigest()
    assert len(set(keys)) == 3
    copy = tmp_path / "elsewhere.vnnlib"
    copy.write_bytes(props[1].read_bytes())
    assert spec_key(copy) == keys[1]  # the key is the content, not the path
    certs = {keys[0]: replace(small_cert(rng, 5, cached=True), digest="ab" * 32),
             keys[1]: small_cert(rng, 0), keys[2]: small_cert(rng, 7, n_in=3)}
    path = tmp_path / "certs.npz"
    save_certificates(path, certs)
    for key, cert in certs.items():
        assert_same_cert(load_certificate(path, key), cert)  # cached bounds are not saved
    assert load_certificate(path, "0" * 64) is None
    save_certificates(path, {keys[2]: certs[keys[2]]})  # overwrite
    assert load_certificate(path, keys[0]) is None
    assert_same_cert(load_certificate(path, keys[2]), certs[keys[2]])
    save_certificates(path, {})
    assert load_certificate(path, keys[2]) is None


def test_loaded_certificate_checks_like_the_original(tmp_path) -> None:
    inst = instance(first_seed(lambda s: exact_of(s, "small").status == "holds"))
    cert = certificate_of(inst.net, inst.part, cached=True)
    save_certificates(tmp_path / "c.npz", {"k": cert})
    loaded = load_certificate(tmp_path / "c.npz", "k")
    net = checked_net(inst.seed, "small")
    np.testing.assert_array_equal(check_certificate(net, inst.spec, loaded).safe,
                                  check_certificate(net, inst.spec,
                                                    replace(cert, cached=None)).safe)


def _write_garbage(path, kind: str) -> None:
    if kind == "text":
        path.write_text("not a certificate\n")
    elif kind == "npz-without-keys":
        np.savez(path, lower_0=np.zeros((1, 2)))
    elif kind == "npz-missing-arrays":
        np.savez(path, keys=np.array(["k"]), lower_0=np.zeros((1, 2)))
    elif kind == "pickled-objects":
        np.savez(path, keys=np.array(["k"], dtype=object))
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        save_certificates(path, {"k": small_cert(np.random.default_rng(0), 4)})
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "npy":
        with open(path, "wb") as handle:
            np.save(handle, np.zeros(3))
    elif kind == "scalar-keys":
        with open(path, "wb") as handle:
            np.savez(handle, keys=np.array("k"))


@pytest.mark.parametrize("kind", [
    "text", "npz-without-keys", "npz-missing-arrays", "pickled-objects", "directory",
    "empty", "truncated", "npy", "scalar-keys"])
def test_unreadable_files_raise_input_file_error(tmp_path, kind: str) -> None:
    path = tmp_path / "bad.npz"
    _write_garbage(path, kind)
    with pytest.raises(InputFileError):
        load_certificate(path, "k")


def test_missing_file_raises_input_file_error(tmp_path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        load_certificate(tmp_path / "nope.npz", "k")


@pytest.mark.parametrize("change", [
    "ref-weight-shape", "ref-bias-shape", "box-dimension", "upper-rows", "case-negative",
    "case-too-large", "nan-lower", "inf-upper", "nan-ref-weight", "inf-ref-bias",
    "no-hidden-layer", "case-2d", "case-0d"])
def test_validate_rejects_mismatches(change: str) -> None:
    net, spec, cert = two_case_setup()
    validate(cert, net, spec)  # the unchanged certificate fits
    bad = {
        "ref-weight-shape": lambda: replace(cert, ref_weight=np.zeros((1, 3))),
        "ref-bias-shape": lambda: replace(cert, ref_bias=np.zeros(2)),
        "box-dimension": lambda: replace(cert, lower=np.zeros((4, 2)), upper=np.ones((4, 2))),
        "upper-rows": lambda: replace(cert, upper=cert.upper[:3]),
        "case-negative": lambda: replace(cert, case=np.array([0, -1, 1, 1])),
        "case-too-large": lambda: replace(cert, case=np.array([0, 1, 2, 1])),
        "nan-lower": lambda: replace(cert, lower=np.where(np.arange(4)[:, None] == 2,
                                                          np.nan, cert.lower)),
        "inf-upper": lambda: replace(cert, upper=np.where(np.arange(4)[:, None] == 0,
                                                          np.inf, cert.upper)),
        "nan-ref-weight": lambda: replace(cert, ref_weight=np.array([[1.0, np.nan]])),
        "inf-ref-bias": lambda: replace(cert, ref_bias=np.array([-np.inf])),
        "no-hidden-layer": lambda: cert,
        "case-2d": lambda: replace(cert, case=cert.case[:, None]),
        "case-0d": lambda: replace(cert, case=np.array(0)),
    }[change]()
    if change == "no-hidden-layer":
        net = AffineReluNet((Affine(np.ones((1, 1)), np.zeros(1)),))
        bad = replace(bad, ref_weight=np.ones((1, 1)))
    with pytest.raises(MismatchError):
        validate(bad, net, spec)
    with pytest.raises(MismatchError):
        check_certificate(net, spec, bad)


def test_files_without_a_digest_still_load(tmp_path) -> None:
    """Certificates written before the digest existed load with digest "" (no warning)."""
    cert = small_cert(np.random.default_rng(8), 4)
    arrays = {"keys": np.asarray(["k"], dtype=str), "lower_0": cert.lower,
              "upper_0": cert.upper, "case_0": cert.case, "ref_weight_0": cert.ref_weight,
              "ref_bias_0": cert.ref_bias}
    np.savez_compressed(tmp_path / "old.npz", **arrays)
    assert_same_cert(load_certificate(tmp_path / "old.npz", "k"), cert)


# --------------------------------------------------------------- 7. identity and time

def test_hidden_digest_names_the_hidden_layers_only() -> None:
    net, _, _ = violated_instance()
    assert hidden_digest(net) == hidden_digest(AffineReluNet(tuple(net.layers)))
    last = net.layers[-1]
    assert hidden_digest(net) == hidden_digest(with_last(net, last.weight + 1.0, last.bias))
    digests = {hidden_digest(hidden_changed(net, how))
               for how in ("weight", "weight-ulp", "bias", "extra-layer")}
    assert len(digests) == 4 and hidden_digest(net) not in digests


def test_a_foreign_certificate_warns_and_is_still_checked(tmp_path, caplog) -> None:
    inst = instance(first_seed(lambda s: check_certificate(
        instance(s).net, instance(s).spec, certificate_of(instance(s).net, instance(s).part)
    ).holds))
    network = export_and_load(inst.net, tmp_path / "net.onnx")
    mine = replace(certificate_of(inst.net, inst.part), digest=hidden_digest(inst.net))
    with caplog.at_level("WARNING", logger="verirepair.verify.certificate"):
        result = verify_with_certificate(network, inst.spec, mine, BAB_TIMEOUT, never_called)
    assert result.verdict is Verdict.HOLDS and not caplog.records
    foreign = replace(mine, digest="0" * 64)
    with caplog.at_level("WARNING", logger="verirepair.verify.certificate"):
        result = verify_with_certificate(network, inst.spec, foreign, BAB_TIMEOUT,
                                         never_called)
    assert "other hidden layers" in caplog.text
    assert result.verdict is Verdict.HOLDS  # the boxes still prove it: a hint, not a key


def test_the_certificate_check_stops_at_its_deadline(tmp_path) -> None:
    inst = instance(first_seed(lambda s: check_certificate(
        instance(s).net, instance(s).spec, certificate_of(instance(s).net, instance(s).part)
    ).holds))
    cert = certificate_of(inst.net, inst.part)
    late = check_certificate(inst.net, inst.spec, cert, deadline=0.0)  # long past
    assert late.timed_out and not late.holds and not late.safe.any()
    assert check_certificate(inst.net, inst.spec, cert, deadline=None).holds
    network = export_and_load(inst.net, tmp_path / "net.onnx")
    result = verify_with_certificate(network, inst.spec, cert, -1.0, never_called)
    assert result.verdict is Verdict.TIMEOUT and result.engine == "certificate"


# ------------------------------------------- 8. regressions from the soundness review

def test_a_disjunct_without_output_rows_is_never_proven(tmp_path) -> None:
    """(or (<= Y_0 -100) (<= 0 1)): the second disjunct holds for every output, so every
    input is a counterexample; the certificate must not call any box safe."""
    from verirepair.spec import parse_vnnlib_text

    spec = parse_vnnlib_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                             "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n"
                             "(assert (or (<= Y_0 -100.0) (<= 0 1)))\n")
    assert any(h.rhs.shape[0] == 0 for h in spec.cases[0].unsafe)
    net = identity_net()
    cert = Certificate(np.array([[0.0]]), np.array([[1.0]]), np.array([0]),
                       net.layers[-1].weight.copy(), net.layers[-1].bias.copy())
    check = check_certificate(net, spec, cert)
    assert check.covered and not check.holds
    network = export_and_load(net, tmp_path / "net.onnx")
    result = verify_with_certificate(network, spec, cert, BAB_TIMEOUT, real_bab)
    assert result.verdict is Verdict.VIOLATED


def test_a_case_without_disjuncts_has_nothing_unsafe() -> None:
    net = identity_net()
    box = Box(np.array([-1.0]), np.array([1.0]))
    spec = spec_of(net, SpecCase(box, ()))
    cert = Certificate(np.array([[-1.0]]), np.array([[1.0]]), np.array([0]),
                       net.layers[-1].weight.copy(), net.layers[-1].bias.copy())
    assert check_certificate(net, spec, cert).holds


def test_cancelling_huge_last_layer_weights_are_not_a_proof() -> None:
    """y = (2^66 h, h, -2^66 h), h = relu(x) on [1, 2]: y0 + y1 + y2 = h exactly, but
    c @ W rounds to 0 in float64 and the bound used to 'prove' -(y0+y1+y2) > -1.5."""
    big = 2.0 ** 66
    net = AffineReluNet((Affine(np.array([[1.0]]), np.zeros(1)),
                         Affine(np.array([[big], [1.0], [-big]]), np.zeros(3))))
    unsafe = Halfspaces(np.array([[-1.0, -1.0, -1.0]]), np.array([-1.5]))
    spec = spec_of(net, SpecCase(Box(np.array([1.0]), np.array([2.0])), (unsafe,)))
    cert = Certificate(np.array([[1.0]]), np.array([[2.0]]), np.array([0]),
                       net.layers[-1].weight.copy(), net.layers[-1].bias.copy())
    assert not check_certificate(net, spec, cert).holds


# ---------------------------------------------- 9. regressions from the second review

def test_a_strict_input_bound_stays_strict_in_the_open_boxes(tmp_path) -> None:
    """y = x on 0 < x <= 1, unsafe y <= 0: only x = 0 is unsafe, and the strict bound
    excludes it (the property holds). The certificate box cannot be proven, so it goes
    to branch and bound, whose sub-case must keep X_0 > 0: a point at 0 is no
    counterexample."""
    net = identity_net()
    box = Box(np.array([0.0]), np.array([1.0]), strict_lower=np.array([True]),
              strict_upper=np.array([False]))
    unsafe = Halfspaces(matrix=np.array([[1.0]]), rhs=np.array([0.0]))  # y <= 0
    spec = spec_of(net, SpecCase(box, (unsafe,)))
    cert = Certificate(np.array([[-1.0], [0.5]]), np.array([[0.5], [1.0]]), np.array([0, 0]),
                       net.layers[-1].weight.copy(), net.layers[-1].bias.copy())
    check = check_certificate(net, spec, cert)
    assert check.covered and check.safe.tolist() == [False, True]
    sub, _ = open_spec(spec, cert, check.safe)
    (case,) = sub.cases
    assert case.box.strict_lower.tolist() == [True] and not case.box.contains(np.zeros(1))
    network = export_and_load(net, tmp_path / "id.onnx")

    def at_zero(network_, sub_spec, timeout):  # a wrong engine: its point is outside
        cex = Counterexample(x=np.zeros(1, dtype=np.float32), y=np.zeros(1, dtype=np.float32),
                             case_index=0, disjunct_index=0)
        return Result(Verdict.VIOLATED, cex, engine="bab")
    result = verify_with_certificate(network, spec, cert, BAB_TIMEOUT, at_zero)
    assert result.verdict is Verdict.UNKNOWN and "outside its case" in result.reason
    real = verify_with_certificate(network, spec, cert, 5.0, real_bab)
    assert real.verdict is not Verdict.VIOLATED, real


def test_a_spec_that_does_not_fit_the_model_is_a_mismatch() -> None:
    """Checked before any bound is computed (it used to end in a torch traceback)."""
    net = identity_net()
    box = Box(np.zeros(2), np.ones(2))
    spec = Spec(n_inputs=2, n_outputs=1, cases=(SpecCase(box, (y_at_least(5.0),)),),
                source="two.vnnlib")
    cert = Certificate(np.zeros((1, 2)), np.ones((1, 2)), np.array([0]),
                       net.layers[-1].weight.copy(), net.layers[-1].bias.copy())
    with pytest.raises(MismatchError, match="two.vnnlib declares 2 inputs"):
        check_certificate(net, spec, cert)


def test_too_many_boxes_are_refused(monkeypatch) -> None:
    net, spec, cert = two_case_setup()
    monkeypatch.setattr("verirepair.verify.certificate.MAX_BOXES", 3)
    with pytest.raises(MismatchError, match="4 boxes"):
        check_certificate(net, spec, cert)


def test_a_box_far_outside_its_case_is_bounded_on_the_case_part_only() -> None:
    """One box [-10^6, 10^6] for the case [-1, 1] of y = x, unsafe y >= 5: bounded on
    [-10^6, 10^6] nothing is proven, on its part inside the case (all that matters)
    the property is."""
    net = identity_net()
    spec = spec_of(net, SpecCase(Box(np.array([-1.0]), np.array([1.0])), (y_at_least(5.0),)))
    cert = Certificate(np.array([[-1e6], [3.0]]), np.array([[1e6], [4.0]]), np.array([0, 0]),
                       net.layers[-1].weight.copy(), net.layers[-1].bias.copy())
    check = check_certificate(net, spec, cert)
    assert check.holds and check.safe.tolist() == [True, True]  # [3, 4] misses the case


def test_a_box_that_only_touches_a_strict_face_is_not_handed_on() -> None:
    """[-1, 0] meets 0 < x <= 1 only at the excluded 0: no point of the case."""
    net = identity_net()
    box = Box(np.array([0.0]), np.array([1.0]), strict_lower=np.array([True]),
              strict_upper=np.array([False]))
    spec = spec_of(net, SpecCase(box, (y_at_least(5.0),)))
    cert = Certificate(np.array([[-1.0], [0.0]]), np.array([[0.0], [1.0]]), np.array([0, 0]),
                       net.layers[-1].weight.copy(), net.layers[-1].bias.copy())
    sub, origin = open_spec(spec, cert, np.array([False, False]))
    assert len(sub.cases) == 1 and sub.cases[0].box.lower.tolist() == [0.0]


def test_huge_arrays_are_refused_before_they_are_read(tmp_path, monkeypatch) -> None:
    cert = small_cert(np.random.default_rng(8), 4)
    save_certificates(tmp_path / "c.npz", {"k": cert})
    monkeypatch.setattr("verirepair.verify.certificate.MAX_ARRAY_BYTES", 180)
    with pytest.raises(InputFileError, match="lower array would take"):
        load_certificate(tmp_path / "c.npz", "k")
    # the keys too, read before any certificate is chosen
    save_certificates(tmp_path / "k.npz", {"k" * 100: cert})
    with pytest.raises(InputFileError, match="keys array would take"):
        load_certificate(tmp_path / "k.npz", "k")


def test_the_coverage_check_stops_at_its_deadline() -> None:
    """2000 unit intervals tiling [0, 2000] take more than 1024 regions to check."""
    from verirepair.verify.certificate import _OutOfTime

    lower = np.arange(2000.0)[:, None]
    upper = lower + 1.0
    assert covers(np.array([0.0]), np.array([2000.0]), lower, upper)[0]
    with pytest.raises(_OutOfTime):
        covers(np.array([0.0]), np.array([2000.0]), lower, upper, deadline=0.0)
