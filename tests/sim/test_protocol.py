"""The wire format between a simulated board and its host: a batch of requests, and its
replies, packed and unpacked (no simulator needed)."""

from __future__ import annotations

from fpgalab.sim.board import to_bytes
from fpgalab.sim.protocol import (
    REPLY,
    REQUEST,
    Command,
    Status,
    pack_batch,
    pack_replies,
    unpack_batch,
    unpack_replies,
)

REQUESTS = [
    (Command.WRITE, 0x100, 2, to_bytes([1, 2])),
    (Command.READ, 0x100, 3, b""),
    (Command.RAW_WRITE, 0x200, 1, to_bytes([7])),
]


def test_a_batch_request_unpacks_to_what_was_packed() -> None:
    """A batch's header counts its requests and bytes; its body gives them back whole."""
    packed = pack_batch(REQUESTS)
    op, _, _, size, count = REQUEST.unpack_from(packed)
    assert (op, count, size) == (Command.BATCH, 3, len(packed) - REQUEST.size)
    assert unpack_batch(packed[REQUEST.size :], count) == REQUESTS


def test_a_malformed_batch_is_refused_whole() -> None:
    """A body shorter or longer than its requests say, or cut inside a write's words, is
    None: none of it runs."""
    body = pack_batch(REQUESTS)[REQUEST.size :]
    assert unpack_batch(body[:-1], 3) is None  # the last write's words cut short
    assert unpack_batch(body + b"\0", 3) is None  # bytes past the last request
    assert unpack_batch(body, 4) is None  # fewer requests than counted
    assert unpack_batch(body[: REQUEST.size + 8 + 4], 2) is None  # cut inside a header


def test_batch_replies_unpack_up_to_the_first_failure() -> None:
    """Replies carry a read's words only; a batch that stopped early has fewer replies."""
    replies = [(Status.OK, 2, 0, b""), (Status.TIMEOUT, 1, 0x104, to_bytes([9]))]
    packed = pack_replies(replies)
    status, _, _, done, size = REPLY.unpack_from(packed)
    assert (status, done, size) == (Status.OK, 2, len(packed) - REPLY.size)
    commands = [op for op, *_ in REQUESTS]
    assert unpack_replies(packed[REPLY.size :], commands) == replies
    assert unpack_replies(packed[REPLY.size : -1], commands) is None
