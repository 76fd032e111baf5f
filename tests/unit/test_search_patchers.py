"""Derivative-free patchers (PSO, CMA-ES): feasible candidates are safe on every box,
runs are reproducible, the free mask is respected, infeasible rows give None + short."""

from __future__ import annotations

import numpy as np
import pytest

from verirepair.lastlayer import BoxRows, box_slack
from verirepair.repair.qp import SampleRows, sample_slack
from verirepair.repair.search import (PATCHERS, SearchOptions, _problem, batch_box_slack,
                                       batch_sample_slack)

N_OUT, WIDTH, M = 3, 6, 25
OPTIONS = SearchOptions(iterations=300, seed=3)


def synthetic(seed: int) -> tuple[np.ndarray, np.ndarray, BoxRows, np.ndarray, np.ndarray]:
    """Random boxes hl <= hu with c[:, 0] = 1, so raising b_0 helps every row."""
    rng = np.random.default_rng(seed)
    weight, bias = rng.standard_normal((N_OUT, WIDTH)), rng.standard_normal(N_OUT)
    hl = np.maximum(rng.standard_normal((M, WIDTH)), 0.0)
    hu = hl + np.where(rng.random((M, WIDTH)) < 0.3, 0.0, rng.random((M, WIDTH)))
    c = 0.3 * rng.standard_normal((M, N_OUT))
    c[:, 0] = 1.0
    mid, rad = (hl + hu) / 2, (hu - hl) / 2
    a = c @ weight
    lb0 = np.einsum("mh,mh->m", mid, a) - np.einsum("mh,mh->m", rad, np.abs(a)) + c @ bias
    d = lb0 + rng.uniform(-1.0, 0.5, M)
    rows = BoxRows(mid=mid, rad=rad, c=c, base=lb0 - d, d=d, leaf=np.arange(M))
    return weight, bias, rows, hl, hu


def decisions(weight: np.ndarray, bias: np.ndarray, seed: int) -> SampleRows:
    rng = np.random.default_rng(seed + 100)
    h = np.maximum(rng.standard_normal((40, WIDTH)), 0.0)
    y = h @ weight.T + bias
    order = np.argsort(y, axis=1)
    return SampleRows(h, order[:, 0], order[:, 1])


def run(name: str, seed: int, free: np.ndarray | None = None, rows: BoxRows | None = None,
        options: SearchOptions = OPTIONS):
    weight, bias, base_rows, hl, hu = synthetic(seed)
    rows = base_rows if rows is None else rows
    free = np.ones((N_OUT, WIDTH + 1), bool) if free is None else free
    eps = np.full(rows.size, 1e-3)
    out = PATCHERS[name](weight, bias, rows, decisions(weight, bias, seed), eps, 0.0, free,
                         options, 20.0)
    return out, weight, bias, rows, hl, hu, eps


@pytest.mark.parametrize("name", sorted(PATCHERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_candidate_makes_every_box_safe(name: str, seed: int) -> None:
    out, weight, bias, rows, hl, hu, eps = run(name, seed)
    assert out.dW is not None and out.db is not None
    assert np.all(box_slack(weight, bias, out.dW, out.db, rows) >= eps)
    assert not out.short.any()
    assert out.sizes == [(M, N_OUT * (WIDTH + 1))] and out.box_rows_used == M
    rng = np.random.default_rng(seed)
    h = hl[:, None, :] + (hu - hl)[:, None, :] * rng.random((M, 2000, WIDTH))
    y = h @ (weight + out.dW).T + bias + out.db
    assert np.all(np.einsum("mo,mso->ms", rows.c, y) - rows.d[:, None] >= eps[:, None] - 1e-9)


@pytest.mark.parametrize("name", sorted(PATCHERS))
def test_reproducible_with_a_seed(name: str) -> None:
    first, second = run(name, 0)[0], run(name, 0)[0]
    assert np.array_equal(first.dW, second.dW) and np.array_equal(first.db, second.db)
    assert first.iterations == second.iterations


@pytest.mark.parametrize("name", sorted(PATCHERS))
def test_entries_outside_the_mask_stay_zero(name: str) -> None:
    free = np.zeros((N_OUT, WIDTH + 1), bool)
    free[0, :] = True  # output 0's row and bias: enough, as c[:, 0] = 1
    free[1, 2] = True
    out = run(name, 1, free=free)[0]
    assert out.dW is not None
    full = np.hstack([out.dW, out.db[:, None]])
    assert np.all(full[~free] == 0.0)
    assert out.sizes == [(M, int(free.sum()))]


@pytest.mark.parametrize("name", sorted(PATCHERS))
def test_infeasible_row_gives_none_and_marks_it(name: str) -> None:
    weight, bias, rows, _, _ = synthetic(2)
    c = rows.c.copy()
    c[4] = 0.0  # no change can move this row, and its base is below eps
    base = rows.base.copy()
    base[4] = -1.0
    bad = BoxRows(rows.mid, rows.rad, c, base, rows.d, rows.leaf)
    out = run(name, 2, rows=bad, options=SearchOptions(iterations=30, seed=0))[0]
    assert out.dW is None and out.db is None
    assert out.short[4]


def test_batched_slack_matches_box_slack() -> None:
    weight, bias, rows, _, _ = synthetic(4)
    rng = np.random.default_rng(0)
    dw, db = rng.standard_normal((5, N_OUT, WIDTH)), rng.standard_normal((5, N_OUT))
    prob = _problem(weight, bias, rows, decisions(weight, bias, 4), np.full(M, 1e-3), 0.0,
                    np.ones((N_OUT, WIDTH + 1), bool), OPTIONS)
    got = batch_box_slack(prob, dw, db)
    for p in range(5):
        assert np.allclose(got[p], box_slack(weight, bias, dw[p], db[p], rows), atol=1e-12)


def test_batched_sample_slack_matches_sample_slack() -> None:
    weight, bias, rows, _, _ = synthetic(5)
    samples = decisions(weight, bias, 5)
    rng = np.random.default_rng(1)
    dw, db = rng.standard_normal((4, N_OUT, WIDTH)), rng.standard_normal((4, N_OUT))
    prob = _problem(weight, bias, rows, samples, np.full(M, 1e-3), 0.25,
                    np.ones((N_OUT, WIDTH + 1), bool), OPTIONS)
    got = batch_sample_slack(prob, dw, db)
    for p in range(4):
        want = sample_slack(weight + dw[p], bias + db[p], samples, 0.25)
        assert np.allclose(got[p], want, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PATCHERS))
def test_one_free_entry_and_none(name: str) -> None:
    only_b0 = np.zeros((N_OUT, WIDTH + 1), bool)
    only_b0[0, -1] = True  # c[:, 0] = 1: raising b_0 alone fixes every row
    out, weight, bias, rows, _, _, eps = run(name, 0, free=only_b0)
    assert out.dW is not None and np.all(out.dW == 0.0) and np.all(out.db[1:] == 0.0)
    assert np.all(box_slack(weight, bias, out.dW, out.db, rows) >= eps)
    nothing = run(name, 0, free=np.zeros((N_OUT, WIDTH + 1), bool))[0]
    assert nothing.dW is None and nothing.short.any() and nothing.iterations == 0
