"""Several transactions in one run job, and waiting for a job, through the REST API on
the lab under test (the simulated lab, or twins with ``--backend hardware``)."""

from __future__ import annotations

import random
import re
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import LabUnderTest, StartLab
from tests.e2e.test_api import (
    DESIGN_ID,
    RUN_TIMEOUT,
    SCRATCH,
    SRAM,
    USER,
    Read,
    post_run,
    read,
    reserve_design,
    result_of,
)
from tests.helpers import board

pytestmark = pytest.mark.sim


async def waited(lab: httpx.AsyncClient, fpga_id: int, job_id: str) -> dict[str, Any]:
    """The job, from one GET that waits for it to finish (no polling)."""
    r = await lab.get(f"/fpga/{fpga_id}/jobs/{job_id}", params={"wait": RUN_TIMEOUT})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] in ("complete", "failed"), job
    return job  # type: ignore[no-any-return]


async def run_ops(
    lab: httpx.AsyncClient, fpga_id: int, ops: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """POST an ops run and wait for it: (the job record, its result)."""
    job_id = await post_run(lab, fpga_id, {"ops": ops})
    return await waited(lab, fpga_id, job_id), await result_of(lab, fpga_id, job_id)


async def test_an_ops_job_runs_its_transactions_in_order(
    start_lab: StartLab, example: Read
) -> None:
    """One job of writes and reads on the design and the SRAM: each read sees the writes
    before it; data is the reads' words in turn, results one entry per op."""
    lab = await start_lab([0])
    await reserve_design(lab, 0, "accumulator.v", example("accumulator.v"))
    words = [random.getrandbits(32) for _ in range(300)]  # past a 255-word UARTBone frame
    job, result = await run_ops(
        lab,
        0,
        [
            {"op": 1, "address": USER, "data": [1234, 4321]},
            {"op": 2, "address": USER, "length": 3},
            {"op": 1, "address": USER + 12, "data": [5]},
            {"op": 1, "address": USER + 12, "data": [7]},
            {"op": 2, "address": USER + 12, "length": 2},
            {"op": 1, "address": SRAM, "data": words},
            {"op": 2, "address": SRAM + 4 * 254, "length": 2},
        ],
    )
    assert job["type"] == "run" and job["status"] == "complete" and job["error"] is None
    reads = [[1234, 4321, 5555], [12, DESIGN_ID], words[254:256]]
    assert result == {
        "ok": True,
        "data": [word for words_read in reads for word in words_read],
        "error": None,
        "results": [
            {"ok": True, "data": [], "error": None},
            {"ok": True, "data": reads[0], "error": None},
            {"ok": True, "data": [], "error": None},
            {"ok": True, "data": [], "error": None},
            {"ok": True, "data": reads[1], "error": None},
            {"ok": True, "data": [], "error": None},
            {"ok": True, "data": reads[2], "error": None},
        ],
    }


async def test_the_first_bus_error_stops_an_ops_job(
    start_lab: StartLab, target: LabUnderTest, example: Read
) -> None:
    """A bus error ends the job failed, naming the op (counting from 1) and its bus error;
    the ops after it never reached the bus, and the board stays reserved."""
    lab = await start_lab([1])
    await reserve_design(lab, 1, "accumulator.py", example("accumulator.py"))
    job, result = await run_ops(
        lab,
        1,
        [
            {"op": 1, "address": SCRATCH, "data": [0x1111]},
            {"op": 2, "address": SCRATCH},
            {"op": 2, "address": USER + 32},  # word 8: the design answers err
            {"op": 1, "address": SCRATCH, "data": [0x2222]},
        ],
    )
    assert job["status"] == "failed"
    bus_error = target.bus_error(USER + 32, 0, 1)
    assert re.fullmatch(f"op 3 of 4: {bus_error}", job["error"]), job["error"]
    assert result["ok"] is False and result["error"] == job["error"]
    assert result["data"] == [0x1111]
    assert [entry["ok"] for entry in result["results"]] == [True, True, False]
    assert re.fullmatch(bus_error, result["results"][2]["error"])
    assert (await board(lab, 1))["state"] == "reserved"
    assert await read(lab, 1, SCRATCH) == [0x1111]  # the last write never ran


async def test_a_thousand_mixed_ops_in_one_job(start_lab: StartLab, example: Read) -> None:
    """1,000 alternating writes and reads of 64 SRAM words as one job read back what a
    memory of the same writes holds."""
    lab = await start_lab([2])
    await reserve_design(lab, 2, "accumulator.v", example("accumulator.v"))
    memory = [0] * 64
    ops: list[dict[str, Any]] = []
    expected: list[int] = []
    for i in range(1000):
        index = random.randrange(64)
        if i % 2:
            memory[index] = random.getrandbits(32)
            ops.append({"op": 1, "address": SRAM + 4 * index, "data": [memory[index]]})
        else:
            ops.append({"op": 2, "address": SRAM + 4 * index})
            expected.append(memory[index])
    job, result = await run_ops(lab, 2, ops)
    assert job["status"] == "complete", job
    assert result["data"] == expected and len(result["results"]) == 1000
