"""The life of a board through the API: submit, run, result, logs, reset, release."""

from __future__ import annotations

import httpx

from tests.fakes import FakeBackend
from tests.helpers import assert_error, board, reserve, run_job, submit, wait_job, wait_state


async def test_submit_builds_and_reserves_the_board(lab: httpx.AsyncClient) -> None:
    """A submit answers 202 queued, and the board ends reserved with a session."""
    r = await submit(lab, 3)
    assert r.status_code == 202
    body = r.json()
    assert body["fpga_id"] == 3 and body["status"] == "queued" and body["session_id"]
    done = await wait_job(lab, 3, body["job_id"])
    assert done["type"] == "build_and_program" and done["status"] == "complete"
    b = await board(lab, 3)
    assert b["state"] == "reserved"
    assert b["session"]["session_id"] == body["session_id"]


async def test_write_then_read_returns_the_words(lab: httpx.AsyncClient) -> None:
    """Words written by one run job are read back by the next."""
    await reserve(lab, 1)
    words = [0xDEADBEEF, 0, 1, 2**32 - 1]
    assert (await run_job(lab, 1, {"op": 1, "address": 0x100, "data": words}))["ok"] is True
    result = await run_job(lab, 1, {"op": 2, "address": 0x100, "length": 4})
    assert result == {"ok": True, "data": words, "error": None}


async def test_read_length_defaults_to_one_word(lab: httpx.AsyncClient) -> None:
    """A read without length reads one word."""
    await reserve(lab, 2)
    await run_job(lab, 2, {"op": 1, "address": 8, "data": [7, 9]})
    assert (await run_job(lab, 2, {"op": 2, "address": 8}))["data"] == [7]


async def test_bus_error_fails_the_run_with_ok_false(lab: httpx.AsyncClient) -> None:
    """A bus error is a failed run whose result says ok false, and the board stays reserved."""
    await reserve(lab, 4)
    r = await lab.post("/fpga/4/run", json={"op": 2, "address": 0xF000_0000})
    job = await wait_job(lab, 4, r.json()["job_id"])
    assert job["status"] == "failed" and "bus error" in job["error"]
    res = (await lab.get(f"/fpga/4/jobs/{job['job_id']}/result")).json()
    assert res["ok"] is False and "bus error" in res["error"]
    assert (await board(lab, 4))["state"] == "reserved"


async def test_logs_hold_the_build_steps(lab: httpx.AsyncClient) -> None:
    """The build job's log is plain text with the backend's lines in order."""
    accepted = await reserve(lab, 5)
    r = await lab.get(f"/fpga/5/jobs/{accepted['job_id']}/logs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert text.index("fake: elaborating design.py") < text.index("fake: verilating")
    assert "programmed" in text


async def test_reset_returns_the_board_to_idle(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """Reset closes the session at once and the board is idle when the job ends."""
    await reserve(lab, 6)
    r = await lab.post("/fpga/6/reset")
    assert r.status_code == 202
    assert (await board(lab, 6))["session"] is None
    done = await wait_job(lab, 6, r.json()["job_id"])
    assert done["type"] == "reset" and done["status"] == "complete"
    b = await wait_state(lab, 6, "idle")
    assert b["health"] == "good" and b["current_job_id"] is None
    assert ("reset", 6) in backend.calls


async def test_release_enqueues_a_reset(lab: httpx.AsyncClient) -> None:
    """Release answers 202 with a reset job; the session is gone and the board idles."""
    await reserve(lab, 7)
    r = await lab.post("/fpga/7/session/release")
    assert r.status_code == 202
    assert (await wait_job(lab, 7, r.json()["job_id"]))["type"] == "reset"
    await wait_state(lab, 7, "idle")
    assert_error(await lab.get("/fpga/7/session"), 404, "no_active_session")


async def test_failed_build_puts_the_board_in_error(lab: httpx.AsyncClient) -> None:
    """A design that does not build fails its job with the error; reset recovers."""
    r = await submit(lab, 8, "FAIL_BUILD\n")
    job = await wait_job(lab, 8, r.json()["job_id"])
    assert job["status"] == "failed" and "SyntaxError" in job["error"]
    b = await board(lab, 8)
    assert b["state"] == "error" and b["health"] == "good"  # the user's fault, not the board's
    logs = (await lab.get(f"/fpga/8/jobs/{job['job_id']}/logs")).text
    assert "SyntaxError" in logs
    reset = await lab.post("/fpga/8/reset")
    await wait_job(lab, 8, reset.json()["job_id"])
    await wait_state(lab, 8, "idle")


async def test_memory_map_follows_what_is_on_the_board(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """The memory map is the base SoC's when idle and the build's once reserved."""
    base = await lab.get("/fpga/0/memory-map")
    assert base.status_code == 200 and base.json()["image"] == "base"
    assert "user" in base.json()["memories"]
    accepted = await reserve(lab, 0)
    mine = (await lab.get("/fpga/0/memory-map")).json()
    assert mine["image"] == backend.programmed[0]
    assert (
        mine["image"]
        == (await lab.get(f"/fpga/0/jobs/{accepted['job_id']}")).json()["design_sha256"]
    )


async def test_memory_map_is_unknown_while_programming(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """While a build runs, no memory map is served: 404 memory_map_unknown."""
    await submit(lab, 1, "GATE\n")
    await wait_state(lab, 1, "programming")
    assert_error(await lab.get("/fpga/1/memory-map"), 404, "memory_map_unknown")
    backend.release_gate()
    await wait_state(lab, 1, "reserved")
