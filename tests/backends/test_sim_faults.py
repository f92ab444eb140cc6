"""A simulated board's process killed in the middle of a long transfer, through the API
with an in-process worker on the real ``SimBackend``; the end is checked against the
table in docs/operations.md ("Faults"). The other faults: ``tests/service/test_faults.py``.

(``tests/e2e/test_api.py`` kills a simulator before a one-word run and while one waits
frozen for its request; this kills one that is busy moving a 65,536-word read.)
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fpgalab.backends.sim import SimBackend
from fpgalab.service.store import Store
from tests.conftest import WorkerFactory
from tests.helpers import FINISHED, board, job, jobs_in_redis, submit, wait_for, wait_job

pytestmark = [pytest.mark.sim, pytest.mark.timeout(300)]  # a cold build cache: minutes

SCRATCH = 0x0000_0004
SRAM = 0x0100_0000
#: A cold build of one design while the other xdist worker builds too.
BUILD_TIMEOUT = 150.0

Read = Callable[[str], bytes]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def post_run(c: httpx.AsyncClient, fpga_id: int, body: dict[str, Any]) -> str:
    r = await c.post(f"/fpga/{fpga_id}/run", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


async def reserve(c: httpx.AsyncClient, fpga_id: int, example: Read) -> str:
    """Submit the accumulator example and wait until the board is reserved; the job id."""
    r = await submit(c, fpga_id, example("accumulator.v").decode(), "accumulator.v")
    assert r.status_code == 202, r.text
    done = await wait_job(c, fpga_id, r.json()["job_id"], timeout=BUILD_TIMEOUT)
    assert done["status"] == "complete", done
    return str(done["job_id"])


async def test_simulator_killed_during_a_long_transfer_fails_it_and_a_reset_heals(
    sim: SimBackend,
    client: httpx.AsyncClient,
    store: Store,
    start_worker: WorkerFactory,
    example: Read,
) -> None:
    """A simulator SIGKILLed while it moves a 65,536-word read fails that run (no partial
    data), puts the board in error with health unknown, fails the run queued behind it
    naming the state, and a reset brings a fresh simulator, idle and good."""
    await start_worker([5], fake=sim, wait_healthy=False)  # ``sim`` first: closed after it

    async def ready() -> bool:
        row = await board(client, 5)
        return (row["state"], row["health"]) == ("idle", "good")

    await wait_for(ready, timeout=BUILD_TIMEOUT)  # the base SoC may be built first
    created = {await reserve(client, 5, example)}
    pid = sim.board(5).pid
    assert pid is not None
    words = min(65536, sim.builder.soc.sram_size // 4)
    busy_from = cpu_seconds(pid)  # parked since the build: it uses no CPU until asked
    long_read = await post_run(client, 5, {"op": 2, "address": SRAM, "length": words})
    behind = await post_run(client, 5, {"op": 2, "address": SCRATCH})
    created.update([long_read, behind])

    async def moving() -> bool:  # the simulator is busy with the transfer
        return cpu_seconds(pid) >= busy_from + 0.03

    await wait_for(moving, interval=0.005)
    os.kill(pid, signal.SIGSTOP)  # frozen where it is, so the kill lands mid-transfer
    try:
        await asyncio.sleep(0.2)  # had it just ended, its end would be written by now
        assert (await job(client, 5, long_read))["status"] == "running"
    finally:
        os.kill(pid, signal.SIGKILL)

    failed = await wait_job(client, 5, long_read, timeout=30)
    assert failed["status"] == "failed", failed
    crashed = r"board 5: the simulator crashed \(SIGKILL\) during the request( \(.+\))?"
    assert re.fullmatch(crashed, failed["error"]), failed["error"]
    r = await client.get(f"/fpga/5/jobs/{long_read}/result")
    assert r.json() == {"ok": False, "data": [], "error": failed["error"]}
    row = await board(client, 5)
    assert (row["state"], row["health"], row["health_reason"]) == (
        "error", "unknown", failed["error"],
    ), row  # fmt: skip
    assert row["session"] is not None  # the owner still holds it, to read logs and reset
    queued = await wait_job(client, 5, behind)
    assert (queued["status"], queued["error"]) == (
        "failed", "FPGA 5 is error and can no longer run this job.",
    )  # fmt: skip

    r = await client.post("/fpga/5/reset")  # what the table says the board needs
    assert r.status_code == 202, r.text
    created.add(r.json()["job_id"])
    assert (await wait_job(client, 5, r.json()["job_id"], timeout=60))["status"] == "complete"
    row = await board(client, 5)
    assert (row["state"], row["health"], row["session"]) == ("idle", "good", None), row
    assert sim.board(5).pid not in (None, pid)
    created.add(await reserve(client, 5, example))
    again = await post_run(client, 5, {"op": 2, "address": SCRATCH})
    created.add(again)
    assert (await wait_job(client, 5, again))["status"] == "complete"
    assert (await client.get(f"/fpga/5/jobs/{again}/result")).json()["data"] == [0x12345678]

    records = {r["job_id"]: r["status"] for r in await jobs_in_redis(store)}
    assert set(records) == created and set(records.values()) <= FINISHED, records
