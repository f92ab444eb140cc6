"""Fixtures: a real redis-server per test process, the app over HTTP (ASGI),
and in-process workers driving the ``FakeBackend`` test double."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis

from fpgalab.service.settings import Settings
from fpgalab.service.states import BOARD_IDS
from fpgalab.service.store import Store
from fpgalab.service.worker import BLOCK_MS, Worker
from tests.fakes import FakeBackend
from tests.helpers import REPO, RedisServer, register_lab, serve, wait_for

EXAMPLES = REPO / "docs" / "examples"

if TYPE_CHECKING:
    from fpgalab.backends.sim import SimBackend


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fpgalab")
    group.addoption(
        "--backend", choices=("sim", "hardware"), default="sim",
        help="what the end-to-end suite (tests/e2e) drives: the simulated lab (default), "
        "or the hardware backend against twins (or against --lab)",
    )  # fmt: skip
    group.addoption(
        "--run-slow", action="store_true",
        help="also run the slow tier (full ECP5 bitstream builds; `nox -s slow`)",
    )  # fmt: skip
    group.addoption(
        "--lab", default=None, metavar="FILE",
        help="a real lab file: the end-to-end suite drives its boards (implies "
        "--backend hardware; the `hil` nox session)",
    )  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tier runs only when asked for."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow tier: run with --run-slow (nox -s slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's build cache; ``FPGALAB_TEST_SIM_CACHE`` keeps one across runs.
    Shared by xdist workers, whose builds of the same design wait on each other's lock."""
    from fpgalab.sim.toolchain import ToolchainMissing, find

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
    """A simulated lab on the session's build cache; its simulators stop at teardown."""
    from fpgalab.backends.sim import SimBackend

    backend = SimBackend(sim_cache, run_dir=tmp_path / "boards")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hw_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hardware build cache of the session (bitstreams; the twins' models)."""
    if shutil.which("openFPGALoader") is None:
        if os.environ.get("CI"):
            raise RuntimeError("openFPGALoader is not installed (make system installs it)")
        pytest.skip("openFPGALoader not installed")
    if configured := os.environ.get("FPGALAB_TEST_HW_CACHE"):
        return Path(configured)
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / "hw-cache"


@pytest.fixture
def example() -> Callable[[str], bytes]:
    """Read an example design from docs/examples."""

    def read(name: str) -> bytes:
        return (EXAMPLES / name).read_bytes()

    return read


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test, but for the lab's ten boards in its
    inventory (``register_lab``)."""
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    register_lab(redis_server.url)
    return redis_server.url


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        api_keys="",
        worker_heartbeat_ttl=1.5,
        housekeeping_interval=0.1,
        health_interval=3600,
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = Store.from_url(settings.redis_url or "", settings)
    yield s
    await s.close()


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend()
    yield fake
    fake.close()


WorkerFactory = Callable[..., Any]


@pytest.fixture
async def start_worker(settings: Settings, backend: FakeBackend) -> AsyncIterator[WorkerFactory]:
    """Start in-process workers; each stops (and closes its Redis client) at teardown."""
    started: list[tuple[Worker, asyncio.Task[None], Store]] = []

    async def start(
        boards: Any = BOARD_IDS, fake: FakeBackend | None = None, wait_healthy: bool = True,
        worker_settings: Settings | None = None, inventory: Any = None,
    ) -> Worker:  # fmt: skip
        s = worker_settings or settings
        store = Store.from_url(s.redis_url or "", s, blocking=BLOCK_MS / 1000)
        worker = Worker(store, fake or backend, list(boards), inventory=inventory)
        task = asyncio.create_task(worker.run())
        started.append((worker, task, store))
        if wait_healthy:

            async def healthy() -> bool:  # holds its boards, each checked
                if task.done():
                    task.result()  # raise what stopped it
                rows = await store.boards(worker.boards)
                return all(b.get("health") and w == worker.id for _, b, w in rows)

            await wait_for(healthy)
        return worker

    yield start
    for worker, task, store in started:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await store.close()


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Settings for the API under test; override to configure keys."""
    return settings


@pytest.fixture
async def client(app_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API under test, started and reached over ASGI."""
    async with serve(app_settings) as c:
        yield c


@pytest.fixture
async def lab(client: httpx.AsyncClient, start_worker: WorkerFactory) -> httpx.AsyncClient:
    """The API with a worker serving all ten boards, all of them healthy."""
    await start_worker()
    return client
