"""A hostile design through the REST API fails its own job, with a one-line error that
says what it tried, while another board goes on serving its user.

The sandbox itself (every escape, every limit) is tested at the backend in
tests/hil/build/test_hostile.py; this is what a user of the lab sees of it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from pathlib import Path

import pytest

from tests.designs import shell_design
from tests.e2e.conftest import StartLab
from tests.e2e.test_api import (
    BUILD_TIMEOUT,
    RUN_TIMEOUT,
    USER,
    Read,
    logs,
    post_run,
    read,
    reserve_design,
    reset,
    result_of,
    write,
)
from tests.helpers import board, submit, wait_job

pytestmark = pytest.mark.sim

SECRET = "s3cr3t-" + uuid.uuid4().hex


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


async def test_links_in_a_boards_folder_leak_nothing_and_reset_heals(
    start_lab: StartLab, example: Read, tmp_path: Path
) -> None:
    """A Verilog design that, on a write, turns its simulator's log and results into links
    to the worker's environment and to a host file, plants a Python module and ends the
    simulation: the failed run's error and log hold none of the worker's secrets, the host
    file is untouched, and release then reset bring the board back, healthy, for a next
    tenant who sees nothing of it."""
    secret = tmp_path / "host-secret"
    secret.write_text(f"{SECRET}\n")
    secret.chmod(0o600)
    attack = (
        "rm -f simulator.log results.xml; ln -s /proc/self/environ simulator.log; "
        f"ln -s {secret} results.xml; mkdir -p sim; touch sim/__init__.py; "
        f'echo \'open("{tmp_path}/owned", "w")\' > sim/harness.py; echo links planted'
    )
    lab = await start_lab([6])
    await reserve_design(lab, 6, "links.v", shell_design(attack, fatal=0).encode())
    job_id = await post_run(lab, 6, {"op": 1, "address": USER, "data": [1]})
    job = await wait_job(lab, 6, job_id, timeout=RUN_TIMEOUT)
    assert job["status"] == "failed", job
    seen = job["error"] + await logs(lab, 6, job_id) + str(await result_of(lab, 6, job_id))
    assert SECRET not in seen
    for entry in environment():
        assert entry not in seen

    await reset(lab, 6, "release")
    assert (await board(lab, 6))["health"] == "good"
    await reserve_design(lab, 6, "accumulator.v", example("accumulator.v"))
    await write(lab, 6, USER, [40, 2])
    assert await read(lab, 6, USER + 8) == [42]
    await reset(lab, 6)
    assert secret.read_text() == f"{SECRET}\n"
    assert not (tmp_path / "owned").exists()


def environment() -> list[str]:
    """The entries of this process's environment (the worker's, in these tests)."""
    raw = Path("/proc/self/environ").read_bytes().split(b"\0")
    return [entry.decode("utf-8", "replace") for entry in raw if b"=" in entry]


async def test_escape_sequences_in_a_designs_error_come_back_escaped_on_one_line(
    start_lab: StartLab,
) -> None:
    """A design whose error is a clipboard write (OSC 52), a link (OSC 8), a carriage
    return faking success, a bidi override and 900,000 characters: the job's error is one
    line, escaped and capped; the log keeps what the design printed."""
    lab = await start_lab([3])
    hostile = (
        "\x1b]52;c;b3duZWQ=\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\\u202eredro"
        + "x" * 900_000
        + "\rfake: build OK"
    )
    r = await submit(lab, 3, f"raise RuntimeError({hostile!r})\n", "escapes.py")
    assert r.status_code == 202, r.text
    job = await wait_job(lab, 3, r.json()["job_id"], timeout=BUILD_TIMEOUT)
    error = job["error"]
    assert job["status"] == "failed" and len(error) <= 1000 and error.endswith("…"), error
    assert error.startswith("escapes.py:1: RuntimeError: \\x1b]52;c;b3duZWQ=\\x07"), error
    assert not [ch for ch in error if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0], error
    assert "\u202e" not in error and "\\u202eredro" in error and "fake" not in error
    text = await logs(lab, 3, job["job_id"])
    said = [line[:200] for line in text.splitlines() if "52;c" in line]
    assert "\x1b]52;c;b3duZWQ=\x07" in text, said  # the log is the record, as printed
