"""Twins: simulated boards that the hardware backend cannot tell from real ones at the
protocol level.

A twin has two doors, as a ULX3S has one FTDI cable doing two jobs:

- its **UART** (a TCP port; the backend opens ``socket://127.0.0.1:PORT`` as it would
  open ``/dev/ttyUSB0``): bytes go to the SoC's real UARTBone gateware in a Verilator
  simulation (``sim.twins.harness``), and its answers come back. The connection stays
  open across reprogramming, as a serial port does. While the twin is unconfigured
  the bytes go nowhere and nothing answers.
- its **JTAG** (an XVC server, ``sim.twins.xvc``): openFPGALoader streams a ``.bit`` into a
  model of the ECP5's TAP. The twin looks the bitstream up by content hash in the
  hardware build cache (``hil.build.ecp5``), which keeps the design each bitstream was
  built from, builds the same SoC for simulation (``TWIN_CONFIG``: the UART PHY
  replaced by a byte stream, the identifier of the bitstream) and restarts its
  simulator with it. An unknown bitstream leaves the twin unconfigured, and the
  backend's identifier check then fails the load, as on a real board.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import selectors
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from fpgalab.hil.build.ecp5 import Bitstream, BitstreamBuilder
from fpgalab.hil.build.errors import BuildError
from fpgalab.hil.build.sandbox import NOBODY, Sandbox
from fpgalab.hil.gateware.config import TWIN_CONFIG
from fpgalab.sim.board import BoardFailure, SimBoard
from fpgalab.sim.protocol import recv_exactly
from fpgalab.sim.toolchain import find
from fpgalab.sim.twins.harness import HELLO
from fpgalab.sim.twins.peers import lab_peer
from fpgalab.sim.twins.xvc import XVCServer
from fpgalab.sim.verilator import Builder

log = logging.getLogger("fpgalab.twin")

LogFn = Callable[[str], None]

#: The bridge deadline (beyond wire time) a twin's lab file asks for: a simulated
#: board on a busy 2-core machine may take a while longer than a real one.
BRIDGE_TIMEOUT = 5.0


class TwinSimulator(SimBoard):
    """A simulator running ``sim.twins.harness``: a raw byte pipe to the SoC's UART."""

    harness = "fpgalab.sim.twins.harness"

    def _handshake(self, sock: socket.socket) -> bool:
        return recv_exactly(sock, len(HELLO)) == HELLO

    def _goodbye(self, sock: socket.socket) -> None:
        """Nothing to say: the harness ends when its socket closes."""

    @property
    def sock(self) -> socket.socket | None:
        return self._sock


@dataclass(frozen=True)
class TwinInfo:
    index: int
    host: str
    uart_port: int
    xvc_port: int

    @property
    def uart_url(self) -> str:
        return f"socket://{self.host}:{self.uart_port}"


class Twin:
    """One twin board: its UART listener and relay, its XVC server, its simulator."""

    def __init__(
        self,
        index: int,
        bitstreams: BitstreamBuilder,
        models: Builder,
        run_dir: Path,
        host: str = "127.0.0.1",
        uart_port: int = 0,
        xvc_port: int = 0,
    ) -> None:
        self.index = index
        self.bitstreams = bitstreams
        self.models = models
        self.host = host
        self.sim = TwinSimulator(index, run_dir, find(), models.sandbox)
        #: Serialises (re)configuration against forwarding bytes to the simulator.
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, uart_port))
        self._client: socket.socket | None = None
        #: The running simulator's socket, once it has said hello (the relay must not
        #: read the hello itself); None while unconfigured.
        self._sim_sock: socket.socket | None = None
        #: The socket of a simulator that has ended (EOF), not to be watched again.
        self._ended: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._closing = False
        self.xvc = XVCServer(host=host, port=xvc_port, on_bitstream=self._load)
        self._relay = threading.Thread(target=self._serve, name=f"twin-{index}-uart", daemon=True)
        # Simulators are started from this long-lived thread: the sandbox kills a process
        # when the thread that started it ends (PR_SET_PDEATHSIG), and the XVC server
        # calls its hook from a thread per load.
        self._loads: queue.Queue[tuple[bytes, Future[bool]] | None] = queue.Queue()
        self._loader = threading.Thread(target=self._load_loop, name=f"twin-{index}-load",
                                        daemon=True)  # fmt: skip
        #: The SHA-256 of the bitstream the twin runs, None while unconfigured.
        self.running: str | None = None

    # Lifecycle ----------------------------------------------------------------------------------

    def start(self) -> TwinInfo:
        self.xvc.start()
        self._relay.start()
        self._loader.start()
        return self.info

    @property
    def info(self) -> TwinInfo:
        return TwinInfo(self.index, self.host, self._listener.getsockname()[1], self.xvc.port)

    def close(self) -> None:
        self._closing = True
        self._wake()
        self.xvc.close()
        self._loads.put(None)
        if self._loader.is_alive():
            self._loader.join(timeout=60)
        if self._relay.is_alive():
            self._relay.join(timeout=5)
        with self._lock:
            self._sim_sock = None
            self.sim.stop()
            self.running = None
        self._listener.close()
        if self._client is not None:
            self._client.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def kill_simulator(self) -> None:
        """A fault for tests: the simulated board dies (its UART goes silent)."""
        pid = self.sim.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, 9)

    # Configuration ----------------------------------------------------------------------------

    def _load(self, bitstream: bytes) -> bool:
        """The XVC server's hook: configure from the loader thread, wait for the outcome."""
        if self._closing:
            return False
        outcome: Future[bool] = Future()
        self._loads.put((bitstream, outcome))
        return outcome.result()

    def _load_loop(self) -> None:
        while (item := self._loads.get()) is not None:
            bitstream, outcome = item
            try:
                outcome.set_result(self._configure(bitstream))
            except Exception as exc:  # the hook's caller reports it; the twin goes on
                outcome.set_exception(exc)

    def _configure(self, bitstream: bytes) -> bool:
        digest = hashlib.sha256(bitstream).hexdigest()
        found = self.bitstreams.by_sha256(digest)
        with self._lock:
            self._sim_sock = None
            self.sim.stop()
            self.running = None
            self._wake()
            if found is None:
                log.warning("twin %d: unknown bitstream %s: unconfigured", self.index, digest[:12])
                return False
            if refused := self._outside_the_slot(found):
                # as a real lab's rules would: the board never runs it
                log.warning("twin %d: bitstream %s refused: %s", self.index, digest[:12], refused)
                return False
            try:
                model = self.models.build(
                    found.filename, found.design_source(), self._log, ident=found.ident
                )
                self.sim.start(model)
                self._sim_sock = self.sim.sock
            except (BuildError, BoardFailure) as exc:
                log.error("twin %d: cannot model bitstream %s: %s", self.index, digest[:12], exc)
                return False
            self.running = digest
            log.info("twin %d: running %s (%s)", self.index, found.ident, digest[:12])
        self._wake()
        return True

    def _outside_the_slot(self, found: Bitstream) -> str:
        """Why a bitstream reaches outside its user slot (ports, pins, primitives the base
        SoC does not have), '' if it does not."""
        if found.filename is None:
            return ""  # the base SoC itself
        base = self.bitstreams.lookup(self.bitstreams.key(None, None))
        if base is None:
            return "no base SoC in the build cache to compare it with"
        return "; ".join(found.boundary.beyond(base.boundary))

    def _log(self, line: str) -> None:
        log.debug("twin %d: %s", self.index, line)

    # The UART relay -----------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            while not self._closing:
                sel.register(self._listener, selectors.EVENT_READ, "accept")
                sel.register(self._wake_r, selectors.EVENT_READ, "wake")
                client, sim_sock = self._client, self._sim_sock
                if client is not None:
                    sel.register(client, selectors.EVENT_READ, "client")
                if sim_sock is not None and sim_sock is not self._ended:
                    sel.register(sim_sock, selectors.EVENT_READ, "sim")
                try:
                    events = sel.select(timeout=1.0)
                finally:
                    for key in list(sel.get_map().values()):
                        sel.unregister(key.fileobj)
                for key, _ in events:
                    self._handle(key.data, key.fileobj)

    def _handle(self, what: str, fileobj: object) -> None:
        if what == "wake":
            os.read(self._wake_r, 4096)
        elif what == "accept":
            conn, peer = self._listener.accept()
            if not lab_peer(conn):
                # a twin's UART is its tenant's board: only the lab (its user) opens it
                log.warning("twin %d: UART client %s refused: not the lab's user", self.index, peer)
                conn.close()
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._client is not None:  # a new opener takes the port over
                self._client.close()
            self._client = conn
        elif what == "client":
            assert isinstance(fileobj, socket.socket)
            data = self._recv(fileobj)
            if data is None:
                fileobj.close()
                self._client = None
                return
            with self._lock:
                sim_sock = self._sim_sock
                if sim_sock is not None and self.sim.alive():
                    with contextlib.suppress(OSError):
                        sim_sock.sendall(data)
                # Unconfigured (or dead): the bytes go nowhere, as on a blank FPGA.
        elif what == "sim":
            assert isinstance(fileobj, socket.socket)
            data = self._recv(fileobj)
            if data is None:
                self._ended = fileobj  # the simulator ended: stop watching its socket
                return
            client = self._client
            if client is not None:
                with contextlib.suppress(OSError):
                    client.sendall(data)

    @staticmethod
    def _recv(sock: socket.socket) -> bytes | None:
        try:
            data = sock.recv(65536)
        except OSError:
            return None
        return data or None


class TwinLab:
    """Twins for some boards, and the lab file that points at them."""

    def __init__(
        self,
        boards: list[int],
        data_dir: Path,
        run_dir: Path | None = None,
        host: str = "127.0.0.1",
        uart_timeout: float = BRIDGE_TIMEOUT,
        sandbox: str = "bwrap",
        sandbox_uid: int = NOBODY,
    ) -> None:
        """``data_dir`` is the lab's: the hardware build cache is ``data_dir/hardware``;
        the twins' models go in ``data_dir/twin``, their simulators run in ``run_dir``;
        ``sandbox``, ``sandbox_uid``: how builds and simulators are confined."""
        self.data_dir = data_dir
        self.uart_timeout = uart_timeout
        jail = Sandbox(sandbox, sandbox_uid)
        self.bitstreams = BitstreamBuilder(data_dir / "hardware", sandbox=jail)
        self.models = Builder(data_dir / "twin", soc=TWIN_CONFIG, sandbox=jail)
        run_dir = run_dir or data_dir / "twin" / "boards"
        self.twins = {
            b: Twin(b, self.bitstreams, self.models, run_dir / str(b), host) for b in boards
        }

    def start(self) -> list[TwinInfo]:
        return [twin.start() for twin in self.twins.values()]

    def close(self) -> None:
        for twin in self.twins.values():
            twin.close()

    def lab_toml(self) -> str:
        """A lab file for the hardware backend: every board a twin."""
        lines = [
            "# Written by `fpgalab twin`: every board below is a twin (a simulated ULX3S).",
            "[lab]",
            'platform = "radiona_ulx3s"',
            'device = "LFE5U-25F"',
            "",
        ]
        for twin in self.twins.values():
            info = twin.info
            lines += [
                "[[board]]",
                f"id = {info.index}",
                f'bridge = {{ kind = "uart", port = "{info.uart_url}", '
                f"timeout = {self.uart_timeout} }}",
                f'program = {{ cable = "xvc-client", ip = "{info.host}", port = {info.xvc_port} }}',
                "",
            ]
        return "\n".join(lines)
