"""Traced runs from the service's side: the request's checks, the result's ``trace``, the
waveform route (headers, readers, errors) and what the lab keeps. The waveform here is a
test double's (``FakeBackend.transact_traced``); the analyzer's own path is tested on
simulated boards and twins (tests/backends/test_trace.py)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from fpgalab.service import keys
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from tests.fakes import FakeBackend
from tests.helpers import (
    assert_error,
    bus_transactions,
    reserve,
    run_job,
    submit,
    vcd_samples,
    wait_job,
)

ALICE = {"X-API-Key": "alice-key"}
#: The analyzer's bus signals, as every build's scope has them.
BUS = ("cyc", "stb", "we", "adr", "sel", "dat_w", "dat_r", "ack", "err")
BOB = {"X-API-Key": "bob-key"}
OPS = {"X-API-Key": "ops-key"}  # admin
#: This lab's waveform limit: a few hundred bytes, so that a long run goes over it.
LIMIT = 600


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": "alice=alice-key,bob=bob-key,ops=ops-key:admin"})


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The lab's waveform limit (the worker's settings: it is the worker that keeps to it)."""
    return settings.model_copy(update={"max_waveform_bytes": LIMIT})


async def traced(
    lab: httpx.AsyncClient, fpga_id: int, body: dict[str, Any], headers: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    r = await lab.post(f"/fpga/{fpga_id}/run", json=body, headers=headers)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    await wait_job(lab, fpga_id, job_id, headers=headers)
    result = (await lab.get(f"/fpga/{fpga_id}/jobs/{job_id}/result", headers=headers)).json()
    return job_id, result


async def test_a_traced_run_keeps_its_waveform(lab: httpx.AsyncClient, store: Store) -> None:
    """A traced ops run: its data as untraced, its result's ``trace`` says what was
    captured, and the waveform route serves that VCD (type, format and file name in the
    headers) showing each transaction's values; it is kept as long as the job and counted
    in the owner's storage."""
    await reserve(lab, 1, headers=ALICE)
    ops = [{"op": 1, "address": 0x10, "data": [0xAB]}, {"op": 2, "address": 0x10}]
    job_id, result = await traced(lab, 1, {"ops": ops, "trace": True}, ALICE)
    assert result["ok"] is True and result["data"] == [0xAB]
    trace = result["trace"]
    assert trace["ok"] is True and trace["error"] is None and trace["format"] == "vcd"
    assert trace["signals"] == list(BUS) and trace["samples"] == 6

    r = await lab.get(f"/fpga/1/jobs/{job_id}/waveform", headers=ALICE)
    assert r.status_code == 200 and r.headers["content-type"] == "text/x-vcd; charset=utf-8"
    assert r.headers["x-waveform-format"] == "vcd"
    assert r.headers["content-disposition"] == f'attachment; filename="fpga1-{job_id}.vcd"'
    assert len(r.content) == trace["bytes"]
    _, samples = vcd_samples(r.content)
    assert [(op, word, data) for _, op, word, data, _ in bus_transactions(samples)] == [
        ("write", 4, 0xAB),
        ("read", 4, 0xAB),
    ]

    ttl = await store.redis.ttl(keys.waveform(job_id))
    assert 0 < ttl <= store.settings.job_retention
    assert abs(ttl - await store.redis.ttl(keys.job(job_id))) <= 1
    stored = await store.redis.hgetall(keys.caller_stored("alice"))
    assert sum(int(v) for v in stored.values()) > trace["bytes"]


async def test_chosen_signals_only(lab: httpx.AsyncClient) -> None:
    """``signals`` picks what the waveform shows, in the order given."""
    await reserve(lab, 2, headers=ALICE)
    body = {"op": 2, "address": 0, "trace": True, "signals": ["dat_r", "adr"]}
    job_id, result = await traced(lab, 2, body, ALICE)
    assert result["trace"]["signals"] == ["adr", "dat_r"]  # in the analyzer's order
    r = await lab.get(f"/fpga/2/jobs/{job_id}/waveform", headers=ALICE)
    assert vcd_samples(r.content)[0] == ["bus.adr", "bus.dat_r"]


async def test_an_untraced_run_has_no_waveform(lab: httpx.AsyncClient) -> None:
    """A run that did not ask: no ``trace`` in its result, 404 waveform_not_found saying
    so; a build job the same."""
    build = await reserve(lab, 3, headers=ALICE)
    result = await run_job(lab, 3, {"op": 2, "address": 0}, headers=ALICE)
    assert "trace" not in result
    r = await lab.post("/fpga/3/run", json={"op": 2, "address": 0}, headers=ALICE)
    job_id = r.json()["job_id"]
    await wait_job(lab, 3, job_id, headers=ALICE)
    for job in (job_id, build["job_id"]):
        r = await lab.get(f"/fpga/3/jobs/{job}/waveform", headers=ALICE)
        assert assert_error(r, 404, "waveform_not_found")["message"] == (
            f"Job {job} has no waveform: it did not ask for a trace."
        )


async def test_a_failed_trace_keeps_the_runs_data(lab: httpx.AsyncClient) -> None:
    """Unknown signals, a build without an analyzer, a waveform over the lab's limit: the
    run completes with its data, ``trace`` says why there is no waveform, and the
    waveform route answers 404 with that reason."""
    await reserve(lab, 4, headers=ALICE)
    await run_job(lab, 4, {"op": 1, "address": 0, "data": [5]}, headers=ALICE)
    long = [{"op": 2, "address": 0}] * 40  # over the limit below
    cases = [
        ({"op": 2, "address": 0, "trace": True, "signals": ["adr", "counter"]},
         "unknown signal(s) 'counter': this build's scope has cyc, stb"),
        ({"ops": long, "trace": True}, f"over {LIMIT}"),
    ]  # fmt: skip
    for body, why in cases:
        job_id, result = await traced(lab, 4, body, ALICE)
        assert result["ok"] is True and result["data"][0] == 5
        assert result["trace"]["ok"] is False and why in result["trace"]["error"]
        r = await lab.get(f"/fpga/4/jobs/{job_id}/waveform", headers=ALICE)
        assert why in assert_error(r, 404, "waveform_not_found")["message"]

    r = await submit(lab, 5, "# NO_SCOPE\n", headers=ALICE)
    assert (await wait_job(lab, 5, r.json()["job_id"], headers=ALICE))["status"] == "complete"
    job_id, result = await traced(lab, 5, {"op": 2, "address": 0, "trace": True}, ALICE)
    assert result["ok"] is True
    assert result["trace"] == {
        "ok": False, "error": "fake: this build has no logic analyzer", "format": None,
        "bytes": None, "samples": None, "full": None, "signals": None,
    }  # fmt: skip


async def test_the_waveform_is_its_owners(lab: httpx.AsyncClient) -> None:
    """Another caller's waveform is 403 not_session_owner; an admin reads it; a job of
    another board is 404 job_not_found."""
    await reserve(lab, 6, headers=ALICE)
    job_id, _ = await traced(lab, 6, {"op": 2, "address": 0, "trace": True}, ALICE)
    path = f"/fpga/6/jobs/{job_id}/waveform"
    assert_error(await lab.get(path, headers=BOB), 403, "not_session_owner")
    admin = await lab.get(path, headers=OPS)
    assert admin.status_code == 200 and admin.content.startswith(b"$timescale")
    assert_error(await lab.get(f"/fpga/7/jobs/{job_id}/waveform", headers=ALICE), 404,
                 "job_not_found")  # fmt: skip


async def test_a_waveform_before_the_run_ends(lab: httpx.AsyncClient, backend: FakeBackend) -> None:
    """While the run is queued or running: 409 job_not_complete; with ``wait`` the answer
    comes once it has finished."""
    await reserve(lab, 8, headers=ALICE)
    backend.hold.add("transact")
    r = await lab.post("/fpga/8/run", json={"op": 2, "address": 0, "trace": True}, headers=ALICE)
    job_id = r.json()["job_id"]
    path = f"/fpga/8/jobs/{job_id}/waveform"
    assert_error(await lab.get(path, headers=ALICE), 409, "job_not_complete")
    backend.resume.set()
    r = await lab.get(path, params={"wait": 5}, headers=ALICE)
    assert r.status_code == 200 and r.headers["x-waveform-format"] == "vcd"


#: (case, body, the message's field (a regex), what it says)
BAD_TRACES: list[tuple[str, dict[str, Any], str, str]] = [
    ("signals without trace", {"op": 2, "address": 0, "signals": ["adr"]}, "signals",
     "only with trace: true"),
    ("a signal twice", {"op": 2, "address": 0, "trace": True, "signals": ["adr", "adr"]},
     "signals", "adr named twice"),
    ("a bad name", {"op": 2, "address": 0, "trace": True, "signals": ["Wb Adr"]},
     r"signals\.0", "should match pattern"),
    ("no signals", {"op": 2, "address": 0, "trace": True, "signals": []}, "signals",
     "at least 1 item"),
    ("trace a string", {"op": 2, "address": 0, "trace": "yes"}, "trace",
     "expected true or false, got a string"),
    ("trace on one op", {"ops": [{"op": 2, "address": 0, "trace": True}]}, r"ops\.0\.trace",
     "not permitted"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field", "says"), [c[1:] for c in BAD_TRACES], ids=[c[0] for c in BAD_TRACES]
)
async def test_a_bad_trace_request_is_refused(
    lab: httpx.AsyncClient, body: dict[str, Any], field: str, says: str
) -> None:
    """Each is 422 validation_error naming the field and what is wrong; nothing is queued."""
    await reserve(lab, 9, headers=ALICE)
    r = await lab.post("/fpga/9/run", json=body, headers=ALICE)
    message = assert_error(r, 422, "validation_error")["message"]
    assert re.match(rf"{field}: ", message) and says in message, message


async def test_openapi_describes_traces(client: httpx.AsyncClient) -> None:
    """The schema offers ``trace``/``signals`` on both run bodies (not on an op of a list),
    ``trace`` in the result, and the waveform route with its errors."""
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for body in ("RunRequest", "RunOpsRequest"):
        assert {"trace", "signals"} <= set(schemas[body]["properties"])
    assert "trace" not in schemas["RunOp"]["properties"]
    assert "trace" in schemas["RunResult"]["properties"]
    route = spec["paths"]["/fpga/{fpga_id}/jobs/{job_id}/waveform"]["get"]
    assert "text/x-vcd" in route["responses"]["200"]["content"]
    assert {"404", "409", "403"} <= set(route["responses"])
