"""Shared test helpers: a real redis-server, ``fpgalab`` processes, polling, and API
shortcuts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fpgalab.service.app import create_app
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store

FINISHED = {"complete", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port, in its own folder; with ``password``,
    one that requires it (``requirepass``)."""

    def __init__(
        self, folder: Path, appendonly: bool = False, port: int | None = None,
        password: str | None = None,
    ) -> None:  # fmt: skip
        self.folder = folder
        self.appendonly = appendonly
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (make test installs it)"
        self.folder.mkdir(parents=True, exist_ok=True)
        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             "--logfile", str(self.folder / "redis.log"), *auth],
        )  # fmt: skip
        hello = f"AUTH {self.password}\r\n".encode() if self.password else b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(hello + b"PING\r\n")
                    if s.recv(64).endswith(b"+PONG\r\n"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to write anything more to its AOF."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")


async def wait_set(event: threading.Event, timeout: float = 10.0) -> None:
    """Wait until a backend thread has set ``event`` (e.g. ``FakeBackend.held``)."""

    async def is_set() -> bool:
        return event.is_set()

    await wait_for(is_set, timeout)


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app built from ``settings``, started (lifespan) and reached over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lab") as c:
            yield c


async def jobs_in_redis(store: Store, fpga_id: int | None = None) -> list[dict[str, str]]:
    """Every job record in Redis (of one board if given), straight from Redis."""
    records = []
    async for key in store.redis.scan_iter(match="fpgalab:job:*", count=1000):
        if key.count(":") != 2:
            continue  # a job's log or design
        record = await store.redis.hgetall(key)
        if fpga_id is None or record.get("fpga_id") == str(fpga_id):
            records.append(record)
    return records


async def job(client: httpx.AsyncClient, fpga_id: int, job_id: str, **kw: Any) -> dict[str, Any]:
    r = await client.get(f"/fpga/{fpga_id}/jobs/{job_id}", **kw)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def wait_job(
    client: httpx.AsyncClient, fpga_id: int, job_id: str, timeout: float = 10.0, **kw: Any
) -> dict[str, Any]:
    """The job once it has finished."""

    async def finished() -> dict[str, Any] | None:
        record = await job(client, fpga_id, job_id, **kw)
        return record if record["status"] in FINISHED else None

    return await wait_for(finished, timeout)  # type: ignore[no-any-return]


async def board(client: httpx.AsyncClient, fpga_id: int, **kw: Any) -> dict[str, Any]:
    r = await client.get(f"/fpga/{fpga_id}", **kw)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def wait_state(
    client: httpx.AsyncClient, fpga_id: int, state: str, timeout: float = 10.0, **kw: Any
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        b = await board(client, fpga_id, **kw)
        return b if b["state"] == state else None

    return await wait_for(reached, timeout)  # type: ignore[no-any-return]


async def submit(
    client: httpx.AsyncClient,
    fpga_id: int,
    text: str = "# a design\nDesign = None\n",
    filename: str = "design.py",
    **kw: Any,
) -> httpx.Response:
    return await client.post(
        f"/fpga/{fpga_id}/submit", files={"file": (filename, text.encode())}, **kw
    )


async def reserve(client: httpx.AsyncClient, fpga_id: int, **kw: Any) -> dict[str, Any]:
    """Submit a good design and wait until the board is reserved; the 202 body."""
    r = await submit(client, fpga_id, **kw)
    assert r.status_code == 202, r.text
    accepted = r.json()
    done = await wait_job(client, fpga_id, accepted["job_id"], **kw)
    assert done["status"] == "complete", done
    return accepted  # type: ignore[no-any-return]


async def run_job(
    client: httpx.AsyncClient, fpga_id: int, body: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    """POST a run, wait for it, and return its result body."""
    r = await client.post(f"/fpga/{fpga_id}/run", json=body, **kw)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    await wait_job(client, fpga_id, job_id, **kw)
    res = await client.get(f"/fpga/{fpga_id}/jobs/{job_id}/result", **kw)
    assert res.status_code == 200, res.text
    return res.json()  # type: ignore[no-any-return]


async def reset_to_idle(client: httpx.AsyncClient, fpga_id: int, **kw: Any) -> dict[str, Any]:
    """Reset the board and wait for the reset job to complete; the board, idle by then."""
    r = await client.post(f"/fpga/{fpga_id}/reset", **kw)
    assert r.status_code == 202, r.text
    done = await wait_job(client, fpga_id, r.json()["job_id"], **kw)
    assert done["status"] == "complete", done
    b = await board(client, fpga_id, **kw)
    assert b["state"] == "idle", b
    return b


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the documented error shape with this status and code."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail"}, body
    assert set(body["detail"]) == {"error", "message"}, body
    assert body["detail"]["error"] == code, body
    assert isinstance(body["detail"]["message"], str) and body["detail"]["message"]
    return body["detail"]  # type: ignore[no-any-return]


#: The repository (its docs and examples; the tests run from it).
REPO = Path(__file__).resolve().parents[1]


class Log(list[str]):
    """A build or job log, as a backend's ``log`` callback fills it."""

    def __call__(self, line: str) -> None:
        self.append(line)

    def text(self) -> str:
        return "\n".join(self)


class CliProcess:
    """``python -m service.cli ARGS`` as a real process, run from the repository (so that
    ``tests.*`` backends import), without the caller's ``FPGALAB_*`` environment; its
    output goes to ``log``, its default data folder beside it."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log = log
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FPGALAB_")}
        self.env["XDG_DATA_HOME"] = str(log.parent / "xdg-data")
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CliProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fpgalab.service.cli", *self.args],
                cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None, "not started"
        return await asyncio.to_thread(self.proc.wait, timeout)

    def stop(self) -> None:
        """Kill it if it still runs (teardown)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)


async def wait_http(url: str, timeout: float = 30.0, proc: CliProcess | None = None) -> None:
    """Wait until ``url`` answers 200 (an API process has started)."""
    async with httpx.AsyncClient(timeout=2, trust_env=False) as c:

        async def up() -> bool:
            if proc is not None and not proc.running():
                raise AssertionError(f"{proc.args} exited:\n{proc.output()}")
            try:
                return (await c.get(url)).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(up, timeout, interval=0.05)


def run_as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as uid/gid 65534 (another local user) with the system's python3;
    skips where the test cannot act as another user (not root, no system python)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or python is None:
        pytest.skip("needs root (to act as another user) and a system python3")
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I", "-c",
         code, *args],
        capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=30,
    )  # fmt: skip


#: Python, run as another user: connect to 127.0.0.1:argv[1], send argv[2] (hex), print
#: what comes back before the connection closes (or the error's name).
TCP_PROBE = """
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
        s.sendall(bytes.fromhex(sys.argv[2]))
        s.settimeout(5)
        print(repr(s.recv(64)))
except OSError as exc:
    print(type(exc).__name__)
"""


def as_a_shell_starts_it() -> None:
    """``preexec_fn`` for a child a test interrupts as a user would: Ctrl-C (SIGINT) with
    its default action and no signal blocked, as an interactive shell starts a command,
    whatever the test process's own threads hold."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def signal_masks(pid: int) -> str:
    """A process's blocked, ignored and caught signals (``/proc/<pid>/status``), for a
    failure message."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        return f"(no status: {exc})"
    return " ".join(
        line.replace("\t", "") for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt"))
    )


def register_lab(redis_url: str, boards: Iterable[int] = range(10), platform: str = "sim") -> None:
    """Put ``boards`` in the lab's inventory, as the workers of a lab of ten simulated
    boards do at their start (``register.lua``, run as the store runs it): a test's lab
    has its boards whether or not a worker serves them yet."""
    from fpgalab.service.lua import source

    args: list[object] = []
    for board in boards:
        args += [board, platform, ""]
    with redis.Redis.from_url(redis_url) as r:
        r.eval(source("register"), 0, *args)


def replicate(replica: RedisServer, primary_port: int, timeout: float = 10.0) -> None:
    """Make ``replica`` a replica of the redis-server on ``primary_port`` and wait until
    it has synced (its link up). Both send a full sync at once (redis' default waits
    5 s for more replicas to share it)."""
    for port in (primary_port, replica.port):
        with redis.Redis("127.0.0.1", port) as r:
            r.config_set("repl-diskless-sync-delay", 0)
    with redis.Redis("127.0.0.1", replica.port, decode_responses=True) as r:
        r.replicaof("127.0.0.1", primary_port)
        deadline = time.monotonic() + timeout
        while r.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis on {replica.port} did not sync from {primary_port}")
            time.sleep(0.02)


class Sentinels:
    """``count`` redis-sentinels on free loopback ports, each in its own folder of
    ``folder``, watching the redis-server on ``primary_port`` as ``name``: ``quorum`` of
    them agreeing that it has not answered for ``down_after_ms`` fail it over."""

    def __init__(
        self, folder: Path, primary_port: int, name: str = "fpgalab", count: int = 3,
        quorum: int = 2, down_after_ms: int = 500, failover_timeout_ms: int = 3000,
    ) -> None:  # fmt: skip
        self.folder = folder
        self.primary_port = primary_port
        self.name = name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def start(self, replicas: int = 1, timeout: float = 20.0) -> Sentinels:
        """Start them, and wait until each knows the others and ``replicas`` replicas."""
        exe = shutil.which("redis-sentinel")
        assert exe, "redis-sentinel is not installed (make test installs it)"
        for port in self.ports:
            folder = self.folder / f"sentinel-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"  # rewritten by the sentinel as it learns
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'log'}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {self.primary_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}\n"
            )
            self.procs.append(subprocess.Popen([exe, str(conf)]))
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while not self._ready(port, replicas):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sentinel on {port} did not see the others in time")
                time.sleep(0.05)
        return self

    def _ready(self, port: int, replicas: int) -> bool:
        try:
            with redis.Redis("127.0.0.1", port, socket_timeout=1) as r:
                state = r.sentinel_master(self.name)
        except redis.RedisError:
            return False
        others = len(self.ports) - 1
        return state["num-other-sentinels"] >= others and state["num-slaves"] >= replicas

    def primary(self) -> int | None:
        """The primary's port, if every sentinel names the same one."""
        named = set()
        for port in self.ports:
            try:
                with redis.Redis("127.0.0.1", port, socket_timeout=1) as r:
                    named.add(r.sentinel_get_master_addr_by_name(self.name))
            except redis.RedisError:
                return None
        if len(named) != 1 or None in named:
            return None
        return int(named.pop()[1])

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(10)


def vcd_samples(vcd: bytes) -> tuple[list[str], list[tuple[int, dict[str, int | None]]]]:
    """A VCD read with a real parser (pyvcd's tokenizer): its signals' names (``scope.name``)
    and, at each time something changed, every signal's value then (None: x or z)."""
    import io

    from vcd.reader import TokenKind, tokenize

    names: dict[str, str] = {}
    scope: list[str] = []
    now: dict[str, int | None] = {}
    samples: list[tuple[int, dict[str, int | None]]] = []
    for token in tokenize(io.BytesIO(vcd)):
        if token.kind is TokenKind.SCOPE:
            scope.append(token.scope.ident)
        elif token.kind is TokenKind.UPSCOPE:
            scope.pop()
        elif token.kind is TokenKind.VAR:
            names[token.var.id_code] = ".".join([*scope, token.var.reference])
            now[names[token.var.id_code]] = None
        elif token.kind is TokenKind.CHANGE_TIME:
            samples.append((token.time_change, dict(now)))
        elif token.kind in (TokenKind.CHANGE_SCALAR, TokenKind.CHANGE_VECTOR):
            change = (
                token.scalar_change
                if token.kind is TokenKind.CHANGE_SCALAR
                else token.vector_change
            )
            value = change.value
            if isinstance(value, str):
                value = int(value) if value in ("0", "1") else None
            now[names[change.id_code]] = value
            samples[-1][1][names[change.id_code]] = value
    return list(names.values()), samples


def bus_transactions(
    samples: list[tuple[int, dict[str, int | None]]],
) -> list[tuple[int, str, int | None, int | None, str]]:
    """The accesses a trace shows: (time, "read"/"write", word, data, "ack"/"err"), one per
    sample where ``cyc``, ``stb`` and ``ack`` or ``err`` are high."""
    found = []
    for at, v in samples:
        if v.get("bus.cyc") and v.get("bus.stb") and (v.get("bus.ack") or v.get("bus.err")):
            write = bool(v.get("bus.we"))
            data = v.get("bus.dat_w" if write else "bus.dat_r")
            end = "ack" if v.get("bus.ack") else "err"
            found.append((at, "write" if write else "read", v.get("bus.adr"), data, end))
    return found
