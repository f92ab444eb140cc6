"""The AsyncClient: the same calls as Client, awaited; ``async with reserve(...)``
gives the board back when the block ends, also when its task is cancelled."""

from __future__ import annotations

import asyncio

import pytest

import fpgalab.client as fc
from fpgalab.client import Read, Write
from tests.client.conftest import DESIGN, LiveLab, async_client, wait_idle
from tests.fakes import FakeBackend

USER = 0x2000_0000


async def test_an_async_session(fake_lab: LiveLab) -> None:
    """async with reserve(...) builds, then reads, writes and transacts on the board, and
    releases it at the end; the lab's calls are awaited."""
    async with async_client(fake_lab) as lab:
        assert (await lab.health()).ok
        async with lab.reserve(3, DESIGN, filename="d.py") as board:
            await board.write(USER, [4, 5])
            assert await board.read(USER, 2) == [4, 5]
            result = await board.transact([Write(USER, [6]), Read(USER, 2)])
            assert result.data == [6, 5] and len(result.results) == 2
            assert (await board.region("user")).base == USER
            assert "fake: elaborating d.py" in [line async for line in board.logs()]
            assert (await lab.board(3)).session is not None
        assert board.released and board.release_job is not None
        await lab.wait(3, board.release_job.job_id, timeout=10)
        assert (await lab.board(3)).state == "idle"


async def test_awaiting_reserve_and_releasing_by_hand(fake_lab: LiveLab) -> None:
    """reserve(...) may be awaited instead of entered; release(wait=True) frees the board."""
    async with async_client(fake_lab) as lab:
        board = await lab.reserve(None, DESIGN, filename="d.py")
        assert (await lab.session(board.fpga_id)).session_id == board.session_id
        await board.release(wait=True, timeout=10)
        assert (await lab.board(board.fpga_id)).state == "idle"


async def test_a_cancelled_task_releases_its_board(fake_lab: LiveLab) -> None:
    """A task cancelled inside the block (asyncio's Ctrl-C) gives the board back."""
    entered = asyncio.Event()

    async def use_board() -> None:
        async with async_client(fake_lab) as lab, lab.reserve(4, DESIGN, filename="d.py"):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(use_board())
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(wait_idle, fake_lab, 4)


async def test_a_failed_build_and_a_timeout(fake_lab: LiveLab, backend: FakeBackend) -> None:
    """A design that does not build raises JobFailed with its log's tail, and its board
    is given back; a wait past its timeout raises JobTimeout."""
    async with async_client(fake_lab) as lab:
        with pytest.raises(fc.JobFailed) as failed:
            await lab.reserve(5, b"# FAIL_BUILD\n", filename="broken.py")
        assert any("SyntaxError" in line for line in failed.value.log_tail)
        await asyncio.to_thread(wait_idle, fake_lab, 5)
        accepted = await lab.submit(6, b"# GATE\n", filename="gated.py")
        with pytest.raises(fc.JobTimeout):
            await lab.wait(6, accepted.job_id, timeout=0.3)
        lines = lab.logs(6, accepted.job_id, follow=True)
        assert (await anext(lines)).startswith("fpgalab: building gated.py")
        backend.release_gate()
        assert "fake: verilating" in [line async for line in lines]
