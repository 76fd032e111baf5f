"""Our ACAS Xu encodings (properties/acasxu) agree with the VNN-COMP reference files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from verirepair.spec import load_spec
from verirepair.spec_types import Halfspaces, Spec

REPO_ROOT = Path(__file__).resolve().parents[2]
OURS = REPO_ROOT / "properties" / "acasxu"
NUMBERS = list(range(1, 11))


def reference(benchmarks_dir: Path, n: int) -> Path:
    path = benchmarks_dir / "acasxu" / f"prop_{n}.vnnlib"
    if not path.is_file():
        pytest.skip(f"reference property not found at {path}")
    return path


def canonical(poly: Halfspaces) -> np.ndarray:
    """Rows ``[c | d]`` scaled so that ``max|c| = 1``, sorted lexicographically."""
    rows = np.hstack([poly.matrix, poly.rhs[:, None]])
    scale = np.abs(poly.matrix).max(axis=1, initial=0.0)
    rows = rows / np.where(scale > 0, scale, 1.0)[:, None]
    order = np.lexsort(np.round(rows, 9).T[::-1])
    return rows[order]


def same_disjuncts(a: tuple[Halfspaces, ...], b: tuple[Halfspaces, ...]) -> bool:
    """Equal as sets of polytopes, comparing canonical row lists within 1e-9."""
    def key(rows: np.ndarray) -> tuple:
        return (rows.shape, tuple(np.round(rows, 9).ravel().tolist()))

    ca = sorted((canonical(p) for p in a), key=key)
    cb = sorted((canonical(p) for p in b), key=key)
    return len(ca) == len(cb) and all(
        x.shape == y.shape and np.allclose(x, y, rtol=0, atol=1e-9) for x, y in zip(ca, cb))


def assert_equivalent(ours: Spec, ref: Spec) -> None:
    assert (ours.n_inputs, ours.n_outputs) == (ref.n_inputs, ref.n_outputs) == (5, 5)
    assert len(ours.cases) == len(ref.cases)
    unmatched = list(ref.cases)
    for case in ours.cases:
        match = [r for r in unmatched
                 if np.allclose(case.box.lower, r.box.lower, rtol=0, atol=1e-9)
                 and np.allclose(case.box.upper, r.box.upper, rtol=0, atol=1e-9)]
        assert len(match) == 1, f"no reference case with box {case.box}"
        assert same_disjuncts(case.unsafe, match[0].unsafe)
        unmatched.remove(match[0])


@pytest.mark.parametrize("n", NUMBERS)
def test_our_encoding_matches_reference(benchmarks_dir: Path, n: int) -> None:
    ours = load_spec(OURS / f"prop_{n}.vnnlib")
    ref = load_spec(reference(benchmarks_dir, n))
    assert_equivalent(ours, ref)
    # The generator rounds like the reference does, so the boxes agree exactly.
    for a, b in zip(ours.cases, ref.cases):
        assert np.array_equal(a.box.lower, b.box.lower)
        assert np.array_equal(a.box.upper, b.box.upper)


@pytest.mark.parametrize("n", NUMBERS)
def test_reference_files_parse(benchmarks_dir: Path, n: int) -> None:
    spec = load_spec(reference(benchmarks_dir, n))
    expected = {1: [[1]], 2: [[4]], 3: [[4]], 4: [[4]], 5: [[1] * 4], 6: [[1] * 4] * 2,
                7: [[3, 3]], 8: [[2, 2, 2]], 9: [[1] * 4], 10: [[1] * 4]}[n]
    assert [[len(p.rhs) for p in c.unsafe] for c in spec.cases] == expected
    for case in spec.cases:
        assert np.all(case.box.lower <= case.box.upper)
        assert np.all(np.abs(case.box.lower) <= 0.71) and np.all(np.abs(case.box.upper) <= 0.71)


def test_reference_phi6_and_phi7_shapes(benchmarks_dir: Path) -> None:
    phi6 = load_spec(reference(benchmarks_dir, 6))
    assert len(phi6.cases) == 2 and [len(c.unsafe) for c in phi6.cases] == [4, 4]
    assert phi6.cases[0].box.lower[1] == pytest.approx(0.11140846)
    assert phi6.cases[1].box.upper[1] == pytest.approx(-0.11140846)
    phi7 = load_spec(reference(benchmarks_dir, 7))
    (case,) = phi7.cases
    assert [p.matrix.shape for p in case.unsafe] == [(3, 5), (3, 5)]


def test_phi1_threshold_is_scaled_output(benchmarks_dir: Path) -> None:
    (case,) = load_spec(reference(benchmarks_dir, 1)).cases
    (poly,) = case.unsafe
    threshold = (1500 - 7.5188840201005975) / 373.94992
    np.testing.assert_array_equal(poly.matrix, [[-1, 0, 0, 0, 0]])
    assert -poly.rhs[0] == pytest.approx(threshold, abs=1e-12)


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("acasxu_generate", OURS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while executing it
    spec.loader.exec_module(module)
    return module


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    assert _generator().main([str(tmp_path)]) == 0
    for n in NUMBERS:
        committed = (OURS / f"prop_{n}.vnnlib").read_text()
        assert (tmp_path / f"prop_{n}.vnnlib").read_text() == committed, f"prop_{n} is stale"


def test_generator_normalisation() -> None:
    gen = _generator()
    assert gen.normalise(55947.691, 0) == 0.6
    assert gen.normalise(-gen.PI, 1) == -0.5
    assert gen.normalise(-gen.PI_TRUNC, 2) == -0.499999896
    assert gen.fmt(0.45) == "0.45" and gen.fmt(-0.5) == "-0.5" and gen.fmt(0.0) == "0.0"
    assert gen.fmt(1e-9) == "0.000000001"


@pytest.mark.parametrize("n", NUMBERS)
def test_our_files_say_where_they_come_from(n: int) -> None:
    text = (OURS / f"prop_{n}.vnnlib").read_text()
    assert f"property phi_{n}" in text and "raw [" in text
