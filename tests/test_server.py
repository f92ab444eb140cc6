"""``fpgalab serve`` and ``fpgalab worker`` as real processes: the lab over a real
socket, a clean stop on SIGTERM/SIGINT that leaves no process behind, the private
Redis, and refusals of bad arguments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import FINISHED, free_port

REPO = Path(__file__).resolve().parents[1]
#: Generous bounds for process start, jobs and stop on a loaded machine.
START_TIMEOUT = 30.0
JOB_TIMEOUT = 15.0
STOP_TIMEOUT = 20.0


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    children: list[int] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def fpgalab(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Run ``python -m service.cli ARGS`` from the repository (so ``tests`` imports);
    at teardown every process started, and every child seen, is killed."""
    started: list[Proc] = []

    def run(*args: str, env: dict[str, str] | None = None, port: int = 0) -> Proc:
        log = tmp_path / f"fpgalab-{len(started)}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FPGALAB_")}
        full_env.pop("XDG_DATA_HOME", None)
        full_env.update(env or {})
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", *args],
                cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        p = Proc(proc, log, port)
        started.append(p)
        return p

    yield run
    for p in started:
        seen = set(p.children)
        if p.proc.poll() is None:
            seen.update(descendants(p.proc.pid))
            p.proc.kill()
        p.proc.wait(10)
        for pid in seen:
            if alive(pid) and cmdline(pid):  # ours: a child of a process we started
                os.kill(pid, signal.SIGKILL)


def serve(fpgalab: Callable[..., Proc], *args: str, env: dict[str, str] | None = None) -> Proc:
    """Start ``fpgalab serve`` with the fake backend on a free port; wait for /health."""
    port = free_port()
    p = fpgalab(
        "serve", "--backend", "tests.fakes:FakeBackend", "--port", str(port), *args,
        env={"FPGALAB_HEALTH_INTERVAL": "3600", **(env or {})}, port=port,
    )  # fmt: skip

    def up() -> bool:
        if p.proc.poll() is not None:
            raise AssertionError(f"serve exited with {p.proc.returncode}:\n{p.output()}")
        try:
            return httpx.get(f"{p.base_url}/health", timeout=2, trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    poll(up, START_TIMEOUT, "fpgalab serve answering /health")
    p.children = poll(lambda: descendants(p.proc.pid), START_TIMEOUT, "serve's children")
    return p


def stop(p: Proc, sig: signal.Signals) -> int:
    """Signal the process, wait for its exit, and check that it left no process behind."""
    p.children = sorted(set(p.children) | set(descendants(p.proc.pid)))
    assert p.children, "expected children (the worker at least)"
    p.proc.send_signal(sig)
    code = p.proc.wait(STOP_TIMEOUT)
    poll(lambda: not any(alive(c) for c in p.children), STOP_TIMEOUT, f"{p.children} gone")
    return code


def wait_job(c: httpx.Client, fpga_id: int, job_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        r = c.get(f"/fpga/{fpga_id}/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json() if r.json()["status"] in FINISHED else None

    return poll(finished, JOB_TIMEOUT, f"job {job_id} finished")  # type: ignore[no-any-return]


def wait_board(c: httpx.Client, fpga_id: int, **wanted: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        b = c.get(f"/fpga/{fpga_id}").json()
        return b if all(b.get(k) == v for k, v in wanted.items()) else None

    return poll(reached, JOB_TIMEOUT, f"board {fpga_id} {wanted}")  # type: ignore[no-any-return]


def test_serve_runs_the_whole_cycle_over_a_socket_and_stops_on_sigterm(
    fpgalab: Callable[..., Proc], redis_url: str
) -> None:
    """Over real HTTP: submit, write, read back, result, logs, release; SIGTERM then
    stops the API and its worker, exit code 0, no child left."""
    p = serve(fpgalab, "--redis-url", redis_url)
    with httpx.Client(base_url=p.base_url, timeout=10, trust_env=False) as c:
        wait_board(c, 0, health="good")
        r = c.post("/fpga/0/submit", files={"file": ("design.py", b"# a design\n")})
        assert r.status_code == 202, r.text
        build = r.json()
        assert wait_job(c, 0, build["job_id"])["status"] == "complete"
        assert c.get("/fpga/0").json()["state"] == "reserved"

        w = c.post("/fpga/0/run", json={"op": 1, "address": 0x20, "data": [0xCAFE, 7]})
        assert w.status_code == 202, w.text
        assert wait_job(c, 0, w.json()["job_id"])["status"] == "complete"
        rd = c.post("/fpga/0/run", json={"op": 2, "address": 0x20, "length": 2})
        assert rd.status_code == 202, rd.text
        assert wait_job(c, 0, rd.json()["job_id"])["status"] == "complete"
        result = c.get(f"/fpga/0/jobs/{rd.json()['job_id']}/result")
        assert result.status_code == 200
        assert result.json()["ok"] is True and result.json()["data"] == [0xCAFE, 7]

        logs = c.get(f"/fpga/0/jobs/{build['job_id']}/logs")
        assert logs.status_code == 200 and "fake: elaborating design.py" in logs.text

        rel = c.post("/fpga/0/session/release")
        assert rel.status_code == 202, rel.text
        assert wait_job(c, 0, rel.json()["job_id"])["status"] == "complete"
        assert wait_board(c, 0, state="idle")["session"] is None

    assert any("worker" in cmdline(pid) for pid in p.children)
    assert stop(p, signal.SIGTERM) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_without_redis_url_runs_and_stops_a_private_redis(
    fpgalab: Callable[..., Proc], tmp_path: Path, sig: signal.Signals
) -> None:
    """With no Redis URL, serve starts its own redis-server (AOF on, data under
    $XDG_DATA_HOME/fpgalab) and stops it, and everything else, on the signal."""
    p = serve(fpgalab, env={"XDG_DATA_HOME": str(tmp_path)})
    with httpx.Client(base_url=p.base_url, timeout=10, trust_env=False) as c:
        assert c.get("/health").json() == {"status": "ok", "redis": True}
        assert len(c.get("/fpga").json()) == 10
    assert (tmp_path / "fpgalab" / "redis" / "appendonlydir").is_dir()
    redis_pids = [pid for pid in p.children if "redis-server" in cmdline(pid)]
    assert len(redis_pids) == 1, [cmdline(pid) for pid in p.children]
    assert stop(p, sig) == 0
    assert not alive(redis_pids[0])


def test_serve_with_an_unknown_backend_names_the_valid_ones(
    fpgalab: Callable[..., Proc], redis_url: str
) -> None:
    """``serve --backend nosuch`` exits non-zero and lists the backends there are."""
    p = fpgalab("serve", "--backend", "nosuch", "--redis-url", redis_url,
                "--port", str(free_port()))  # fmt: skip
    code = p.proc.wait(START_TIMEOUT)
    assert code != 0
    out = p.output()
    assert "unknown backend 'nosuch'" in out
    assert "hardware" in out and "sim" in out


def test_worker_refuses_boards_outside_0_to_9(fpgalab: Callable[..., Proc]) -> None:
    """``fpgalab worker --boards 12`` is refused with a message that boards are 0-9."""
    p = fpgalab("worker", "--boards", "12", "--backend", "tests.fakes:FakeBackend")
    code = p.proc.wait(START_TIMEOUT)
    assert code == 2
    out = p.output()
    assert "--boards" in out and "boards are 0-9" in out
