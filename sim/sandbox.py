"""Running a build step as a child process: its own session and work folder, a clean
environment, resource limits, a wall-clock timeout, and its output streamed line by
line as it comes.

The limits are applied by the child itself (``apply_limits``, first thing in
``sim.elaborate`` and ``sim.verilate``) rather than in a ``preexec_fn``, which is
unsafe in a threaded parent such as the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import selectors
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Lines of a step's output forwarded to the log before the rest is only counted.
MAX_FORWARDED_LINES = 20_000
MAX_LINE = 4000


@dataclass(frozen=True)
class Limits:
    #: CPU seconds per process.
    cpu: int = 600
    #: Address space per process (bytes).
    address_space: int = 4 << 30
    #: Largest file a process may write (bytes).
    file_size: int = 1 << 30
    open_files: int = 1024

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def apply_limits(limits: Mapping[str, int]) -> None:
    """In the child: set the limits, and die with the parent (Linux)."""
    pairs = {
        resource.RLIMIT_CPU: limits.get("cpu"),
        resource.RLIMIT_AS: limits.get("address_space"),
        resource.RLIMIT_FSIZE: limits.get("file_size"),
        resource.RLIMIT_NOFILE: limits.get("open_files"),
        resource.RLIMIT_CORE: 0,
    }
    for which, value in pairs.items():
        if value is not None:
            _, hard = resource.getrlimit(which)
            soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (soft, soft))
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl
            os._exit(1)


@dataclass
class Finished:
    returncode: int
    timed_out: bool
    seconds: float
    #: The last lines of output, for error summaries.
    tail: list[str]

    @property
    def signal_name(self) -> str | None:
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def clean_env(extra: Mapping[str, str], path: Sequence[str] = ()) -> dict[str, str]:
    """A minimal environment: nothing of the worker's leaks into a build."""
    env = {
        "PATH": os.pathsep.join([*path, "/usr/local/bin", "/usr/bin", "/bin"]),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        # Migen names signals in iteration order of sets: keep that reproducible.
        "PYTHONHASHSEED": "0",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def run(
    cmd: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    log: Callable[[str], None],
    prefix: str = "",
    tail_lines: int = 60,
) -> Finished:
    """Run ``cmd``, forward each output line to ``log``, and kill its whole process
    group at ``timeout`` seconds."""
    started = time.monotonic()
    deadline = started + timeout
    tail: deque[str] = deque(maxlen=tail_lines)
    forwarded = 0
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    timed_out = False
    pending = b""

    def emit(raw: bytes) -> None:
        nonlocal forwarded
        line = raw.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE]
        tail.append(line)
        forwarded += 1
        if forwarded <= MAX_FORWARDED_LINES:
            log(prefix + line)
        elif forwarded == MAX_FORWARDED_LINES + 1:
            log(f"{prefix}... (more output not shown)")

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                if not sel.select(min(left, 1.0)):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    emit(raw)
                if len(pending) > MAX_LINE:  # no newline in sight: do not hoard it
                    emit(pending)
                    pending = b""
            if pending:
                emit(pending)
            if not timed_out and not _exited(proc.pid, deadline):
                timed_out = True
        finally:
            # The leader is a zombie or still running, so its group id is still
            # its own: kill whatever is left of the session (make, compilers, ...).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.stdout.close()
    returncode = proc.wait()
    return Finished(returncode, timed_out, time.monotonic() - started, list(tail))


def _exited(pid: int, deadline: float) -> bool:
    """Wait, without reaping it, until ``pid`` has exited; False at the deadline."""
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
