"""A private lab for one test session (the pytest plugin's ``--fpgalab-local``):
``fpgalab serve`` — and for twins ``fpgalab twin`` first — as child processes on a free
port and a data folder of their own, stopped at the end. They are started as commands,
never imported: the client side imports nothing of the lab."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

#: The private lab's backends: the simulated lab, or twins behind the hardware backend.
BACKENDS = ("sim", "twins")
#: The folders of a lab's data folder that hold builds (kept in ``cache`` when given).
BUILD_FOLDERS = ("sim", "hardware", "twin")
#: Settings of the environment the private lab must not take from it: it is a lab of its
#: own (its Redis, port, data folder, no keys), whatever the shell points at.
NOT_INHERITED = frozenset(
    "FPGALAB_" + name
    for name in (
        "URL", "API_KEY", "API_KEYS", "API_KEYS_FILE", "REDIS_URL", "REDIS_PASSWORD_FILE",
        "DATA_DIR", "BACKEND", "LAB_FILE", "HOST", "PORT",
    )
)  # fmt: skip
#: Seconds ``fpgalab serve`` gets to stop its worker and Redis before it is killed.
STOP_GRACE = 45.0
_PR_SET_PDEATHSIG = 1


class LabStartError(Exception):
    """The private lab did not start (the message says why, and ends with its log)."""


def _dies_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM if the test session dies (even SIGKILLed)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalLab:
    """``fpgalab serve`` of ``boards`` boards (ids 0 to boards-1) on ``backend``, with a
    new data folder; its build folders live in ``cache`` when given (kept across runs, so
    the base SoC is built once). Everything the lab prints goes to ``log_path``."""

    def __init__(
        self, log_path: Path, *, backend: str = "sim", boards: int = 2,
        cache: Path | None = None, timeout: float = 900.0,
    ) -> None:  # fmt: skip
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.log_path = log_path
        self.backend = backend
        self.boards = boards
        self.cache = cache
        self.timeout = timeout
        self.port = 0
        self.data_dir: Path | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def describe(self) -> str:
        what = "simulated boards" if self.backend == "sim" else "twins (hardware backend)"
        return f"a private lab of {self.boards} {what}" + (f" on {self.url}" if self.port else "")

    def tail(self, lines: int = 30) -> list[str]:
        """The last lines of the lab's log."""
        try:
            with self.log_path.open(errors="replace") as f:
                return list(deque(f, lines))
        except OSError:
            return []

    def _fail(self, why: str) -> LabStartError:
        tail = "".join(self.tail(20)).rstrip()
        return LabStartError(f"{why}\n--- the lab's log ({self.log_path}), its end:\n{tail}")

    # Starting -----------------------------------------------------------------------------

    def start(self) -> str:
        """Start the lab; return its URL once all its boards are ready."""
        missing = [m for m in ("uvicorn", "redis", "litex") if importlib.util.find_spec(m) is None]
        if missing:
            raise LabStartError(
                f"--fpgalab-local runs a lab here, which needs the lab extra ({missing[0]} "
                "is missing): pip install 'fpgalab[lab]'; or use --fpgalab-url"
            )
        self.data_dir = Path(tempfile.mkdtemp(prefix="fpgalab-lab-"))  # short: a socket path
        if self.cache is not None:
            self._link_cache(self.cache, self.data_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if k.upper() not in NOT_INHERITED}
        env["FPGALAB_DATA_DIR"] = str(self.data_dir)
        serve = [sys.executable, "-m", "fpgalab.service.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--boards", f"0-{self.boards - 1}"]  # fmt: skip
        deadline = time.monotonic() + self.timeout
        try:
            if self.backend == "twins":
                lab_file = self.data_dir / "twins.toml"
                self._spawn([sys.executable, "-m", "fpgalab.service.cli", "twin", "--boards",
                             f"0-{self.boards - 1}", "--lab-file", str(lab_file),
                             "--data-dir", str(self.data_dir)], env)  # fmt: skip
                self._wait(lambda: lab_file.exists(), deadline, "its twins did not start")
                serve += ["--backend", "hardware", "--lab", str(lab_file)]
            else:
                serve += ["--backend", "sim"]
            self._spawn(serve, env)
            self._wait(self._ready, deadline, "its boards were not ready")
        except BaseException:
            self.stop()
            raise
        return self.url

    @staticmethod
    def _link_cache(cache: Path, data_dir: Path) -> None:
        """The data folder's build folders, kept in ``cache``: shared by the labs that
        name it (the build cache is made for that), even at the same time."""
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in BUILD_FOLDERS:
            (cache / name).mkdir(mode=0o700, exist_ok=True)
            (data_dir / name).symlink_to((cache / name).resolve(), target_is_directory=True)

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        # a session of its own: a Ctrl-C at the terminal reaches the tests only, which
        # then release their boards while the lab still runs, and stop it after
        self._procs.append(
            subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_dies_with_parent if sys.platform == "linux" else None,
            )
        )  # fmt: skip

    def _ready(self) -> bool:
        try:
            answer = httpx.get(f"{self.url}/health", timeout=2, trust_env=False)
            return int(answer.json()["boards"]["ready"]) >= self.boards
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False

    def _wait(self, done: Callable[[], bool], deadline: float, what: str) -> None:
        while not done():
            for proc in self._procs:
                if proc.poll() is not None:
                    raise self._fail(f"the private lab stopped (exit status {proc.returncode})")
            if time.monotonic() > deadline:
                raise self._fail(f"the private lab did not start within {self.timeout:g} s: {what}")
            time.sleep(0.2)

    # Stopping -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the lab (serve first: it stops its worker and Redis; then the twins) and
        remove its data folder (not the cache). The log stays."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self._procs.clear()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)  # links into the cache: unlinked
            self.data_dir = None
