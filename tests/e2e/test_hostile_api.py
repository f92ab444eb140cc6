"""A hostile design through the REST API fails its own job, with a one-line error that
says what it tried, while another board goes on serving its user.

The sandbox itself (every escape, every limit) is tested at the backend in
tests/sim/test_hostile.py; this is what a user of the lab sees of it.
"""

from __future__ import annotations

import asyncio
import re
import socket

import pytest

from tests.e2e.conftest import StartLab
from tests.e2e.test_api import BUILD_TIMEOUT, USER, Read, logs, read, reserve_design, reset, write
from tests.helpers import board, submit, wait_job

pytestmark = pytest.mark.sim


def caller(port: int) -> str:
    return f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n"


CHATTY = "while True:\n    print('x' * 1000)\n"


@pytest.mark.parametrize("name", ["caller.py", "chatty.py"])
async def test_a_hostile_design_fails_its_job_while_another_board_serves(
    start_lab: StartLab, example: Read, name: str
) -> None:
    """caller.py connects to a listener the test runs on the host's loopback (it gets no
    connection); chatty.py prints without end (stopped at 16 MiB, its job log bounded).
    Meanwhile board 8 runs its user's transfers, all of them right."""
    lab = await start_lab([7, 8])
    await reserve_design(lab, 8, "accumulator.v", example("accumulator.v"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        source = caller(listener.getsockname()[1]) if name == "caller.py" else CHATTY
        r = await submit(lab, 7, source, name)
        assert r.status_code == 202, r.text
        hostile = r.json()["job_id"]

        async def serve_board_8() -> int:
            """Board 8's user at work until the hostile build has ended: rounds done."""
            rounds = 0
            while True:
                await write(lab, 8, USER, [rounds, 1000])
                assert await read(lab, 8, USER, 3) == [rounds, 1000, rounds + 1000]
                rounds += 1
                status = (await lab.get(f"/fpga/7/jobs/{hostile}")).json()["status"]
                if status not in ("queued", "running"):
                    return rounds

        job, rounds = await asyncio.gather(
            wait_job(lab, 7, hostile, timeout=BUILD_TIMEOUT), serve_board_8()
        )
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody called

    assert job["status"] == "failed" and "\n" not in job["error"], job
    if name == "caller.py":
        assert re.fullmatch(r"caller\.py:2: ConnectionRefusedError: .*", job["error"]), job
    else:
        assert job["error"].endswith("printed more than 16 MiB of output and was stopped"), job
    text = await logs(lab, 7, hostile)
    assert job["error"] in text and len(text) < 32 << 20
    assert (await board(lab, 7))["state"] == "error"
    assert (await board(lab, 8))["state"] == "reserved" and rounds >= 1

    await reset(lab, 7)  # the design's board is usable again
    assert (await board(lab, 7))["health"] == "good"
