"""Fixtures shared by the soundness tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tensors here are tiny: intra-op threads only add overhead, and on a loaded
    2-core machine they make each PGD step ~50x slower (spin-waiting workers). Use it
    with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
