"""Child processes of the lab: running one with a clean environment, a wall-clock
timeout and a cap on its output (streamed line by line as it comes, optionally with a
result pipe of its own), and what ``/proc`` says of a process and its descendants.

The sandbox (``hil.build.sandbox``) wraps a step's command; this runs what it made.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: Lines of a step's output forwarded to the log before the rest is only counted.
MAX_FORWARDED_LINES = 20_000
MAX_LINE = 4000
#: Bytes of output after which a step is killed: a design printing without end is
#: stopped, not just cut short in the log.
MAX_OUTPUT = 16 << 20
#: The environment variable naming a step's end of its result pipe (``hil.build.bundle``).
RESULT_FD_VARIABLE = "FPGALAB_RESULT_FD"


class TreeGroup(Protocol):
    """What ``run`` needs of a cgroup holding the step's processes (``hil.build.cgroups``)."""

    def kill(self) -> None: ...

    def verdict(self) -> str | None: ...


@dataclass
class Finished:
    returncode: int
    timed_out: bool
    seconds: float
    #: The last lines of output, for error summaries.
    tail: list[str]
    #: It printed more than the step's output cap and was killed for it.
    overflowed: bool = False
    #: What it wrote to its result pipe (``hil.build.bundle``), when it was given one.
    result: bytes = b""
    #: It wrote more than the result cap to that pipe and was killed for it.
    result_overflowed: bool = False
    #: The bound of its cgroup it hit, in words ("it reached its memory limit (…)").
    bound: str | None = None

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
    max_output: int = MAX_OUTPUT,
    max_result: int | None = None,
    group: TreeGroup | None = None,
) -> Finished:
    """Run ``cmd``, forward each output line to ``log``, and kill its whole process
    group at ``timeout`` seconds or past ``max_output`` bytes of output.

    ``max_result``: give the step a result pipe (its fd in ``FPGALAB_RESULT_FD``, see
    ``hil.build.bundle``) and collect at most that many bytes from it (more: it is killed).
    ``group``: the cgroup ``cmd`` joins (``Sandbox.command``): what is left of the step
    when it ends is killed through it, and the bound it hit is reported."""
    started = time.monotonic()
    deadline = started + timeout
    # run in bubblewrap (``hil.build.sandbox``): its leader is bwrap, its child the pid
    # namespace's init (after a cgroup's launcher, which execs it)
    sandboxed = any(os.path.basename(arg) == "bwrap" for arg in cmd)
    tail: deque[str] = deque(maxlen=tail_lines)
    forwarded = 0
    received = 0
    env = dict(env)
    result_r = result_w = -1
    if max_result is not None:
        result_r, result_w = os.pipe()
        env[RESULT_FD_VARIABLE] = str(result_w)
    try:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=[result_w] if result_w >= 0 else [],
        )  # fmt: skip
    except BaseException:
        for fd in (result_r, result_w):
            if fd >= 0:
                os.close(fd)
        raise
    if result_w >= 0:
        os.close(result_w)  # the step holds the only write end: EOF when it is gone
    assert proc.stdout is not None
    timed_out = overflowed = result_overflowed = False
    pending = b""
    result = bytearray()

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
        sel.register(proc.stdout, selectors.EVENT_READ, "output")
        if result_r >= 0:
            sel.register(result_r, selectors.EVENT_READ, "result")
        try:
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(min(left, 1.0)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    elif key.data == "result":
                        result += chunk
                        result_overflowed = len(result) > (max_result or 0)
                    else:
                        received += len(chunk)
                        overflowed = received > max_output
                        if not overflowed:
                            pending += chunk
                            *lines, pending = pending.split(b"\n")
                            for raw in lines:
                                emit(raw)
                            if len(pending) > MAX_LINE:  # no newline in sight: do not hoard it
                                emit(pending)
                                pending = b""
                if overflowed or result_overflowed:
                    break
            if pending:
                emit(pending)
            if not (timed_out or overflowed or result_overflowed):
                timed_out = not _exited(proc.pid, deadline)
        finally:
            if sandboxed:
                # The leader is bwrap, its child the pid namespace's init. Killed, that
                # init is reaped only once everything in the namespace is gone; bwrap
                # reaps it and exits: then nothing of the step is left.
                for child in _children(proc.pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(child, signal.SIGKILL)
                _exited(proc.pid, time.monotonic() + 10)
            # The leader is a zombie or still running, so its group id is still
            # its own: kill whatever is left of the session (make, compilers, ...).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if group is not None:
                group.kill()  # whatever left the session (setsid) is still in the group
            proc.stdout.close()
            if result_r >= 0:
                os.close(result_r)
    returncode = proc.wait()
    took = time.monotonic() - started
    kept = b"" if result_overflowed else bytes(result)
    bound = group.verdict() if group is not None else None
    return Finished(returncode, timed_out, took, list(tail), overflowed, kept, result_overflowed,
                    bound)  # fmt: skip


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a single-threaded process: bwrap, or a step)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


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


# What /proc says ------------------------------------------------------------------------------


def exited(pid: int) -> bool:
    """The process has died, all its threads too (a zombie, or gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def comm(pid: int) -> str:
    """The process's name (its first 15 characters), '' if it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(root: int) -> Iterator[int]:
    """``root`` and every process under it, nearest first."""
    todo = [root]
    while todo:
        pid = todo.pop(0)
        yield pid
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
