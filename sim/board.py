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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from fpgalab.hil.build.cgroups import Cgroups, Group, TreeLimits
from fpgalab.hil.build.pipeline import CHILD_PACKAGES
from fpgalab.hil.build.sandbox import Confinement, Sandbox, SandboxUnavailable
from fpgalab.hil.procs import comm, descendants, exited
from fpgalab.sim.protocol import (
    REPLY,
    REQUEST,
    Command,
    Status,
    is_write,
    pack_batch,
    recv_exactly,
    unpack_replies,
)
from fpgalab.sim.toolchain import SIM, Toolchain
from fpgalab.sim.verilator import Model

#: Threads a simulator may run (Verilator's, cocotb's and the harness's bridge thread).
SIMULATOR_PROCESSES = 32
#: Bounds on a simulator's whole process tree (a cgroup, where the machine gives one):
#: a model takes ~40 MiB and one core at most; a design's $system may fork.
SIMULATOR_TREE = TreeLimits(memory=1 << 30, processes=SIMULATOR_PROCESSES + 8, cpus=1.0)
#: A simulator's private /tmp, its working folder (memory-backed).
SIMULATOR_SCRATCH = 64 << 20
#: Bytes of a simulator's latest output kept for a failure's message.
OUTPUT_KEPT = 16384
#: Seconds a simulator may take from exec until it says hello.
START_TIMEOUT = 30.0
#: Seconds a request may take: this, plus per word (raw requests are the slow ones).
REQUEST_TIMEOUT = 30.0
REQUEST_TIMEOUT_PER_WORD = 1e-3


T = TypeVar("T")
#: The statuses a reply may carry: anything else is no reply of a board.
_STATUSES = frozenset(int(s) for s in Status)

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


def _descendant(root: int, name: str) -> int | None:
    """The first process under ``root`` (itself included) whose name is ``name``."""
    return next((pid for pid in descendants(root) if comm(pid) == name), None)


class OutputTail:
    """Drains a simulator's output pipe in a thread of its own (a simulator that prints
    must never block on it), keeping only the last ``keep`` bytes."""

    def __init__(self, pipe: IO[bytes], name: str, keep: int = OUTPUT_KEPT) -> None:
        self._pipe = pipe
        self._keep = keep
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, name=name, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        fd = self._pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._tail += chunk
                if len(self._tail) > 2 * self._keep:
                    del self._tail[: len(self._tail) - self._keep]

    def finish(self, timeout: float = 2.0) -> None:
        """Wait for the end of the output (the simulator has ended), then close the pipe."""
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._pipe.close()

    def text(self) -> str:
        with self._lock:
            return bytes(self._tail[-self._keep :]).decode("utf-8", "replace")


class SimBoard:
    """A simulator serving ``sim.protocol`` requests (``sim.harness``). Subclasses
    running another harness override ``harness``, ``_handshake`` and ``_goodbye``."""

    harness = "fpgalab.sim.harness"

    def __init__(
        self, index: int, run_dir: Path, tools: Toolchain, sandbox: Sandbox | None = None
    ) -> None:
        """``run_dir``: where an unsandboxed simulator gets its folders; ``sandbox``: the
        lab's (default: bubblewrap as uid 65534)."""
        self.index = index
        self.run_dir = run_dir
        self.tools = tools
        self.sandbox = sandbox if sandbox is not None else Sandbox()
        self.model: Model | None = None
        self.depth = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._sim_pid: int | None = None
        self._exe_name = ""
        self._sandboxed = False
        self._output: OutputTail | None = None
        self._group: Group | None = None
        #: The working folder of an unsandboxed simulator (None in the sandbox).
        self._scratch: Path | None = None

    # Lifecycle ----------------------------------------------------------------------------------

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
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sandbox = self.sandbox
        self._sandboxed = sandbox.enabled
        # A design is code: Verilog's $system, $fopen, $readmemh run in the simulator. It
        # runs sandboxed, seeing its model and our harness, writing only its private
        # /tmp, its working folder, which is new at every start and gone with it: nothing
        # it writes reaches the worker, or the next simulator (cocotb puts the working
        # folder first on sys.path). Unsandboxed, a fresh folder of ours stands in.
        self._scratch = None if sandbox.enabled else self._fresh_folder()
        workdir = sandbox.workdir(self._scratch or Path("/tmp"))
        env = self.tools.simulator_env(model.toplevel, workdir / "results.xml", self.harness)
        env["FPGALAB_SIM_FD"] = str(theirs.fileno())
        env["HOME"] = env["TMPDIR"] = str(workdir)
        confinement = Confinement(
            writable=(),
            readable=(model.folder, *CHILD_PACKAGES, SIM),
            processes=SIMULATOR_PROCESSES,
            tmp_size=SIMULATOR_SCRATCH,
        )
        self._sim_pid, self._exe_name = None, model.executable.name[:15]
        # Memory, tasks and CPU for the whole of it, however many processes it forks.
        self._group = Cgroups.detect().create(f"sim-{self.index}", SIMULATOR_TREE)
        try:
            cmd = sandbox.command([str(model.executable)], workdir, confinement, self._group)
            # Its output comes to us through a pipe, never a file it could swap for a link.
            self._proc = subprocess.Popen(
                cmd, cwd=self._scratch or model.folder, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=[theirs.fileno()],
                start_new_session=True,
            )  # fmt: skip
        except (OSError, SandboxUnavailable) as exc:
            ours.close()
            self._remove_scratch()
            self._end_group()
            raise BoardFailure(f"board {self.index}: cannot start the simulator: {exc}") from exc
        finally:
            theirs.close()
        assert self._proc.stdout is not None
        self._output = OutputTail(self._proc.stdout, f"board-{self.index}-output")
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

    def _fresh_folder(self) -> Path:
        """An empty working folder of our own (unsandboxed simulators only)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        folder = self.run_dir / f"run-{uuid.uuid4().hex[:12]}"
        folder.mkdir(mode=0o700)
        return folder

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)  # never follows a link
            self._scratch = None

    def _handshake(self, sock: socket.socket) -> bool:
        """Wait for the harness's hello; False if the simulator went away first."""
        hello = recv_exactly(sock, REPLY.size)
        if hello is None:
            return False
        self.depth = REPLY.unpack(hello)[3]
        return True

    def _goodbye(self, sock: socket.socket) -> None:
        """Ask the harness to end the simulation."""
        sock.sendall(REQUEST.pack(Command.QUIT, 0, 0, 0, 0))

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
        self._end_output()
        self._remove_scratch()
        self._end_group()

    def _end_output(self) -> None:
        if self._output is not None:
            self._output.finish()

    def _end_group(self) -> str | None:
        """Close the simulator's cgroup (killing what is left in it); the bound it hit."""
        group, self._group = self._group, None
        if group is None:
            return None
        bound = group.verdict()
        group.close()
        return bound

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
        self._end_output()
        self._remove_scratch()
        bound = self._end_group()
        tail = self.log_tail()
        if model is not None:
            tail = [line.replace(f"{model.folder}/src/", "") for line in tail]
        message = f"board {self.index}: the simulator {how} {during}"
        if bound:
            message += f": {bound}"
        # its words, one per line (the job's one-line error joins them; the log keeps them)
        return BoardFailure(message + (f"; its last output: {chr(10).join(tail)}" if tail else ""))

    def log_tail(self, lines: int = 8) -> list[str]:
        """The simulator's last words, without cocotb's routine chatter."""
        if self._output is None:
            return []
        text = self._output.text()
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

    def request(self, op: Command, address: int, count: int = 1, data: bytes = b"") -> Reply:
        """Run one transfer; raises BoardFailure if the simulator dies or hangs."""
        message = REQUEST.pack(op, 0, 0, address, count) + (data if is_write(op) else b"")
        return self._exchange(message, count, lambda sock: self._reply(sock, op, count))

    def batch(self, requests: Sequence[tuple[Command, int, int, bytes]]) -> list[Reply]:
        """Run (command, byte address, word count, words written) transfers in order, in
        one request; a reply for each one run: the first that is not OK is the last."""
        if not requests:
            return []
        words = sum(count for _, _, count, _ in requests)
        message = pack_batch([(op, address, count, data) for op, address, count, data in requests])
        most = sum(REPLY.size + (0 if is_write(op) else 4 * n) for op, _, n, _ in requests)

        def replies(sock: socket.socket) -> list[Reply]:
            status, _, _, done, size = REPLY.unpack(self._receive(sock, REPLY.size))
            found = None
            # the simulator runs the tenant's model: a size past the most its replies can
            # take is refused before anything is allocated for it
            if status == Status.OK and done <= len(requests) and size <= most:
                found = unpack_replies(self._receive(sock, size), [op for op, *_ in requests])
            if found is not None and any(
                r[1] > q[2] or r[0] not in _STATUSES for r, q in zip(found, requests, strict=False)
            ):
                found = None  # more words than its request asked for, or no status of ours
            if found is None or len(found) != done:
                raise self._failed(f"during the request (a malformed batch reply: {done} replies)")
            return [Reply(Status(s), n, at, from_bytes(data)) for s, n, at, data in found]

        return self._exchange(message, words, replies)

    def _exchange(self, message: bytes, words: int, answer: Callable[[socket.socket], T]) -> T:
        """Send ``message`` (moving ``words`` words) and read its ``answer``; a simulator
        that dies, hangs or breaks the link is a BoardFailure."""
        sock = self._sock
        if sock is None or not self.alive():
            raise self._failed("before the request")
        timeout = REQUEST_TIMEOUT + words * REQUEST_TIMEOUT_PER_WORD
        sock.settimeout(timeout)
        started = time.monotonic()
        try:
            sock.sendall(message)
            return answer(sock)
        except TimeoutError:
            took = time.monotonic() - started
            raise self._failed(f"(no answer in {took:.0f} s)", grace=0) from None
        except OSError as exc:
            raise self._failed(f"during the request ({exc})") from None

    def _receive(self, sock: socket.socket, size: int) -> bytes:
        got = recv_exactly(sock, size)
        if got is None:
            raise self._failed("during the request")
        return got

    def _reply(self, sock: socket.socket, op: int, count: int) -> Reply:
        status, _, _, done, failed_at = REPLY.unpack(self._receive(sock, REPLY.size))
        if done > count or status not in _STATUSES:  # not an answer (and not allocated)
            raise self._failed(
                f"during the request (a malformed reply: {done} words, status {status})"
            )
        raw = self._receive(sock, 4 * done) if not is_write(op) and done else b""
        return Reply(Status(status), done, failed_at, from_bytes(raw))
