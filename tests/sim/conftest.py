"""Fixtures for the simulated lab: one build cache per test session (shared by xdist
workers, whose builds of the same design wait on each other's file lock), and a
``SimBackend`` per test whose simulators stop at teardown."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backends.sim import SimBackend
from sim.toolchain import ToolchainMissing, find

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's build cache; ``FPGALAB_TEST_SIM_CACHE`` keeps one across runs."""
    try:
        find()
    except ToolchainMissing as exc:
        if os.environ.get("CI"):  # CI installs it: a missing toolchain is a failure there
            raise
        pytest.skip(f"simulation toolchain not installed: {exc}")
    if configured := os.environ.get("FPGALAB_TEST_SIM_CACHE"):
        return Path(configured)
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, shared by all workers
    return base / "sim-cache"


@pytest.fixture
def sim(sim_cache: Path, tmp_path: Path) -> Iterator[SimBackend]:
    backend = SimBackend(sim_cache, run_dir=tmp_path / "boards")
    yield backend
    backend.close()


@pytest.fixture
def example() -> Callable[[str], bytes]:
    """Read an example design from docs/examples."""

    def read(name: str) -> bytes:
        return (EXAMPLES / name).read_bytes()

    return read
