"""The API contract: every route of the prototype's reference with its status and
body fields, the error shape, request validation, upload checks and the schema."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import (
    assert_error,
    board,
    job,
    jobs_in_redis,
    reserve,
    run_job,
    submit,
    wait_job,
    wait_set,
    wait_state,
)

SUMMARY_FIELDS = {"fpga_id", "state", "session", "current_job_id", "health"}
ACCEPTED_FIELDS = {"job_id", "fpga_id", "status"}
JOB_FIELDS = {"job_id", "fpga_id", "type", "status", "created_at", "updated_at"}
SESSION_FIELDS = {"fpga_id", "session_id", "owner", "created_at", "expires_at", "max_expires_at"}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")

#: Every route with an ``fpga_id``: (method, path, request kwargs).
BOARD_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/fpga/{id}", {}),
    ("POST", "/fpga/{id}/submit", {"files": {"file": ("d.py", b"# d\n")}}),
    ("POST", "/fpga/{id}/run", {"json": {"op": 2, "address": 0}}),
    ("POST", "/fpga/{id}/reset", {}),
    ("GET", "/fpga/{id}/jobs/abc", {}),
    ("GET", "/fpga/{id}/jobs/abc/logs", {}),
    ("GET", "/fpga/{id}/jobs/abc/result", {}),
    ("DELETE", "/fpga/{id}/jobs/abc", {}),
    ("GET", "/fpga/{id}/session", {}),
    ("POST", "/fpga/{id}/session/release", {}),
    ("POST", "/fpga/{id}/session/renew", {}),
]


def is_utc_timestamp(value: Any) -> bool:
    if not isinstance(value, str) or not ISO_UTC.match(value):
        return False
    return datetime.fromisoformat(value).utcoffset() == timedelta(0)


def names_field(message: str, field: str) -> bool:
    """The message mentions ``field`` as a word (``data.0`` names ``data``)."""
    return field in re.findall(r"[A-Za-z_]+", message)


async def make_healthy(client: httpx.AsyncClient, fpga_id: int) -> None:
    """Health good on a board no worker serves (an admin's maintenance, then online)."""
    assert (await client.post(f"/fpga/{fpga_id}/maintenance")).status_code == 200
    r = await client.post(f"/fpga/{fpga_id}/online")
    assert r.status_code == 200 and r.json()["health"] == "good", r.text


# -- health and boards ---------------------------------------------------------------


async def test_health(client: httpx.AsyncClient) -> None:
    """GET /health answers 200 {"status": "ok", "redis": true, ...} (with Redis's memory)."""
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["redis"] is True


async def test_list_boards(lab: httpx.AsyncClient) -> None:
    """GET /fpga lists the ten boards in order as FPGASummary objects."""
    r = await lab.get("/fpga")
    assert r.status_code == 200
    boards = r.json()
    assert isinstance(boards, list) and len(boards) == 10
    assert [b["fpga_id"] for b in boards] == list(range(10))
    for b in boards:
        assert set(b) >= SUMMARY_FIELDS, b
        assert b["state"] == "idle" and b["health"] == "good"
        assert b["session"] is None and b["current_job_id"] is None


async def test_get_board(lab: httpx.AsyncClient) -> None:
    """GET /fpga/{id} is the board's FPGASummary, the same as its entry in the list."""
    r = await lab.get("/fpga/3")
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= SUMMARY_FIELDS
    assert body["fpga_id"] == 3 and body["state"] == "idle" and body["session"] is None
    assert body == (await lab.get("/fpga")).json()[3]


@pytest.mark.parametrize("bad", ["-1", "10000", "abc", "3.5", "1e0"])
@pytest.mark.parametrize(("method", "path", "kw"), BOARD_ROUTES, ids=lambda v: str(v))
async def test_bad_fpga_id_is_a_validation_error(
    client: httpx.AsyncClient, method: str, path: str, kw: dict[str, Any], bad: str
) -> None:
    """An fpga_id outside 0-9999 or not an integer is 422 validation_error naming
    fpga_id."""
    r = await client.request(method, path.replace("{id}", bad), **kw)
    err = assert_error(r, 422, "validation_error")
    assert names_field(err["message"], "fpga_id"), err


@pytest.mark.parametrize(("method", "path", "kw"), BOARD_ROUTES, ids=lambda v: str(v))
async def test_a_board_the_lab_does_not_have_is_not_found(
    client: httpx.AsyncClient, method: str, path: str, kw: dict[str, Any]
) -> None:
    """A board id no worker registered (the lab has boards 0-9) is 404: fpga_not_found
    naming it, or, for a job's routes, job_not_found (no job is on a board that is not
    there)."""
    r = await client.request(method, path.replace("{id}", "10"), **kw)
    code = "job_not_found" if "/jobs/" in path else "fpga_not_found"
    err = assert_error(r, 404, code)
    assert "10" in err["message"], err


# -- submit, run, reset, jobs, sessions ------------------------------------------------------


async def test_submit_answers_202_queued(lab: httpx.AsyncClient) -> None:
    """POST submit answers 202 with job_id, fpga_id, status queued and the new session."""
    r = await submit(lab, 2)
    assert r.status_code == 202
    body = r.json()
    assert set(body) >= ACCEPTED_FIELDS
    assert body["fpga_id"] == 2 and body["status"] == "queued" and body["job_id"]
    assert body["session_id"] and is_utc_timestamp(body["expires_at"])
    done = await wait_job(lab, 2, body["job_id"])
    assert done["type"] == "build_and_program" and done["status"] == "complete"


async def test_run_answers_202_queued(lab: httpx.AsyncClient) -> None:
    """POST run answers 202 with job_id, fpga_id and status queued; the job is a run."""
    accepted = await reserve(lab, 3)
    r = await lab.post("/fpga/3/run", json={"op": 1, "address": 0, "data": [1]})
    assert r.status_code == 202
    body = r.json()
    assert set(body) >= ACCEPTED_FIELDS
    assert body["fpga_id"] == 3 and body["status"] == "queued"
    assert body["job_id"] != accepted["job_id"]
    assert (await wait_job(lab, 3, body["job_id"]))["type"] == "run"


async def test_reset_answers_202_queued(lab: httpx.AsyncClient) -> None:
    """POST reset answers 202 with a queued reset job."""
    await reserve(lab, 4)
    r = await lab.post("/fpga/4/reset")
    assert r.status_code == 202
    body = r.json()
    assert set(body) >= ACCEPTED_FIELDS and body["fpga_id"] == 4 and body["status"] == "queued"
    done = await wait_job(lab, 4, body["job_id"])
    assert done["type"] == "reset" and done["status"] == "complete"


async def test_job_response(lab: httpx.AsyncClient) -> None:
    """GET a job is the JobResponse: id, board, type, status and timestamps."""
    accepted = await reserve(lab, 5)
    r = await lab.get(f"/fpga/5/jobs/{accepted['job_id']}")
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= JOB_FIELDS
    assert body["job_id"] == accepted["job_id"] and body["fpga_id"] == 5
    assert body["type"] == "build_and_program" and body["status"] == "complete"


async def test_logs_are_plain_text(lab: httpx.AsyncClient) -> None:
    """GET logs answers text/plain with the job's lines."""
    accepted = await reserve(lab, 6)
    r = await lab.get(f"/fpga/6/jobs/{accepted['job_id']}/logs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "fake: verilating" in r.text.splitlines()


async def test_result_of_a_read(lab: httpx.AsyncClient) -> None:
    """GET result of a finished read is {"ok": true, "data": [words], "error": null}, and
    nothing more (``results`` is an ``ops`` run's only)."""
    await reserve(lab, 7)
    await run_job(lab, 7, {"op": 1, "address": 16, "data": [5, 6]})
    r = await lab.post("/fpga/7/run", json={"op": 2, "address": 16, "length": 2})
    job_id = r.json()["job_id"]
    await wait_job(lab, 7, job_id)
    res = await lab.get(f"/fpga/7/jobs/{job_id}/result")
    assert res.status_code == 200 and res.headers["content-type"] == "application/json"
    body = res.json()
    assert body == {"ok": True, "data": [5, 6], "error": None}


async def test_delete_answers_204(client: httpx.AsyncClient) -> None:
    """DELETE of a queued job answers 204 with no body; the job is cancelled."""
    await make_healthy(client, 1)
    job_id = (await submit(client, 1)).json()["job_id"]
    r = await client.delete(f"/fpga/1/jobs/{job_id}")
    assert r.status_code == 204 and r.content == b""
    assert (await job(client, 1, job_id))["status"] == "cancelled"


async def test_session_response(lab: httpx.AsyncClient) -> None:
    """GET session is the SessionResponse with expires_at; none is 404 no_active_session."""
    assert_error(await lab.get("/fpga/8/session"), 404, "no_active_session")
    accepted = await reserve(lab, 8)
    r = await lab.get("/fpga/8/session")
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= SESSION_FIELDS
    assert body["fpga_id"] == 8 and body["session_id"] == accepted["session_id"]
    assert body["owner"] == "anonymous"
    created, expires, limit = (
        datetime.fromisoformat(body[f]) for f in ("created_at", "expires_at", "max_expires_at")
    )
    assert created < expires <= limit


async def test_renew_answers_the_session(lab: httpx.AsyncClient) -> None:
    """POST session/renew answers 200 with the SessionResponse."""
    await reserve(lab, 8)
    r = await lab.post("/fpga/8/session/renew", json={"seconds": 60})
    assert r.status_code == 200
    assert set(r.json()) >= SESSION_FIELDS and r.json()["fpga_id"] == 8


async def test_release_answers_202(lab: httpx.AsyncClient) -> None:
    """POST session/release answers 202 with a reset job; without a session it is 404."""
    assert_error(await lab.post("/fpga/9/session/release"), 404, "no_active_session")
    await reserve(lab, 9)
    r = await lab.post("/fpga/9/session/release")
    assert r.status_code == 202
    body = r.json()
    assert set(body) >= ACCEPTED_FIELDS and body["status"] == "queued"
    assert (await wait_job(lab, 9, body["job_id"]))["type"] == "reset"
    await wait_state(lab, 9, "idle")


JOB_ROUTES = [
    ("GET", "/fpga/{id}/jobs/{job}"),
    ("GET", "/fpga/{id}/jobs/{job}/logs"),
    ("GET", "/fpga/{id}/jobs/{job}/result"),
    ("DELETE", "/fpga/{id}/jobs/{job}"),
]


async def test_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    """Every job route answers 404 job_not_found for a job that does not exist."""
    for method, path in JOB_ROUTES:
        r = await client.request(method, path.format(id=2, job="0123456789abcdef"))
        assert_error(r, 404, "job_not_found")


async def test_job_of_another_board_is_404(client: httpx.AsyncClient) -> None:
    """Every job route answers 404 job_not_found for a job of another board."""
    await make_healthy(client, 1)
    job_id = (await submit(client, 1)).json()["job_id"]
    for method, path in JOB_ROUTES:
        r = await client.request(method, path.format(id=2, job=job_id))
        assert_error(r, 404, "job_not_found")
    assert (await job(client, 1, job_id))["status"] == "queued"  # the DELETE did nothing


async def test_result_before_the_end_is_409(
    client: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """The result of a queued, running or cancelled job is 409 job_not_complete."""
    await make_healthy(client, 1)
    queued = (await submit(client, 1)).json()["job_id"]
    assert_error(await client.get(f"/fpga/1/jobs/{queued}/result"), 409, "job_not_complete")
    await client.delete(f"/fpga/1/jobs/{queued}")
    assert_error(await client.get(f"/fpga/1/jobs/{queued}/result"), 409, "job_not_complete")

    await start_worker([2])
    running = (await submit(client, 2, "GATE\n")).json()["job_id"]

    await wait_set(backend.gate_reached)
    assert (await job(client, 2, running))["status"] == "running"
    assert_error(await client.get(f"/fpga/2/jobs/{running}/result"), 409, "job_not_complete")
    backend.release_gate()
    await wait_job(client, 2, running)
    assert (await client.get(f"/fpga/2/jobs/{running}/result")).status_code == 200


# -- RunRequest validation -----------------------------------------------------------------

RUN_MATRIX: list[tuple[str, dict[str, Any] | None, str]] = [
    ("op 3", {"op": 3, "address": 0}, "op"),
    ("op missing", {"address": 0}, "op"),
    ("op a string", {"op": "write", "address": 0, "data": [1]}, "op"),
    ("address missing", {"op": 2}, "address"),
    ("address negative", {"op": 2, "address": -4}, "address"),
    ("address 2**32", {"op": 2, "address": 2**32}, "address"),
    ("address unaligned", {"op": 2, "address": 2}, "address"),
    ("data word -1", {"op": 1, "address": 0, "data": [1, -1]}, "data"),
    ("data word 2**32", {"op": 1, "address": 0, "data": [2**32]}, "data"),
    ("write without data", {"op": 1, "address": 0}, "data"),
    ("write with empty data", {"op": 1, "address": 0, "data": []}, "data"),
    ("write with length", {"op": 1, "address": 0, "data": [1], "length": 1}, "length"),
    ("read with data", {"op": 2, "address": 0, "data": [1]}, "data"),
    ("length 0", {"op": 2, "address": 0, "length": 0}, "length"),
    ("length 65537", {"op": 2, "address": 0, "length": 65537}, "length"),
    ("data of 65537 words", {"op": 1, "address": 0, "data": [0] * 65537}, "data"),
    ("unknown field", {"op": 2, "address": 0, "colour": "red"}, "colour"),
    ("read past 2**32", {"op": 2, "address": 2**32 - 4, "length": 2}, "address"),
    ("write past 2**32", {"op": 1, "address": 2**32 - 8, "data": [1, 2, 3]}, "address"),
    ("no body", None, "body"),
]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in RUN_MATRIX], ids=[c[0] for c in RUN_MATRIX]
)
async def test_run_request_validation(
    lab: httpx.AsyncClient, store: Store, body: dict[str, Any] | None, field: str
) -> None:
    """An invalid RunRequest is 422 validation_error naming the field, and queues nothing."""
    accepted = await reserve(lab, 0)
    r = (
        await lab.post("/fpga/0/run", json=body)
        if body is not None
        else await lab.post("/fpga/0/run")
    )
    err = assert_error(r, 422, "validation_error")
    assert re.match(rf"{field}\b", err["message"]), err  # the message starts with the field
    assert [j["job_id"] for j in await jobs_in_redis(store)] == [accepted["job_id"]]


async def test_largest_transfer_is_accepted(lab: httpx.AsyncClient) -> None:
    """A 65,536-word write (to the last words of the address space) and read are accepted."""
    await reserve(lab, 1)
    words = [(i * 2654435761) % 2**32 for i in range(65536)]
    assert (await run_job(lab, 1, {"op": 1, "address": 0, "data": words}))["ok"] is True
    result = await run_job(lab, 1, {"op": 2, "address": 0, "length": 65536})
    assert result["data"] == words
    top = 2**32 - 4 * 65536
    r = await lab.post("/fpga/1/run", json={"op": 2, "address": top, "length": 65536})
    assert r.status_code == 202, r.text


# -- upload checks -------------------------------------------------------------------------

UPLOAD_MATRIX: list[tuple[str, Any, int, str]] = [
    (
        "txt extension",
        {"file": ("design.txt", b"module m; endmodule\n")},
        422,
        "unsupported_design",
    ),
    ("no extension", {"file": ("design", b"module m; endmodule\n")}, 422, "unsupported_design"),
    ("empty file", {"file": ("design.v", b"")}, 422, "empty_design"),
    ("only whitespace", {"file": ("design.py", b"  \n\t\n")}, 422, "empty_design"),
    ("not UTF-8", {"file": ("design.v", b"module m;\xff\xfe endmodule\n")}, 422, "design_not_text"),
    ("NUL bytes", {"file": ("design.py", b"x = 1\x00\n")}, 422, "design_not_text"),
    ("missing file field", {"other": ("design.py", b"x = 1\n")}, 422, "validation_error"),
]


@pytest.mark.parametrize(
    ("files", "status", "code"), [c[1:] for c in UPLOAD_MATRIX], ids=[c[0] for c in UPLOAD_MATRIX]
)
async def test_upload_is_checked_before_queueing(
    lab: httpx.AsyncClient, store: Store, files: Any, status: int, code: str
) -> None:
    """A bad upload is refused with its code; nothing is queued and the board stays idle."""
    r = await lab.post("/fpga/4/submit", files=files)
    err = assert_error(r, status, code)
    if code == "validation_error":
        assert names_field(err["message"], "file"), err
    b = await board(lab, 4)
    assert b["state"] == "idle" and b["session"] is None and b["current_job_id"] is None
    assert await jobs_in_redis(store) == []


async def test_oversized_upload_is_413(
    lab: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    """An upload over max_upload_bytes is 413 design_too_large; one at the limit is accepted."""
    limit = settings.max_upload_bytes
    r = await submit(lab, 4, "#" * (limit + 1))
    assert_error(r, 413, "design_too_large")
    assert (await board(lab, 4))["state"] == "idle" and await jobs_in_redis(store) == []
    ok = await submit(lab, 4, "#" * (limit - 1) + "\n")
    assert ok.status_code == 202, ok.text


@pytest.mark.parametrize("filename", ["top.v", "top.sv", "TOP.SV", "design.py"])
async def test_verilog_and_python_designs_are_accepted(
    lab: httpx.AsyncClient, backend: FakeBackend, filename: str
) -> None:
    """A .v, .sv or .py upload is accepted and built under its own name."""
    r = await submit(lab, 5, "module top; endmodule\n", filename=filename)
    assert r.status_code == 202, r.text
    done = await wait_job(lab, 5, r.json()["job_id"])
    assert done["status"] == "complete" and done["filename"] == filename
    assert ("build", filename) in backend.calls


# -- HTTP-level errors, timestamps, schema -------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/fpga/1/nope", "/fpga/1/jobs", "/fpgas"])
async def test_unknown_route_is_404_with_the_error_shape(
    client: httpx.AsyncClient, path: str
) -> None:
    """An unknown route is 404 with the documented error shape."""
    assert_error(await client.get(path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/health"), ("DELETE", "/fpga/1"), ("GET", "/fpga/1/submit"),
     ("POST", "/fpga/1/jobs/abc"), ("GET", "/fpga/1/session/release")],
)  # fmt: skip
async def test_wrong_method_is_405_with_the_error_shape(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    """A known route called with the wrong method is 405 with the documented error shape."""
    assert_error(await client.request(method, path), 405, "method_not_allowed")


async def test_timestamps_are_iso_8601_utc(lab: httpx.AsyncClient) -> None:
    """Every timestamp the API shows is ISO 8601 with a UTC offset."""
    r = await submit(lab, 6)
    accepted = r.json()
    assert is_utc_timestamp(accepted["expires_at"]), accepted
    done = await wait_job(lab, 6, accepted["job_id"])
    for field in ("created_at", "updated_at", "started_at", "finished_at"):
        assert is_utc_timestamp(done[field]), (field, done)
    session = (await lab.get("/fpga/6/session")).json()
    for field in ("created_at", "expires_at", "max_expires_at"):
        assert is_utc_timestamp(session[field]), (field, session)
    b = await board(lab, 6)
    assert is_utc_timestamp(b["updated_at"]), b
    for field in ("created_at", "expires_at", "max_expires_at"):
        assert is_utc_timestamp(b["session"][field]), (field, b)


#: Statuses each route can answer, errors included.
ROUTE_STATUSES: dict[tuple[str, str], set[int]] = {
    ("get", "/health"): {200, 503},
    ("get", "/fpga"): {200, 401, 503},
    ("get", "/fpga/{fpga_id}"): {200, 401, 422, 503},
    ("post", "/fpga/{fpga_id}/submit"): {202, 401, 409, 413, 422, 503},
    ("post", "/fpga/{fpga_id}/run"): {202, 401, 403, 409, 422, 503},
    ("post", "/fpga/{fpga_id}/reset"): {202, 401, 403, 409, 422, 503},
    ("post", "/fpga/{fpga_id}/maintenance"): {200, 401, 403, 422, 503},
    ("post", "/fpga/{fpga_id}/online"): {200, 401, 403, 422, 503},
    ("get", "/fpga/{fpga_id}/jobs/{job_id}"): {200, 401, 404, 422, 503},
    ("get", "/fpga/{fpga_id}/jobs/{job_id}/logs"): {200, 401, 403, 404, 422, 503},
    ("get", "/fpga/{fpga_id}/jobs/{job_id}/result"): {200, 401, 403, 404, 409, 422, 503},
    ("delete", "/fpga/{fpga_id}/jobs/{job_id}"): {204, 401, 403, 404, 409, 422, 503},
    ("get", "/fpga/{fpga_id}/session"): {200, 401, 404, 422, 503},
    ("post", "/fpga/{fpga_id}/session/release"): {202, 401, 403, 404, 409, 422, 503},
    ("post", "/fpga/{fpga_id}/session/renew"): {200, 401, 403, 404, 409, 422, 503},
}


async def test_openapi_names_the_models(client: httpx.AsyncClient) -> None:
    """/openapi.json names FPGASummary, RunRequest, JobResponse, SessionResponse, ErrorResponse."""
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    schemas = r.json()["components"]["schemas"]
    for name in ("FPGASummary", "RunRequest", "JobResponse", "SessionResponse", "ErrorResponse"):
        assert name in schemas, name
    run = schemas["RunRequest"]
    assert {"op", "address", "data", "length"} <= set(run["properties"])
    assert set(run["required"]) == {"op", "address"}
    assert set(schemas["FPGASummary"]["properties"]) >= SUMMARY_FIELDS
    assert set(schemas["JobResponse"]["properties"]) >= JOB_FIELDS
    assert set(schemas["SessionResponse"]["properties"]) >= SESSION_FIELDS


async def test_openapi_documents_every_error_status(client: httpx.AsyncClient) -> None:
    """Each route documents every status it can answer, its errors as JSON ErrorResponse."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    documented = {(m, p): op for p, ops in paths.items() for m, op in ops.items()}
    missing_routes = set(ROUTE_STATUSES) - set(documented)
    assert not missing_routes, missing_routes
    for route, statuses in ROUTE_STATUSES.items():
        responses = documented[route]["responses"]
        assert statuses <= {int(s) for s in responses}, (route, sorted(responses))
        for status in statuses:
            if status >= 400 and route != ("get", "/health"):
                ref = responses[str(status)]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), (route, status, ref)
    for (method, path), op in documented.items():
        if path.startswith("/fpga"):  # every board route can meet a bad key or a Redis outage
            assert {"401", "503"} <= set(op["responses"]), (method, path)


async def test_docs_serve_html(client: httpx.AsyncClient) -> None:
    """/docs serves the Swagger UI as HTML pointing at /openapi.json."""
    r = await client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in r.text and "swagger" in r.text.lower()
