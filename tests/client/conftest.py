"""A whole lab on loopback for the client to talk to: the API under uvicorn, served as
``fpgalab api`` serves it (``service.server``), and a worker for its boards, both on an
event loop of their own in a thread — so that a test's synchronous ``Client`` blocks
nothing the lab needs, and an ``AsyncClient`` test has its loop to itself.

``fake_lab`` drives the ``FakeBackend`` test double (boards that are memories: fast);
``sim_lab`` the simulated lab (Verilator + cocotb) for the end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn

from fpgalab.backends.base import Backend
from fpgalab.client import AsyncClient, Client
from fpgalab.service import server
from fpgalab.service.app import create_app
from fpgalab.service.settings import Settings
from fpgalab.service.states import BOARD_IDS
from fpgalab.service.store import Store
from fpgalab.service.worker import BLOCK_MS, Worker
from tests.fakes import FakeBackend
from tests.helpers import free_port

if TYPE_CHECKING:
    from fpgalab.backends.sim import SimBackend

#: Keys of the keyed labs: alice and bob, and ops, an admin.
KEYS = "alice=alice-key,bob=bob-key,ops=ops-key:admin"
ALICE, BOB, OPS = "alice-key", "bob-key", "ops-key"
#: A design the FakeBackend builds (any text; markers in it steer it, see tests/fakes.py).
DESIGN = b"# a design\nDesign = None\n"


class LiveLab:
    """The API and a worker for ``boards`` on ``backend``, on a free loopback port."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        boards: Sequence[int] = BOARD_IDS,
        inventory: dict[int, tuple[str, tuple[str, ...]]] | None = None,
    ) -> None:
        self.settings = settings.model_copy(update={"host": "127.0.0.1", "port": free_port()})
        self.backend = backend
        self.boards = list(boards)
        self.inventory = inventory  # each board's platform and tags (default: sim, none)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._up = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-lab", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def start(self, timeout: float = 120.0) -> LiveLab:
        """Start, and return once the API answers and every board is checked and good."""
        self._thread.start()
        if not self._up.wait(20) or self._failure is not None:
            raise RuntimeError(f"the lab did not start: {self._failure!r}")
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, trust_env=False, headers=self._admin()) as c:
            while True:
                rows = {b["fpga_id"]: b for b in c.get("/fpga").json()}
                if all(rows[b]["health"] == "good" and rows[b]["worker"] for b in self.boards):
                    return self
                assert time.monotonic() < deadline, f"boards not up: {rows}"
                assert self._thread.is_alive(), f"the lab stopped: {self._failure!r}"
                time.sleep(0.05)

    def _admin(self) -> dict[str, str]:
        return {"X-API-Key": OPS} if self.settings.api_keys else {}

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failure = exc
            self._up.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        s = self.settings
        api = uvicorn.Server(server.config(create_app(s), s, log_level="warning"))
        store = Store.from_url(s.redis_url or "", s, blocking=BLOCK_MS / 1000)
        worker = Worker(store, self.backend, self.boards, inventory=self.inventory)
        serving = asyncio.create_task(api.serve())
        working = asyncio.create_task(worker.run())
        try:
            while not api.started:
                if serving.done() or working.done():
                    raise RuntimeError("the API or the worker stopped while starting")
                await asyncio.sleep(0.01)
            self._up.set()
            await self._stop.wait()
        finally:
            worker.stop()
            api.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(working, 15)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 15)
            await store.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the lab did not stop"


StartLab = Callable[..., LiveLab]


@pytest.fixture
def start_lab(settings: Settings, backend: FakeBackend) -> Iterator[StartLab]:
    """Start labs: ``start_lab(boards=..., backend=..., inventory=..., **settings)`` (the
    FakeBackend and all ten boards, sim without tags, by default; keyword arguments
    override settings). Each stops at
    teardown, before its backend closes."""
    started: list[LiveLab] = []

    def start(
        boards: Sequence[int] = BOARD_IDS,
        backend: Backend = backend,
        inventory: dict[int, tuple[str, tuple[str, ...]]] | None = None,
        **overrides: Any,
    ) -> LiveLab:
        lab = LiveLab(settings.model_copy(update=overrides), backend, boards, inventory)
        started.append(lab)
        return lab.start()

    yield start
    for lab in reversed(started):
        lab.stop()


@pytest.fixture
def fake_lab(start_lab: StartLab) -> LiveLab:
    """An open lab (no keys) of ten boards on the FakeBackend test double."""
    return start_lab()


@pytest.fixture
def keyed_lab(start_lab: StartLab) -> LiveLab:
    """A lab with keys for alice, bob and ops (an admin), on the FakeBackend."""
    return start_lab(api_keys=KEYS)


@pytest.fixture
def sim_lab(settings: Settings, sim: SimBackend) -> Iterator[LiveLab]:
    """A simulated lab (boards 0-3; the others have no worker), its base SoC built."""
    sim.builder.base(lambda line: None)  # before the worker: its first checks would all wait
    lab = LiveLab(settings, sim, boards=[0, 1, 2, 3]).start(timeout=180)
    yield lab
    lab.stop()


def client(lab: LiveLab, **options: Any) -> Client:
    """A client of ``lab`` (ignoring any proxy the environment names)."""
    options.setdefault("transport", httpx.HTTPTransport(retries=0))
    return Client(lab.url, **options)


def async_client(lab: LiveLab, **options: Any) -> AsyncClient:
    options.setdefault("transport", httpx.AsyncHTTPTransport(retries=0))
    return AsyncClient(lab.url, **options)


@pytest.fixture
def lab_client(fake_lab: LiveLab) -> Iterator[Client]:
    """A client of the fake lab."""
    with client(fake_lab) as c:
        yield c


def board_state(lab: LiveLab, fpga_id: int) -> dict[str, Any]:
    """The board as the API shows it, read past the client under test."""
    with httpx.Client(base_url=lab.url, trust_env=False, headers=lab._admin()) as c:
        answer = c.get(f"/fpga/{fpga_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


def wait_idle(lab: LiveLab, fpga_id: int, timeout: float = 15.0) -> dict[str, Any]:
    """The board once it is idle with no session (read past the client under test)."""
    deadline = time.monotonic() + timeout
    while True:
        row = board_state(lab, fpga_id)
        if row["state"] == "idle" and row["session"] is None:
            return row
        assert time.monotonic() < deadline, f"FPGA {fpga_id} not idle: {row}"
        time.sleep(0.05)
