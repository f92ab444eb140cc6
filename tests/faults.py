"""A TCP proxy that breaks the link between a bridge and its board on request, for fault
tests and soak benchmarks: put it between ``hil.lab.uartbone`` and a twin (or any TCP board)
and switch faults while traffic flows.

Faults (``set_fault``), applied to each connection from the moment they are set:

- ``none``: forward both ways.
- ``drop``: forward ``after`` bytes of reply, then close both sides.
- ``garbage``: replace every reply byte with junk (the byte XOR 0x5A, so never itself).
- ``short``: forward ``after`` bytes of reply, then hold back the rest for good.
- ``silent``: swallow requests (the board never sees them, so never answers).

One thread accepts; two per connection pump bytes. Each connection to the proxy gets its
own connection to the target, and either side closing closes the other, as a cable does.
``close()`` shuts every socket down, which wakes every thread, and does not hang.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

__all__ = ["Fault", "FaultyLink"]

log = logging.getLogger("fpgalab.faults")

Fault = Literal["none", "drop", "garbage", "short", "silent"]
FAULTS: tuple[Fault, ...] = ("none", "drop", "garbage", "short", "silent")
_JUNK = 0x5A
_GARBLE = bytes(b ^ _JUNK for b in range(256))


@dataclass(frozen=True)
class _Setting:
    kind: Fault
    after: int
    #: Bumped by each ``set_fault``: a connection counts reply bytes from the latest one.
    generation: int


class _Pair:
    """A client's connection and the proxy's connection to the target for it."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class FaultyLink:
    """Listens on 127.0.0.1 (``.port``) and forwards to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, connect_timeout: float = 5.0) -> None:
        self.target = (target_host, target_port)
        self.connect_timeout = connect_timeout
        self._setting = _Setting("none", 0, 0)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # a fallback: close() also shuts the listener down
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        #: Connections accepted so far (a reconnect shows as one more).
        self.accepted = 0
        self._acceptor = threading.Thread(target=self._accept, name="faulty-accept", daemon=True)
        self._acceptor.start()

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def set_fault(self, kind: Fault, after: int = 0) -> None:
        """Apply ``kind`` from now on; ``after`` is the reply bytes ``drop`` and ``short``
        let through on each connection."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}: choose one of {', '.join(FAULTS)}")
        if after < 0:
            raise ValueError(f"after must be at least 0, not {after}")
        with self._lock:
            self._setting = _Setting(kind, after, self._setting.generation + 1)

    @property
    def fault(self) -> Fault:
        return self._setting.kind

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()
        for thread in [self._acceptor, *self._threads]:
            thread.join(timeout=2.0)

    def __enter__(self) -> FaultyLink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # Threads ----------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
            except OSError as exc:
                log.warning("faulty link: cannot reach %s:%d: %s", *self.target, exc)
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            with self._lock:
                if self._closing.is_set():
                    pair.close()
                    return
                self._pairs.add(pair)
                self._threads = [t for t in self._threads if t.is_alive()]
                for target, name in ((self._requests, "req"), (self._replies, "rep")):
                    thread = threading.Thread(
                        target=target, args=(pair,), name=f"faulty-{name}", daemon=True
                    )
                    self._threads.append(thread)
                    thread.start()

    def _finish(self, pair: _Pair) -> None:
        pair.close()
        with self._lock:
            self._pairs.discard(pair)

    def _requests(self, pair: _Pair) -> None:
        try:
            while data := pair.client.recv(65536):
                if self._setting.kind != "silent":
                    pair.upstream.sendall(data)
        except OSError:
            pass
        self._finish(pair)

    def _replies(self, pair: _Pair) -> None:
        generation, count = -1, 0
        try:
            while data := pair.upstream.recv(65536):
                setting = self._setting
                if setting.generation != generation:
                    generation, count = setting.generation, 0
                kind, room = setting.kind, max(setting.after - count, 0)
                count += len(data)
                if kind == "garbage":
                    data = data.translate(_GARBLE)
                elif kind in ("drop", "short"):
                    data = data[:room]
                elif kind == "silent":
                    data = b""
                if data:
                    pair.client.sendall(data)
                if kind == "drop" and count >= setting.after:
                    break
        except OSError:
            pass
        self._finish(pair)
