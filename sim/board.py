"""One simulated board: a long-lived simulator process running a model with
``sim.harness``, and the host's end of the socket it serves.

The socket is one end of a ``socketpair`` the simulator inherits: no names, no
ports, and each side sees the other go away (EOF) at once. Not thread-safe: the
backend serialises calls per board.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sim.build import Model
from sim.protocol import REPLY, REQUEST, Op, Status, is_write, recv_exactly
from sim.sandbox import Confinement, Sandbox, SandboxUnavailable
from sim.toolchain import PROJECT_ROOT, Toolchain

#: Threads a simulator may run (Verilator's, cocotb's and the harness's bridge thread).
SIMULATOR_PROCESSES = 32
#: Seconds a simulator may take from exec until it says hello.
START_TIMEOUT = 30.0
#: Seconds a request may take: this, plus per word (raw requests are the slow ones).
REQUEST_TIMEOUT = 30.0
REQUEST_TIMEOUT_PER_WORD = 1e-3


#: cocotb's start-up lines, its results table, our test's docstring.
_ROUTINE = re.compile(r"^\s*-?[\d.-]+ns INFO |\*\*|Serve the host|^\s*$")


class BoardFailure(Exception):
    """The simulator died or stopped answering; it has been stopped."""


@dataclass
class Reply:
    status: Status
    #: Words transferred before the end (all of them when ``status`` is OK).
    done: int
    #: Byte address of the access that failed (when ``status`` is not OK).
    failed_at: int
    data: list[int] = field(default_factory=list)


def to_bytes(words: tuple[int, ...] | list[int]) -> bytes:
    packed = array("I", words)
    if packed.itemsize != 4:  # pragma: no cover - every Linux we run on has 4-byte "I"
        raise RuntimeError("array('I') is not 32-bit here")
    if sys.byteorder != "little":  # pragma: no cover
        packed.byteswap()
    return packed.tobytes()


def from_bytes(raw: bytes) -> list[int]:
    words = array("I")
    words.frombytes(raw)
    if sys.byteorder != "little":  # pragma: no cover
        words.byteswap()
    return words.tolist()


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


def _descendant(root: int, name: str) -> int | None:
    """The first process under ``root`` (itself included) whose name is ``name``."""
    return next((pid for pid in descendants(root) if comm(pid) == name), None)


class SimBoard:
    """A simulator serving ``sim.protocol`` requests (``sim.harness``). Subclasses
    running another harness override ``harness``, ``_handshake`` and ``_goodbye``."""

    harness = "sim.harness"

    def __init__(self, index: int, run_dir: Path, tools: Toolchain) -> None:
        self.index = index
        self.run_dir = run_dir
        self.tools = tools
        self.model: Model | None = None
        self.depth = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._sim_pid: int | None = None
        self._exe_name = ""
        self._sandboxed = False

    # Lifecycle ----------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.run_dir / "simulator.log"

    def alive(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            return False
        if not self._sandboxed or self._sim_pid is None:
            return True
        # the sandbox outlives its simulator by a moment: ask about the simulator itself
        return not exited(self._sim_pid)

    @property
    def pid(self) -> int | None:
        """The simulator's own process (inside the sandbox: not the sandbox's pid)."""
        if self._proc is None:
            return None
        if self._sim_pid is None:
            self._sim_pid = _descendant(self._proc.pid, self._exe_name)
        return self._sim_pid

    def start(self, model: Model) -> None:
        """Replace whatever runs with ``model``; returns once it serves requests."""
        self.stop()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = self.tools.simulator_env(model.toplevel, self.run_dir / "results.xml", self.harness)
        env["FPGALAB_SIM_FD"] = str(theirs.fileno())
        env["HOME"] = str(self.run_dir)
        # A design is code: Verilog's $system, $fopen, $readmemh run in the simulator.
        # It runs sandboxed, seeing its model and our harness, writing only its folder.
        confinement = Confinement(
            writable=(self.run_dir,),
            readable=(model.folder, PROJECT_ROOT / "sim", PROJECT_ROOT / "hil"),
            processes=SIMULATOR_PROCESSES,
        )
        self._sim_pid, self._exe_name = None, model.executable.name[:15]
        try:
            sandbox = Sandbox()
            self._sandboxed = sandbox.enabled
            cmd = sandbox.command([str(model.executable)], self.run_dir, confinement)
            with open(self.log_path, "wb") as out:
                self._proc = subprocess.Popen(
                    cmd, cwd=self.run_dir, env=env, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, pass_fds=[theirs.fileno()],
                    start_new_session=True,
                )  # fmt: skip
        except (OSError, SandboxUnavailable) as exc:
            ours.close()
            raise BoardFailure(f"board {self.index}: cannot start the simulator: {exc}") from exc
        finally:
            theirs.close()
        self._sock = ours
        self.model = model
        ours.settimeout(START_TIMEOUT)
        try:
            ready = self._handshake(ours)
        except OSError:
            ready = False
        if not ready:
            raise self._failed("while starting")
        _ = self.pid  # the simulator's own pid, found now that it runs (see ``alive``)

    def _handshake(self, sock: socket.socket) -> bool:
        """Wait for the harness's hello; False if the simulator went away first."""
        hello = recv_exactly(sock, REPLY.size)
        if hello is None:
            return False
        self.depth = REPLY.unpack(hello)[3]
        return True

    def _goodbye(self, sock: socket.socket) -> None:
        """Ask the harness to end the simulation."""
        sock.sendall(REQUEST.pack(Op.QUIT, 0, 0, 0, 0))

    def stop(self) -> None:
        """Stop the simulator (politely first); forget the model."""
        proc, sock = self._proc, self._sock
        self._proc = self._sock = None
        self.model = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(2.0)
                self._goodbye(sock)
            sock.close()
        if proc is not None:
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)

    def _failed(self, during: str, grace: float = 2.0) -> BoardFailure:
        """Stop what is left of the simulator and describe how it ended (it may take
        ``grace`` seconds to finish exiting after its socket closed)."""
        proc, model = self._proc, self.model
        if self._sock is not None:
            self._sock.close()
        self._proc = self._sock = None
        self.model = None
        if proc is None:
            return BoardFailure(f"board {self.index}: no simulator is running")
        try:
            code: int | None = proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None and code > 128 and self._sandboxed:
            code = 128 - code  # bubblewrap exits 128 + N when its child dies of signal N
        if code is None:
            self._kill(proc)
            how = "stopped answering and was killed"
        elif code < 0:
            try:
                how = f"crashed ({signal.Signals(-code).name})"
            except ValueError:
                how = f"crashed (signal {-code})"
        else:
            how = f"exited with status {code}"
        tail = self.log_tail()
        if model is not None:
            tail = [line.replace(f"{model.folder}/src/", "") for line in tail]
        detail = "\n".join(f"  {line}" for line in tail)
        message = f"board {self.index}: the simulator {how} {during}"
        return BoardFailure(message + (f"; its last output:\n{detail}" if detail else ""))

    def log_tail(self, lines: int = 8) -> list[str]:
        """The simulator's last words, without cocotb's routine chatter."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        kept = [line.strip() for line in text.splitlines() if not _ROUTINE.search(line)]
        return [line for line in kept if line][-lines:]

    def rss_bytes(self) -> int | None:
        if self._proc is None:
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    # Requests -----------------------------------------------------------------------------------

    def request(self, op: Op, address: int, count: int = 1, data: bytes = b"") -> Reply:
        """Run one transfer; raises BoardFailure if the simulator dies or hangs."""
        sock = self._sock
        if sock is None or not self.alive():
            raise self._failed("before the request")
        timeout = REQUEST_TIMEOUT + count * REQUEST_TIMEOUT_PER_WORD
        sock.settimeout(timeout)
        started = time.monotonic()
        try:
            sock.sendall(REQUEST.pack(op, 0, 0, address, count) + (data if is_write(op) else b""))
            header = recv_exactly(sock, REPLY.size)
            if header is None:
                raise self._failed("during the request")
            status, _, _, done, failed_at = REPLY.unpack(header)
            raw = b""
            if not is_write(op) and done:
                got = recv_exactly(sock, 4 * done)
                if got is None:
                    raise self._failed("during the request")
                raw = got
        except TimeoutError:
            took = time.monotonic() - started
            raise self._failed(f"(no answer in {took:.0f} s)", grace=0) from None
        except OSError as exc:
            raise self._failed(f"during the request ({exc})") from None
        return Reply(Status(status), done, failed_at, from_bytes(raw))
