"""``fpgalab serve`` and ``fpgalab worker`` as real processes: the lab over a real
socket, a clean stop on SIGTERM/SIGINT that leaves no process behind, the private
Redis, the lab's data and secrets kept from other processes and users, and refusals of
bad arguments."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.helpers import FINISHED, REPO, RedisServer, free_port

OPERATIONS = REPO / "docs" / "operations.md"
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
        full_env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")  # never the machine's own
        full_env.update(env or {})
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fpgalab.service.cli", *args],
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


def whole_cycle(c: httpx.Client) -> None:
    """On board 0: submit, write, read back, result, logs, release."""
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


def test_serve_runs_the_whole_cycle_over_a_socket_and_stops_on_sigterm(
    fpgalab: Callable[..., Proc], redis_url: str
) -> None:
    """Over real HTTP: submit, write, read back, result, logs, release; SIGTERM then
    stops the API and its worker, exit code 0, no child left."""
    p = serve(fpgalab, "--redis-url", redis_url)
    with httpx.Client(base_url=p.base_url, timeout=10, trust_env=False) as c:
        whole_cycle(c)

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
        assert {"status": "ok", "redis": True}.items() <= c.get("/health").json().items()
        assert len(c.get("/fpga").json()) == 10
    assert (tmp_path / "fpgalab" / "redis" / "appendonlydir").is_dir()
    redis_pids = [pid for pid in p.children if "redis-server" in cmdline(pid)]
    assert len(redis_pids) == 1, [cmdline(pid) for pid in p.children]
    assert stop(p, sig) == 0
    assert not alive(redis_pids[0])


def test_a_submit_as_soon_as_serve_answers_is_accepted_and_runs(
    fpgalab: Callable[..., Proc], tmp_path: Path
) -> None:
    """``fpgalab serve`` answers /health while its boards still come up (each takes
    ``SlowStartFakeBackend.START_SECONDS``, as a first start builds the base SoC): a submit in
    the same second the API first answers is 202 and completes once the board is up;
    /health counts the boards that are ready, and serve logs one line once all are."""
    port = free_port()
    p = fpgalab(
        "serve", "--backend", "tests.fakes:SlowStartFakeBackend", "--port", str(port),
        env={"XDG_DATA_HOME": str(tmp_path / "fresh"), "FPGALAB_HEALTH_INTERVAL": "3600"},
        port=port,
    )  # fmt: skip

    def answers() -> httpx.Response | None:
        if p.proc.poll() is not None:
            raise AssertionError(f"serve exited with {p.proc.returncode}:\n{p.output()}")
        try:
            r = httpx.get(f"{p.base_url}/health", timeout=2, trust_env=False)
        except httpx.TransportError:
            return None
        return r if r.status_code == 200 else None

    first = poll(answers, START_TIMEOUT, "fpgalab serve answering /health")
    answered = time.monotonic()
    with httpx.Client(base_url=p.base_url, timeout=10, trust_env=False) as c:
        r = c.post("/fpga/0/submit", files={"file": ("design.py", b"# a design\n")})
        assert time.monotonic() - answered < 1.0
        assert r.status_code == 202, r.text
        assert first.json()["boards"]["total"] == 10
        assert first.json()["boards"]["ready"] < 10, first.json()  # they were coming up
        assert wait_job(c, 0, r.json()["job_id"])["status"] == "complete"
        assert c.get("/fpga/0").json()["state"] == "reserved"
        line = f"lab ready: 10 boards on http://127.0.0.1:{port}"
        poll(lambda: line in p.output(), START_TIMEOUT, "serve saying the lab is ready")
        assert c.get("/health").json()["boards"] == {"ready": 10, "total": 10}
    assert p.output().count("lab ready") == 1
    assert stop(p, signal.SIGTERM) == 0


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


def test_worker_refuses_board_ids_past_the_most(fpgalab: Callable[..., Proc]) -> None:
    """``fpgalab worker --boards 10000`` is refused with a message that board ids are
    0-9999; a bad ``--tags`` is refused naming what is wrong."""
    p = fpgalab("worker", "--boards", "10000", "--backend", "tests.fakes:FakeBackend")
    code = p.proc.wait(START_TIMEOUT)
    assert code == 2
    out = p.output()
    assert "--boards" in out and "board ids are 0-9999" in out
    for spec, says in [("0-3", "expected board ids=tags"), ("0=Big", "'Big' is not 1 to 32"),
                       ("12000=x", "board ids are 0-9999")]:  # fmt: skip
        p = fpgalab("worker", "--boards", "0", "--tags", spec,
                    "--backend", "tests.fakes:FakeBackend")  # fmt: skip
        assert p.proc.wait(START_TIMEOUT) == 2
        assert says in p.output() and "FPGALAB_BOARD_TAGS (--tags)" in p.output()


#: A lab file with a mistake in board 3's bridge: its port is missing.
BAD_LAB = """
[[board]]
id = 3
bridge = { kind = "uart" }
program = { board = "ulx3s" }
"""


@pytest.mark.parametrize(
    "args",
    [("worker",), ("worker", "--boards", "3"), ("serve", "--port", "0")],
    ids=["worker", "worker-boards", "serve"],
)
def test_a_bad_lab_file_stops_at_once_with_status_2(
    fpgalab: Callable[..., Proc], tmp_path: Path, args: tuple[str, ...]
) -> None:
    """A lab file with a mistake stops ``worker`` and ``serve`` at once with exit status 2 (a
    configuration error, as docs/lab.md says), naming the file, the board and the field;
    ``serve`` starts nothing first."""
    lab = tmp_path / "lab.toml"
    lab.write_text(BAD_LAB)
    p = fpgalab(*args, "--backend", "hardware", "--lab", str(lab))
    assert p.proc.wait(START_TIMEOUT) == 2, p.output()
    assert "lab.toml: board 3: bridge: port: missing (expected a string)" in p.output()
    assert "redis-server" not in p.output()
    assert not (tmp_path / "xdg-data" / "fpgalab" / "redis").exists()


def test_a_setting_out_of_range_stops_at_once_with_status_2(
    fpgalab: Callable[..., Proc],
) -> None:
    """A setting the lab cannot take (here FPGALAB_MAX_TRANSFER_WORDS over the schema's
    65,536) stops the process with exit status 2 and one line naming the variable."""
    p = fpgalab("api", "--port", "0", env={"FPGALAB_MAX_TRANSFER_WORDS": "100000"})
    assert p.proc.wait(START_TIMEOUT) == 2, p.output()
    out = p.output()
    assert "FPGALAB_MAX_TRANSFER_WORDS: 100000 is over 65,536" in out
    assert "Traceback" not in out


# -- the lab's data and secrets ------------------------------------------------------------

#: Distinctive secrets, so that a copy anywhere is visible.
API_KEY = "alice-key-0d5f3a9b1c"
REDIS_PASSWORD = "redis-pw-6b2e8c41f7"
ALICE = {"X-API-Key": API_KEY}

#: Run as another local user: connect to the Redis URL given, print the reply or the name
#: of the error (system Python, isolated: it must not need anything of root's).
CONNECT = """
import socket, sys
from urllib.parse import unquote, urlsplit
url = urlsplit(sys.argv[1])
try:
    if url.scheme == "unix":
        s = socket.socket(socket.AF_UNIX)
        s.connect(unquote(url.path))
    else:
        s = socket.create_connection((url.hostname, url.port or 6379), timeout=5)
    s.sendall(b"PING\\r\\n")
    print(s.recv(64))
except OSError as exc:
    print(type(exc).__name__)
"""


def child(p: Proc, what: str) -> int:
    """The one child of ``p`` whose command line holds ``what``."""
    found = [pid for pid in p.children if what in cmdline(pid)]
    assert len(found) == 1, [cmdline(pid) for pid in p.children]
    return found[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_holds_no_secret(pid: int, *secrets: str) -> None:
    """Neither the environment nor the command line of ``pid`` holds any of ``secrets``,
    nor the API keys' variable or a Redis URL argument."""
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    args = Path(f"/proc/{pid}/cmdline").read_bytes()
    for secret in secrets:
        assert secret.encode() not in environ and secret.encode() not in args, secret
    assert b"FPGALAB_API_KEYS" not in environ.upper()
    assert b"--redis-url" not in args


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports (IPv4 and IPv6) that process ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in (Path(f"/proc/{pid}/net/tcp"), Path(f"/proc/{pid}/net/tcp6")):
        for line in table.read_text().splitlines()[1:] if table.exists() else []:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def connect_as_nobody(url: str) -> str:
    """What uid/gid 65534 gets when it connects to ``url``: a reply, or an error's name."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or python is None:
        pytest.skip("needs root (to act as another user) and a system python3")
    run = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I", "-c",
         CONNECT, url],
        capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=20,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def private_redis_url(p: Proc) -> str:
    found = re.search(r"private redis-server on (\S+), data in", p.output())
    assert found, p.output()
    return found.group(1)


def acl_commands() -> list[list[str]]:
    """The ``ACL SETUSER fpgalab`` lines of docs/operations.md, as commands."""
    lines = [ln.split() for ln in OPERATIONS.read_text().splitlines()]
    found = [ln for ln in lines if ln[:3] == ["ACL", "SETUSER", "fpgalab"]]
    assert found, "docs/operations.md shows no ACL SETUSER fpgalab"
    return found


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder under /tmp that every user may enter (0755), removed afterwards: below it,
    only the lab's own modes keep another user out (pytest's tmp_path is 0700 itself)."""
    folder = Path(tempfile.mkdtemp(prefix="fpgalab-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_serve_gives_its_worker_no_api_key_and_no_redis_url_argument(
    fpgalab: Callable[..., Proc], tmp_path: Path
) -> None:
    """With FPGALAB_API_KEYS set, neither the worker's nor the private redis-server's
    environment or command line holds a key, the worker gets its Redis URL in its
    environment, and the API still asks for, and accepts, the key."""
    p = serve(fpgalab, env={"FPGALAB_API_KEYS": f"alice={API_KEY}"})
    with httpx.Client(base_url=p.base_url, timeout=10, trust_env=False, headers=ALICE) as c:
        whole_cycle(c)
        assert c.get("/fpga", headers={"X-API-Key": ""}).status_code == 401
    worker = child(p, "service.cli worker")
    assert_holds_no_secret(worker, API_KEY)
    assert_holds_no_secret(child(p, "redis-server"), API_KEY)
    url = private_redis_url(p)
    assert f"FPGALAB_REDIS_URL={url}".encode() in Path(f"/proc/{worker}/environ").read_bytes()


def test_serve_keeps_its_data_and_its_private_redis_from_other_users(
    fpgalab: Callable[..., Proc], open_folder: Path
) -> None:
    """The data folder and the private Redis's are 0700 and Redis's files open to no other
    user; the redis-server listens on no TCP port, and another local user (uid 65534)
    trying its socket is refused."""
    p = serve(fpgalab, env={"XDG_DATA_HOME": str(open_folder)})
    with httpx.Client(base_url=p.base_url, timeout=10, trust_env=False) as c:
        whole_cycle(c)  # so that the AOF holds a design
    data = open_folder / "fpgalab"
    assert mode(data) == 0o700 and mode(data / "redis") == 0o700
    files = list((data / "redis").rglob("*"))
    assert any(f.name.endswith(".aof") for f in files), files
    assert {f.name: oct(mode(f)) for f in files if mode(f) & 0o077} == {}

    url = private_redis_url(p)
    assert listening_tcp_ports(child(p, "redis-server")) == set()
    with redis.Redis.from_url(url) as r:
        assert r.config_get("port") == {"port": "0"}
    assert connect_as_nobody(url) == "PermissionError"


def test_serve_tightens_a_data_folder_open_to_other_users(
    fpgalab: Callable[..., Proc], tmp_path: Path
) -> None:
    """A data folder and a private Redis folder left mode 0755 (by an older lab, or a
    umask) are made 0700 at start, with one log line for each."""
    data = tmp_path / "xdg" / "fpgalab"
    (data / "redis").mkdir(parents=True)
    for folder in (data, data / "redis"):
        folder.chmod(0o755)
    p = serve(fpgalab, env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert mode(data) == 0o700 and mode(data / "redis") == 0o700
    for folder in (data, data / "redis"):
        line = f"{folder} was mode 0755, open to other users: tightened to 0700"
        assert p.output().count(line) == 1, p.output()


def test_serve_reaches_a_shared_redis_as_the_documented_acl_user_with_a_password_file(
    fpgalab: Callable[..., Proc], tmp_path: Path
) -> None:
    """Against a redis-server that requires passwords, as the ``fpgalab`` ACL user of
    docs/operations.md with its password in FPGALAB_REDIS_PASSWORD_FILE: the whole cycle
    runs, Redis denies the lab nothing, and no process's environment or command line
    holds the password or a key."""
    server = RedisServer(tmp_path / "shared", password="admin-pw-31c9d0").start()
    try:
        with redis.Redis.from_url(server.url, password="admin-pw-31c9d0") as admin:
            for command in acl_commands():
                admin.execute_command(*(w.replace(">PASSWORD", f">{REDIS_PASSWORD}")
                                        for w in command))  # fmt: skip
            password_file = tmp_path / "redis-password"
            password_file.write_text(REDIS_PASSWORD + "\n")
            password_file.chmod(0o600)
            env = {
                "FPGALAB_REDIS_URL": f"redis://fpgalab@127.0.0.1:{server.port}/0",
                "FPGALAB_REDIS_PASSWORD_FILE": str(password_file),
                "FPGALAB_API_KEYS": f"alice={API_KEY}",
            }
            p = serve(fpgalab, env=env)
            with httpx.Client(base_url=p.base_url, timeout=10, trust_env=False,
                              headers=ALICE) as c:  # fmt: skip
                whole_cycle(c)
                assert c.get("/metrics").status_code == 200  # its reads are allowed too
                # a pool job: placed at once (the pools' sets), and one no board can take
                design = {"file": ("d.py", b"# d\nDesign = None\n")}
                placed = c.post("/submit", files=design, data={"platform": "sim"})
                assert placed.status_code == 202 and placed.json()["fpga_id"] is not None
                assert c.get(f"/jobs/{placed.json()['job_id']}").json()["queue_position"] == 0
                never = c.post("/submit", files=design, data={"tags": "gpu"})
                assert never.json()["detail"]["error"] == "no_matching_board", never.text
                # the event log: replayed (XINFO, XRANGE), read live (XREVRANGE, XREAD)
                with c.stream("GET", "/events", params={"after": "0"}) as events:
                    assert next(events.iter_lines()).startswith("event: ")
            assert admin.acl_log() == []
        assert_holds_no_secret(child(p, "service.cli worker"), API_KEY, REDIS_PASSWORD)
        assert REDIS_PASSWORD not in p.output()
        assert stop(p, signal.SIGTERM) == 0
    finally:
        server.stop()


def test_a_worker_started_with_api_keys_warns_that_it_needs_none(
    fpgalab: Callable[..., Proc], redis_url: str
) -> None:
    """``fpgalab worker`` with FPGALAB_API_KEYS in its environment serves its boards and
    warns that it needs no keys and that they are readable in /proc/<pid>/environ."""
    p = fpgalab(
        "worker", "--boards", "0", "--backend", "tests.fakes:FakeBackend",
        "--redis-url", redis_url, env={"FPGALAB_API_KEYS": f"alice={API_KEY}"},
    )  # fmt: skip
    poll(lambda: "serving boards" in p.output(), START_TIMEOUT, "the worker serving")
    out = p.output()
    assert "a worker needs no API keys" in out and f"/proc/{p.proc.pid}/environ" in out
    assert API_KEY not in out
    p.proc.terminate()
    assert p.proc.wait(STOP_TIMEOUT) == 0
