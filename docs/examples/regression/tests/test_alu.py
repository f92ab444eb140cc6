"""The ALU (``../alu.py``) on a board of the lab: each operation, many operands at once,
and the bus error past its registers. Every test here shares one reservation: the design
is built and programmed once."""

import operator
import random

import pytest

from fpgalab.client import BoardSession, JobFailed, Read, Write

pytestmark = pytest.mark.fpgalab(design="../alu.py")

A, B, OP, RESULT, ID = range(5)  # word offsets in the user region
ALU_ID = 0xA1000001
MASK = 0xFFFF_FFFF
#: name: (OP code, what the ALU should compute)
OPS = {
    "add": (0, operator.add),
    "sub": (1, operator.sub),
    "and": (2, operator.and_),
    "or": (3, operator.or_),
    "xor": (4, operator.xor),
    "shl": (5, lambda a, b: a << (b % 32)),
    "shr": (6, lambda a, b: a >> (b % 32)),
}


def word(board: BoardSession, offset: int) -> int:
    """The byte address of the ALU's word ``offset``."""
    return board.region("user").base + 4 * offset


def test_identifies_itself(fpga_board: BoardSession) -> None:
    """The ID word says the ALU is on the board."""
    assert fpga_board.read(word(fpga_board, ID)) == [ALU_ID]


@pytest.mark.parametrize("name", OPS)
def test_operation(fpga_board: BoardSession, name: str) -> None:
    """A, B and OP written in one go; RESULT is A OP B in 32 bits."""
    code, model = OPS[name]
    a, b = 0x8765_4321, 0x0000_1234
    fpga_board.write(word(fpga_board, A), [a, b, code])
    assert fpga_board.read(word(fpga_board, RESULT)) == [model(a, b) & MASK]


def test_many_operands_in_one_job(fpga_board: BoardSession) -> None:
    """300 random operand sets (900 writes, 300 reads) in one transact: one job."""
    rng = random.Random(13)
    base = word(fpga_board, A)
    ops: list[Read | Write] = []
    expected = []
    for _ in range(300):
        a, b = rng.getrandbits(32), rng.getrandbits(32)
        code, model = OPS[rng.choice(list(OPS))]
        ops += [Write(base, [a, b, code]), Read(word(fpga_board, RESULT))]
        expected.append(model(a, b) & MASK)
    assert fpga_board.transact(ops).data == expected


def test_past_its_registers_is_a_bus_error(fpga_board: BoardSession) -> None:
    """Word 8 is not the ALU's: the read fails with a bus error."""
    with pytest.raises(JobFailed) as failed:
        fpga_board.read(word(fpga_board, 8))
    assert failed.value.result is not None and not failed.value.result.ok
