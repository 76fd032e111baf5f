"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _benchmarks_path() -> Path:
    """``$VERIREPAIR_BENCHMARKS`` (default ``../shared/benchmarks``), relative to the repo root."""
    path = Path(os.environ.get("VERIREPAIR_BENCHMARKS", "../shared/benchmarks")).expanduser()
    return (path if path.is_absolute() else REPO_ROOT / path).resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the parent of ``tests/``)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """The shared, read-only benchmarks folder; skips the test when it is absent."""
    path = _benchmarks_path()
    if not path.is_dir():
        pytest.skip(f"shared benchmarks folder not found at {path} "
                    "(set VERIREPAIR_BENCHMARKS)")
    return path
