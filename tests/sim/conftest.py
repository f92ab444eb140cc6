"""Fixtures for the simulated lab: a ``SimBackend`` per test, on the session's build
cache (``sim_cache``, in tests/conftest.py), whose simulators stop at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.sim import SimBackend


@pytest.fixture
def sim(sim_cache: Path, tmp_path: Path) -> Iterator[SimBackend]:
    backend = SimBackend(sim_cache, run_dir=tmp_path / "boards")
    yield backend
    backend.close()
