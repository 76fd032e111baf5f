"""Small decision rules of the repair loop and row builders (no solving)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from verirepair.net_types import Affine, AffineReluNet
from verirepair.repair.loop import _stalled
from verirepair.repair.qp import ACCEPTED, ACCEPTED_PENALISED
from verirepair.repair.rows import near_boundary


@pytest.mark.parametrize("conflicts, stalled", [
    ([], False), ([55], False), ([55, 56], False),  # one round without progress: go on
    ([55, 56, 100], True),  # two rounds without a new minimum: the conflict is real
    ([123, 94, 57, 32, 18, 12, 13], False), ([12, 13, 10], False),
    ([12, 13, 12], True), ([295, 363, 494], True),
])
def test_splitting_stops_after_two_rounds_without_a_new_minimum(conflicts, stalled) -> None:
    assert _stalled(SimpleNamespace(conflicts=conflicts)) is stalled


def test_only_penalised_qps_accept_a_stalled_solver() -> None:
    assert "InsufficientProgress" not in ACCEPTED and "MaxIterations" not in ACCEPTED
    assert {"Solved", "AlmostSolved", "MaxIterations"} <= set(ACCEPTED_PENALISED)


def test_near_boundary_points_have_the_smallest_gaps() -> None:
    rng = np.random.default_rng(0)
    net = AffineReluNet((Affine(rng.standard_normal((8, 3)), rng.standard_normal(8)),
                         Affine(rng.standard_normal((4, 8)), rng.standard_normal(4))))
    domain = (np.full(3, -1.0), np.full(3, 1.0))
    x = near_boundary(net, domain, 50, 5000, False, np.random.default_rng(1))
    assert x.shape == (50, 3) and np.all(x >= -1) and np.all(x <= 1)
    pool = domain[0] + 2 * np.random.default_rng(1).random((5000, 3))  # the same pool
    y = np.sort(net.forward(pool), axis=1)
    gap = y[:, 1] - y[:, 0]
    ys = np.sort(net.forward(x), axis=1)
    np.testing.assert_allclose(np.sort(ys[:, 1] - ys[:, 0]), np.sort(gap)[:50])
    for argmax in (False, True):  # the gap of the argmax decision
        xa = near_boundary(net, domain, 5, 5000, argmax, np.random.default_rng(1))
        assert xa.shape == (5, 3)
    assert near_boundary(net, domain, 0, 100, False, rng).shape == (0, 3)


def test_outputs_get_the_usual_file_mode(tmp_path) -> None:
    import os

    import onnx
    from onnx import helper

    from verirepair.report import default_file_mode, write_atomic
    from verirepair.repair.save import save_temp

    write_atomic(tmp_path / "r.json", "{}")
    assert os.stat(tmp_path / "r.json").st_mode & 0o777 == default_file_mode()
    model = helper.make_model(helper.make_graph([], "empty", [], []))
    tmp = save_temp(model, tmp_path / "out.onnx")
    assert os.stat(tmp).st_mode & 0o777 == default_file_mode()
    assert onnx.load(str(tmp)).graph.name == "empty"
    old = os.umask(0o077)
    try:
        assert default_file_mode() == 0o600
    finally:
        os.umask(old)
