"""The host side of the simulator link takes the simulator's replies as hostile input: it
runs the tenant's model, which can write to its own socket (``$fopen`` of
``/proc/self/fd/N``). A reply that claims more than its request can have is refused
before anything is allocated for it, and the board is failed, not trusted.

The simulator here is a test double: a ``sleep`` process stands for its process and the
test writes its replies on the other end of a socket pair."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fpgalab.sim.board import BoardFailure, SimBoard
from fpgalab.sim.protocol import REPLY, Command, Status

FORGED = "import socket, sys\ns = socket.socket(fileno=int(sys.argv[1]))\nwhile s.recv(65536): pass"


@pytest.fixture
def board(tmp_path: Path) -> Iterator[tuple[SimBoard, socket.socket]]:
    """A SimBoard wired to a forged simulator: (the board, the simulator's end)."""
    ours, theirs = socket.socketpair()
    sim = SimBoard(0, tmp_path, tools=None)  # type: ignore[arg-type]  # never builds
    # the simulator's process: reads requests until the board hangs up, then exits
    proc = subprocess.Popen([sys.executable, "-c", FORGED, str(theirs.fileno())],
                            pass_fds=[theirs.fileno()])  # fmt: skip
    sim._proc, sim._sock = proc, ours
    yield sim, theirs
    theirs.close()
    proc.kill()
    proc.wait()


@pytest.mark.parametrize(
    "reply",
    [
        REPLY.pack(Status.OK, 0, 0, 0xFFFF_FFFF, 0),  # 16 GiB of words for a 2-word read
        REPLY.pack(Status.OK, 0, 0, 3, 0),  # one word more than asked for
        REPLY.pack(77, 0, 0, 0, 0),  # a status no board has
    ],
    ids=["huge", "more-words", "bad-status"],
)
def test_a_forged_reply_fails_the_board(
    board: tuple[SimBoard, socket.socket], reply: bytes
) -> None:
    sim, theirs = board
    theirs.sendall(reply + b"\0" * 12)
    with pytest.raises(BoardFailure, match="malformed reply"):
        sim.request(Command.READ, 0x100, 2)
    assert sim.model is None and sim._sock is None  # failed: nothing more is read from it


@pytest.mark.parametrize(
    "reply",
    [
        REPLY.pack(Status.OK, 0, 0, 1, 0xFFFF_FFFF),  # 4 GiB of replies for one read
        REPLY.pack(Status.OK, 0, 0, 5, 0),  # more replies than requests
        # one reply of 3 words to a read of 2: as many bytes as the batch may take
        REPLY.pack(Status.OK, 0, 0, 1, REPLY.size + 12)
        + REPLY.pack(Status.OK, 0, 0, 3, 0)
        + b"\0" * 12,
    ],
    ids=["huge", "too-many", "more-words"],
)
def test_a_forged_batch_reply_fails_the_board(
    board: tuple[SimBoard, socket.socket], reply: bytes
) -> None:
    sim, theirs = board
    theirs.sendall(reply)
    requests = [(Command.READ, 0x100, 2, b""), (Command.WRITE, 0x200, 1, b"\1\0\0\0")]
    with pytest.raises(BoardFailure, match="malformed batch reply"):
        sim.batch(requests)
    assert sim._sock is None
