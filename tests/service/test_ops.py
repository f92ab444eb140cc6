"""Several transactions in one run job (``ops``): the body's checks and limits, each its
own 422 naming the op, and the result: every op's words in turn, one entry per op, the
first that fails ending the list and named in the error."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from fpgalab.service.settings import MAX_OPS_PER_RUN, Settings
from fpgalab.service.store import Store
from tests.fakes import BUS_ERROR_BASE, FakeBackend
from tests.helpers import assert_error, jobs_in_redis, reserve, run_job, wait_job

#: This lab's own limits, under the schema's.
OPS_LIMIT = 8
WORDS_LIMIT = 16
READ = {"op": 2, "address": 0}


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"max_ops_per_run": OPS_LIMIT, "max_transfer_words": WORDS_LIMIT}
    )


#: (case, body, the message's start (a regex), what it says)
OPS_MATRIX: list[tuple[str, Any, str, str]] = [
    ("both op and ops", {"op": 2, "address": 0, "ops": [READ]}, "ops", "not both"),
    ("ops and length", {"ops": [READ], "length": 2}, "ops", "has ops and length"),
    ("empty ops", {"ops": []}, "ops", "at least 1 item"),
    ("ops an object", {"ops": READ}, "ops", "expected a JSON array, got an object"),
    ("ops null", {"ops": None}, "ops", "expected a JSON array, got null"),
    ("ops of numbers", {"ops": [2, 0]}, r"ops\.0", "expected a JSON object, got 2"),
    ("op a string", {"ops": [READ, {"op": "2", "address": 0}]}, r"ops\.1\.op",
     "expected a JSON integer, got a string"),
    ("op 3", {"ops": [{"op": 3, "address": 0}]}, r"ops\.0\.op", "expected 1 or 2, got 3"),
    ("address 1.0", {"ops": [{"op": 2, "address": 4.0}]}, r"ops\.0\.address",
     "expected a JSON integer, got 4.0"),
    ("address unaligned", {"ops": [READ, READ, {"op": 2, "address": 2}]}, r"ops\.2\.address",
     "word-aligned"),
    ("write without data", {"ops": [{"op": 1, "address": 0}]}, r"ops\.0\.data",
     "needs at least one word"),
    ("read with data", {"ops": [{"op": 2, "address": 0, "data": [1]}]}, r"ops\.0\.data",
     "takes no data"),
    ("word true", {"ops": [{"op": 1, "address": 0, "data": [1, True]}]}, r"ops\.0\.data\.1",
     "expected a JSON integer, got true"),
    ("unknown field", {"ops": [{"op": 2, "address": 0, "colour": "red"}]},
     r"ops\.0\.colour", "not permitted"),
    ("address missing", {"ops": [{"op": 2}]}, r"ops\.0\.address", "required"),
    ("over the schema's ceiling", {"ops": [READ] * (MAX_OPS_PER_RUN + 1)}, "ops",
     f"at most {MAX_OPS_PER_RUN} items"),
    ("over the lab's ops limit", {"ops": [READ] * (OPS_LIMIT + 1)}, "ops",
     f"{OPS_LIMIT + 1} transactions is over this lab's limit of {OPS_LIMIT} transactions"),
    ("over the lab's words limit", {"ops": [{"op": 2, "address": 0, "length": 9}] * 2}, "ops",
     f"18 words in all is over this lab's limit of {WORDS_LIMIT} words per job"),
    ("one op over the words limit", {"ops": [{"op": 2, "address": 0, "length": 65537}]},
     r"ops\.0\.length", "less than or equal to 65536"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field", "says"), [c[1:] for c in OPS_MATRIX], ids=[c[0] for c in OPS_MATRIX]
)
async def test_an_invalid_ops_body_is_refused(
    lab: httpx.AsyncClient, store: Store, body: Any, field: str, says: str
) -> None:
    """An ops body that breaks a rule is 422 validation_error naming the op and field (ops.N
    counts from 0, as JSON paths do) and saying what is wrong; nothing is queued."""
    accepted = await reserve(lab, 0)
    r = await lab.post("/fpga/0/run", json=body)
    message = assert_error(r, 422, "validation_error")["message"]
    assert re.match(rf"{field}: ", message) and says in message, message
    assert [j["job_id"] for j in await jobs_in_redis(store)] == [accepted["job_id"]]


async def test_many_bad_ops_make_one_short_message(lab: httpx.AsyncClient) -> None:
    """4,096 ops that are all wrong are refused with the first ten problems named and a
    count of the others, not a message per op."""
    await reserve(lab, 0)
    r = await lab.post("/fpga/0/run", json={"ops": [{"op": 1, "address": 0}] * MAX_OPS_PER_RUN})
    message = assert_error(r, 422, "validation_error")["message"]
    assert message.startswith("ops.0.data: a write (op 1) needs at least one word; ops.1.data")
    assert message.count("ops.") == 10 and message.endswith(f"; and {MAX_OPS_PER_RUN - 10} more")


async def test_ops_at_the_lab_limits_are_accepted(lab: httpx.AsyncClient) -> None:
    """As many ops as the lab allows, as many words in all, make one job."""
    await reserve(lab, 0)
    each = WORDS_LIMIT // OPS_LIMIT
    ops = [{"op": 2, "address": 4 * each * i, "length": each} for i in range(OPS_LIMIT)]
    result = await run_job(lab, 0, {"ops": ops})
    assert result["ok"] is True and len(result["results"]) == OPS_LIMIT
    assert result["data"] == [0] * WORDS_LIMIT


async def test_an_ops_job_runs_them_in_order(lab: httpx.AsyncClient, backend: FakeBackend) -> None:
    """Writes and reads run in order in one job: data is the reads' words in turn, results
    one entry per op, and the backend was asked for them in one call."""
    await reserve(lab, 1)
    ops = [
        {"op": 1, "address": 0x100, "data": [1, 2, 3]},
        {"op": 2, "address": 0x104, "length": 2},
        {"op": 1, "address": 0x104, "data": [9]},
        {"op": 2, "address": 0x100, "length": 3},
    ]
    before = len(backend.calls)
    result = await run_job(lab, 1, {"ops": ops})
    assert result == {
        "ok": True,
        "data": [2, 3, 1, 9, 3],
        "error": None,
        "results": [
            {"ok": True, "data": [], "error": None},
            {"ok": True, "data": [2, 3], "error": None},
            {"ok": True, "data": [], "error": None},
            {"ok": True, "data": [1, 9, 3], "error": None},
        ],
    }
    assert backend.calls[before:] == [("transact", 1)] * 4  # FakeBackend.transact_many's turns


async def test_the_first_bus_error_stops_the_list(lab: httpx.AsyncClient) -> None:
    """A bus error ends the ops job failed at that op: the error names it (counting from 1
    of all), results end with it, and the ops after it never ran."""
    await reserve(lab, 2)
    ops = [
        {"op": 1, "address": 0x10, "data": [7]},
        {"op": 2, "address": 0x10},
        {"op": 2, "address": BUS_ERROR_BASE, "length": 2},
        {"op": 1, "address": 0x10, "data": [8]},
    ]
    r = await lab.post("/fpga/2/run", json={"ops": ops})
    job_id = r.json()["job_id"]
    done = await wait_job(lab, 2, job_id)
    expected = f"op 3 of 4: bus error at {BUS_ERROR_BASE:#010x}"
    assert done["status"] == "failed" and done["error"] == expected
    result = (await lab.get(f"/fpga/2/jobs/{job_id}/result")).json()
    assert result["ok"] is False and result["error"] == expected
    assert result["data"] == [7]
    assert [e["ok"] for e in result["results"]] == [True, True, False]
    assert result["results"][2]["error"] == f"bus error at {BUS_ERROR_BASE:#010x}"
    assert (await run_job(lab, 2, {"op": 2, "address": 0x10}))["data"] == [7]  # not 8


async def test_a_single_op_keeps_its_body_and_result(lab: httpx.AsyncClient, store: Store) -> None:
    """A body of one op is stored and answered as before: no ops, no results key."""
    await reserve(lab, 3)
    r = await lab.post("/fpga/3/run", json={"op": 2, "address": 8, "length": 2})
    job_id = r.json()["job_id"]
    await wait_job(lab, 3, job_id)
    assert await store.job_fields(job_id, "request") == ['{"op":2,"address":8,"length":2}']
    result = (await lab.get(f"/fpga/3/jobs/{job_id}/result")).json()
    assert result == {"ok": True, "data": [0, 0], "error": None}


async def test_an_ops_run_replays_with_its_idempotency_key(lab: httpx.AsyncClient) -> None:
    """An ops run retried with the same Idempotency-Key is the first 202; other ops under
    that key are 422 idempotency_key_reused."""
    await reserve(lab, 4)
    key = {"Idempotency-Key": "ops-1"}
    first = await lab.post("/fpga/4/run", json={"ops": [READ, READ]}, headers=key)
    again = await lab.post("/fpga/4/run", json={"ops": [READ, READ]}, headers=key)
    assert again.status_code == 202 and again.json()["replayed"] is True
    assert again.json()["job_id"] == first.json()["job_id"]
    other = await lab.post("/fpga/4/run", json={"ops": [READ]}, headers=key)
    assert_error(other, 422, "idempotency_key_reused")


async def test_openapi_describes_both_bodies(client: httpx.AsyncClient) -> None:
    """/openapi.json offers RunRequest (unchanged) or RunOpsRequest for a run, with the
    ops' bounds and the result's results."""
    spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/fpga/{fpga_id}/run"]["post"]["requestBody"]["content"]
    refs = {s["$ref"].rsplit("/", 1)[1] for s in body["application/json"]["schema"]["oneOf"]}
    assert refs == {"RunRequest", "RunOpsRequest"}
    schemas = spec["components"]["schemas"]
    assert set(schemas["RunRequest"]["required"]) == {"op", "address"}
    ops = schemas["RunOpsRequest"]["properties"]["ops"]
    assert (ops["minItems"], ops["maxItems"]) == (1, MAX_OPS_PER_RUN)
    assert "results" in schemas["RunResult"]["properties"]


def test_the_ops_setting_may_lower_the_schemas_limit_never_raise_it() -> None:
    """FPGALAB_MAX_OPS_PER_RUN takes 1 to 4,096; above it the settings refuse it, saying why."""
    from pydantic import ValidationError

    assert Settings(max_ops_per_run=MAX_OPS_PER_RUN).max_ops_per_run == MAX_OPS_PER_RUN
    with pytest.raises(ValidationError, match="4,096, the most transactions a run job may list"):
        Settings(max_ops_per_run=MAX_OPS_PER_RUN + 1)
