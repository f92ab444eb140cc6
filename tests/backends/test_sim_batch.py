"""The sim backend's list of transactions (``transact_many``): one request to the
simulator (``Command.BATCH``) that runs them in order and stops at the first that fails."""

from __future__ import annotations

import os
import random
import signal

import pytest

from fpgalab.backends.base import BoardError, Op, Transaction
from fpgalab.backends.sim import SimBackend
from fpgalab.sim.board import to_bytes
from fpgalab.sim.protocol import Command, Status
from tests.helpers import Log

pytestmark = pytest.mark.sim

SRAM = 0x0100_0000
SCRATCH = 0x0000_0004
BUS_ERRORS = 0x0000_0008
USER = 0x2000_0000
UNMAPPED = 0x4000_0000


def w(address: int, *words: int) -> Transaction:
    return Transaction(Op.WRITE, address, tuple(words))


def r(address: int, length: int = 1) -> Transaction:
    return Transaction(Op.READ, address, length=length)


def test_a_list_reads_back_what_it_wrote(sim: SimBackend) -> None:
    """Writes and reads in one list run in order: each read sees the writes before it,
    across burst boundaries (a 600-word write), and returns its own words."""
    sim.reset(0, Log())
    words = [random.getrandbits(32) for _ in range(600)]
    results = sim.transact_many(
        0,
        [w(SRAM, *words), r(SRAM + 4 * 254, 4), w(SRAM + 4 * 255, 7), r(SRAM + 4 * 254, 3),
         r(SCRATCH), w(SCRATCH, 0xA5A5_5A5A), r(SCRATCH), r(SRAM, 600)],
    )  # fmt: skip
    assert [x.ok for x in results] == [True] * 8
    assert [x.data for x in results[:7]] == [
        [], words[254:258], [], [words[254], 7, words[256]], [0x1234_5678], [], [0xA5A5_5A5A]
    ]  # fmt: skip
    assert results[7].data == [*words[:255], 7, *words[256:]]


def test_the_first_failure_ends_the_list(sim: SimBackend) -> None:
    """A bus timeout ends the list: it is the last result, with what it read before the
    failing word and the single transact's message; the writes after it never ran."""
    sim.reset(1, Log())
    last_sram_word = SRAM + 0x4_0000 - 4
    results = sim.transact_many(
        1,
        [w(last_sram_word, 77), w(SCRATCH, 1), r(last_sram_word, 3), w(SCRATCH, 2),
         w(SRAM, 3)],
    )  # fmt: skip
    assert [x.ok for x in results] == [True, True, False]
    single = sim.transact(1, r(last_sram_word, 3))
    assert results[2].data == single.data == [77]
    assert results[2].error == single.error
    assert (results[2].error or "").startswith("bus timeout at 0x01040000 (word 1 of 3)")
    assert sim.transact(1, r(SCRATCH)).data == [1]  # not 2
    assert sim.transact(1, r(SRAM)).data == [0]  # not 3
    # a slave's err (the empty user slot) stops it too, at once
    errs = sim.transact_many(1, [r(SCRATCH), w(USER, 1), w(SCRATCH, 5)])
    assert [x.ok for x in errs] == [True, False]
    assert (errs[1].error or "").startswith("bus error at 0x20000000 (word 0 of 1)")
    assert sim.transact(1, r(SCRATCH)).data == [1]


def test_an_address_the_bus_cannot_take_ends_the_list_before_it(sim: SimBackend) -> None:
    """A transaction that would run past the 32-bit space is refused without reaching
    the bus; the ones before it ran."""
    sim.reset(2, Log())
    results = sim.transact_many(2, [w(SCRATCH, 9), r(0xFFFF_FFFC, 2), w(SCRATCH, 10)])
    assert [x.ok for x in results] == [True, False]
    assert (results[1].error or "").startswith("bad address:")
    assert sim.transact(2, r(SCRATCH)).data == [9]
    assert sim.transact_many(2, []) == []


def test_a_thousand_mixed_ops_in_one_request(sim: SimBackend) -> None:
    """1,000 alternating writes and reads of 64 SRAM words in one list give the same
    words as the same transactions one by one."""
    sim.reset(3, Log())
    ops: list[Transaction] = []
    for i in range(1000):
        address = SRAM + 4 * random.randrange(64)
        ops.append(w(address, random.getrandbits(32)) if i % 2 else r(address))
    batched = sim.transact_many(3, ops)
    sim.reset(3, Log())
    one_by_one = [sim.transact(3, op) for op in ops]
    assert len(batched) == 1000 and all(x.ok for x in batched)
    assert [x.data for x in batched] == [x.data for x in one_by_one]
    assert sim.transact(3, r(BUS_ERRORS)).data == [0]


def test_the_raw_batch_command_stops_at_a_bad_request(sim: SimBackend) -> None:
    """The wire's batch takes the per-clock commands too, and an unaligned request ends
    it BAD_REQUEST; the simulator serves the next request as before."""
    sim.reset(4, Log())
    board = sim.board(4)
    replies = board.batch(
        [(Command.RAW_WRITE, SRAM, 2, to_bytes([5, 6])), (Command.READ, SRAM, 2, b""),
         (Command.RAW_READ, SRAM + 2, 1, b""), (Command.READ, SRAM, 1, b"")],
    )  # fmt: skip
    assert [x.status for x in replies] == [Status.OK, Status.OK, Status.BAD_REQUEST]
    assert replies[1].data == [5, 6] and replies[2].failed_at == SRAM + 2
    assert board.request(Command.READ, SRAM, 2).data == [5, 6]


def test_a_simulator_that_dies_fails_the_list(sim: SimBackend) -> None:
    """A list sent to a crashed simulator is a BoardError, as a single transaction is."""
    sim.reset(5, Log())
    os.kill(sim.board(5).pid or 0, signal.SIGKILL)
    with pytest.raises(BoardError, match="board 5: the simulator crashed"):
        sim.transact_many(5, [w(SRAM, 1), r(SRAM)])


def test_one_word_reads_and_writes_keep_every_bit(sim: SimBackend) -> None:
    """One-word transfers take the burst master's narrow ports (``wword``, ``rlast``):
    every bit pattern a word can hold goes through them and back unchanged, single and in
    a list, and agrees with what the wide ports move for a longer transfer."""
    sim.reset(0, Log())
    edges = [0xFFFF_FFFF, 0x8000_0000, 0x7FFF_FFFF, 0, 1, 0xDEAD_BEEF]
    for i, word in enumerate(edges):
        assert sim.transact(0, w(SRAM + 4 * i, word)).ok
        assert sim.transact(0, r(SRAM + 4 * i)).data == [word]
    assert sim.transact(0, r(SRAM, len(edges))).data == edges  # the wide read agrees
    flipped = [~word & 0xFFFF_FFFF for word in edges]
    listed = sim.transact_many(
        0, [t for i, word in enumerate(flipped) for t in (w(SRAM + 4 * i, word), r(SRAM + 4 * i))]
    )
    assert [res.data for res in listed[1::2]] == [[word] for word in flipped]
