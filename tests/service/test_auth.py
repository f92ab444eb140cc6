"""Identity: X-API-Key names the caller, X-Session-ID the session; owners, admins,
open mode, and keys that never leak."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from fpgalab.service.app import create_app
from fpgalab.service.settings import Settings
from tests.conftest import WorkerFactory
from tests.helpers import (
    assert_error,
    board,
    job,
    reserve,
    run_job,
    serve,
    submit,
    wait_job,
    wait_state,
)

#: Distinctive key texts, so that a leak into any response or log is visible.
ALICE_KEY = "alice-secret-7c1e90"
BOB_KEY = "bob-secret-93fa21"
OPS_KEY = "ops-secret-5d20aa"
CAROL_KEY = "carol-secret-e41b07"
ALL_KEYS = (ALICE_KEY, BOB_KEY, OPS_KEY, CAROL_KEY)

ALICE = {"X-API-Key": ALICE_KEY}
BOB = {"X-API-Key": BOB_KEY}
OPS = {"X-API-Key": OPS_KEY}  # admin
CAROL = {"X-API-Key": CAROL_KEY}  # from the keys file

PUBLIC = {"/health", "/docs", "/openapi.json"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(
        "# fpgalab keys: name=key[:admin]\n"
        "\n"
        "   \n"
        f"carol = {CAROL_KEY}   # the CI robot\n"
        "# dave=retired-key\n"
    )
    return path


@pytest.fixture
def app_settings(settings: Settings, keys_file: Path) -> Settings:
    """Keys for alice, bob and ops (admin) in the environment, carol in a keys file; no
    limit on calls with unknown keys (these tests make many: test_audit tests the limit)."""
    return settings.model_copy(
        update={
            "api_keys": f"alice={ALICE_KEY},bob={BOB_KEY}, ops={OPS_KEY}:admin",
            "api_keys_file": keys_file,
            "unknown_key_rate_limit": 0.0,
        }
    )


def fill(path: str) -> str:
    return path.replace("{fpga_id}", "1").replace("{job_id}", "0123abcd")


async def test_every_route_but_health_and_docs_needs_a_valid_key(
    client: httpx.AsyncClient,
) -> None:
    """Every route in the schema but /health answers 401 invalid_api_key without a key or with a
    wrong one; /health, /docs and /openapi.json answer without one."""
    schema = (await client.get("/openapi.json")).json()
    routes = [
        (method.upper(), path)
        for path, methods in schema["paths"].items()
        for method in methods
        if path not in PUBLIC
    ]
    # the schema must list the routes this test is about (else it would test nothing)
    assert {
        ("GET", "/fpga"),
        ("POST", "/fpga/{fpga_id}/submit"),
        ("POST", "/fpga/{fpga_id}/run"),
        ("POST", "/fpga/{fpga_id}/reset"),
        ("POST", "/fpga/{fpga_id}/maintenance"),
        ("POST", "/fpga/{fpga_id}/online"),
        ("GET", "/fpga/{fpga_id}/jobs/{job_id}/logs"),
        ("GET", "/fpga/{fpga_id}/jobs/{job_id}/result"),
        ("DELETE", "/fpga/{fpga_id}/jobs/{job_id}"),
        ("GET", "/fpga/{fpga_id}/session"),
        ("POST", "/fpga/{fpga_id}/session/release"),
        ("POST", "/fpga/{fpga_id}/session/renew"),
    } <= set(routes)
    for method, path in routes:
        for headers in ({}, {"X-API-Key": "not-a-known-key"}, {"X-API-Key": ""}):
            r = await client.request(method, fill(path), headers=headers)
            detail = assert_error(r, 401, "invalid_api_key")
            assert "X-API-Key" in detail["message"], (method, path)
    for path in PUBLIC:
        assert (await client.get(path)).status_code == 200, path
    # the right key passes the same gate
    assert (await client.get("/fpga", headers=ALICE)).status_code == 200


async def test_keys_from_the_environment_and_the_file_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    """Each configured key (comments and blank lines in the file skipped) is let in; a
    commented-out entry is not a key."""
    for headers in (ALICE, BOB, OPS, CAROL):
        assert (await client.get("/fpga/0", headers=headers)).status_code == 200, headers
    assert_error(
        await client.get("/fpga/0", headers={"X-API-Key": "retired-key"}), 401, "invalid_api_key"
    )


async def test_a_non_owner_cannot_act_on_the_session(lab: httpx.AsyncClient) -> None:
    """Run, reset, release and renew by another caller are 403 not_session_owner and change
    nothing."""
    accepted = await reserve(lab, 2, headers=ALICE)
    for caller in (BOB, CAROL):
        run = await lab.post("/fpga/2/run", json={"op": 2, "address": 0}, headers=caller)
        assert_error(run, 403, "not_session_owner")
        assert_error(await lab.post("/fpga/2/reset", headers=caller), 403, "not_session_owner")
        for action in ("release", "renew"):
            r = await lab.post(f"/fpga/2/session/{action}", headers=caller)
            assert_error(r, 403, "not_session_owner")
    b = await board(lab, 2, headers=ALICE)
    assert b["state"] == "reserved"
    assert b["session"]["session_id"] == accepted["session_id"]
    assert b["session"]["owner"] == "alice"
    assert (await run_job(lab, 2, {"op": 2, "address": 0}, headers=ALICE))["ok"] is True


async def test_a_non_owner_cannot_cancel_a_job(client: httpx.AsyncClient) -> None:
    """Cancelling another caller's queued job is 403 not_session_owner; an admin may cancel it."""
    # no worker: the board is made good by an admin, and the build stays queued
    assert (await client.post("/fpga/4/maintenance", headers=OPS)).status_code == 200
    assert (await client.post("/fpga/4/online", headers=OPS)).json()["health"] == "good"
    r = await submit(client, 4, headers=ALICE)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert_error(
        await client.delete(f"/fpga/4/jobs/{job_id}", headers=BOB), 403, "not_session_owner"
    )
    assert (await job(client, 4, job_id, headers=ALICE))["status"] == "queued"
    assert (await board(client, 4, headers=ALICE))["state"] == "queued"
    assert (await client.delete(f"/fpga/4/jobs/{job_id}", headers=OPS)).status_code == 204
    assert (await job(client, 4, job_id, headers=ALICE))["status"] == "cancelled"
    assert (await board(client, 4, headers=ALICE))["state"] == "idle"


async def test_the_owner_can_cancel_their_own_queued_job(client: httpx.AsyncClient) -> None:
    """The session's owner cancels their own queued build with 204."""
    await client.post("/fpga/5/maintenance", headers=OPS)
    await client.post("/fpga/5/online", headers=OPS)
    job_id = (await submit(client, 5, headers=CAROL)).json()["job_id"]
    assert (await client.delete(f"/fpga/5/jobs/{job_id}", headers=CAROL)).status_code == 204
    assert (await board(client, 5, headers=CAROL))["state"] == "idle"


async def test_an_admin_may_act_on_anyones_session(lab: httpx.AsyncClient) -> None:
    """An admin key runs on, renews, releases and resets boards reserved by someone else."""
    await reserve(lab, 1, headers=ALICE)
    await reserve(lab, 3, headers=ALICE)
    assert (await run_job(lab, 1, {"op": 1, "address": 0, "data": [5]}, headers=OPS))["ok"]
    assert (await run_job(lab, 1, {"op": 2, "address": 0}, headers=ALICE))["data"] == [5]
    renewed = await lab.post("/fpga/1/session/renew", headers=OPS)
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["owner"] == "alice"  # renewing does not take the session over
    release = await lab.post("/fpga/1/session/release", headers=OPS)
    assert release.status_code == 202, release.text
    reset = await lab.post("/fpga/3/reset", headers=OPS)
    assert reset.status_code == 202, reset.text
    await wait_state(lab, 1, "idle", headers=OPS)
    await wait_state(lab, 3, "idle", headers=OPS)


async def test_session_id_header_must_match_the_session(lab: httpx.AsyncClient) -> None:
    """A wrong X-Session-ID is 403 session_mismatch for run, reset, release and renew; the
    right one is accepted."""
    sid = (await reserve(lab, 6, headers=ALICE))["session_id"]
    wrong = {**ALICE, "X-Session-ID": "not-" + sid}
    right = {**ALICE, "X-Session-ID": sid}
    run = await lab.post("/fpga/6/run", json={"op": 2, "address": 0}, headers=wrong)
    detail = assert_error(run, 403, "session_mismatch")
    assert "X-Session-ID" in detail["message"]
    assert_error(await lab.post("/fpga/6/reset", headers=wrong), 403, "session_mismatch")
    for action in ("release", "renew"):
        r = await lab.post(f"/fpga/6/session/{action}", headers=wrong)
        assert_error(r, 403, "session_mismatch")
    assert (await board(lab, 6, headers=ALICE))["state"] == "reserved"

    assert (await run_job(lab, 6, {"op": 2, "address": 0}, headers=right))["ok"] is True
    renewed = await lab.post("/fpga/6/session/renew", headers=right)
    assert renewed.status_code == 200 and renewed.json()["session_id"] == sid
    release = await lab.post("/fpga/6/session/release", headers=right)
    assert release.status_code == 202, release.text
    await wait_state(lab, 6, "idle", headers=ALICE)


async def test_session_id_header_must_match_the_jobs_session(client: httpx.AsyncClient) -> None:
    """On a job's cancel, logs and result, a sent X-Session-ID must be the job's session:
    another is 403 session_mismatch (after the owner check) and cancels nothing; the job's
    own is accepted, also once that session has ended."""
    # no worker: the board is made good by an admin, and the build stays queued
    assert (await client.post("/fpga/4/maintenance", headers=OPS)).status_code == 200
    assert (await client.post("/fpga/4/online", headers=OPS)).status_code == 200
    accepted = (await submit(client, 4, headers=ALICE)).json()
    base, sid = f"/fpga/4/jobs/{accepted['job_id']}", accepted["session_id"]
    right = {**ALICE, "X-Session-ID": sid}
    for caller in (ALICE, OPS):
        wrong = {**caller, "X-Session-ID": "not-" + sid}
        for method, path in (("GET", f"{base}/logs"), ("GET", f"{base}/result"), ("DELETE", base)):
            r = await client.request(method, path, headers=wrong)
            assert "X-Session-ID" in assert_error(r, 403, "session_mismatch")["message"]
    r = await client.get(f"{base}/logs", headers={**BOB, "X-Session-ID": sid})
    assert_error(r, 403, "not_session_owner")
    assert (await job(client, 4, accepted["job_id"], headers=ALICE))["status"] == "queued"
    assert (await client.get(f"{base}/logs", headers=right)).status_code == 200
    assert_error(await client.get(f"{base}/result", headers=right), 409, "job_not_complete")
    assert (await client.delete(base, headers=right)).status_code == 204
    assert (await board(client, 4, headers=ALICE))["session"] is None
    assert (await client.get(f"{base}/result", headers=right)).status_code == 409  # cancelled
    assert (await client.get(f"{base}/logs", headers=right)).status_code == 200


async def test_another_callers_logs_and_result_are_forbidden(lab: httpx.AsyncClient) -> None:
    """Logs and result of another caller's job are 403 not_session_owner; an admin reads them."""
    build = await reserve(lab, 7, headers=ALICE)
    await run_job(lab, 7, {"op": 1, "address": 16, "data": [42]}, headers=ALICE)
    r = await lab.post("/fpga/7/run", json={"op": 2, "address": 16}, headers=ALICE)
    run_id = r.json()["job_id"]
    await wait_job(lab, 7, run_id, headers=ALICE)
    paths = [
        f"/fpga/7/jobs/{build['job_id']}/logs",
        f"/fpga/7/jobs/{run_id}/logs",
        f"/fpga/7/jobs/{run_id}/result",
    ]
    for path in paths:
        mine = await lab.get(path, headers=ALICE)
        assert mine.status_code == 200, (path, mine.text)
        for other in (BOB, CAROL):
            assert_error(await lab.get(path, headers=other), 403, "not_session_owner")
        admin = await lab.get(path, headers=OPS)
        assert admin.status_code == 200 and admin.content == mine.content, path
    assert (await lab.get(paths[2], headers=ALICE)).json()["data"] == [42]


async def test_maintenance_and_online_need_an_admin(client: httpx.AsyncClient) -> None:
    """Maintenance and online by a non-admin are 403 admin_required and change nothing; the
    admin's calls work."""
    for path in ("/fpga/8/maintenance", "/fpga/8/online"):
        for caller in (ALICE, CAROL):
            detail = assert_error(await client.post(path, headers=caller), 403, "admin_required")
            assert "admin" in detail["message"]
    assert (await board(client, 8, headers=ALICE))["health"] == "unknown"
    r = await client.post("/fpga/8/maintenance", headers=OPS)
    assert r.status_code == 200 and r.json()["health"] == "maintenance"
    assert_error(await client.post("/fpga/8/online", headers=ALICE), 403, "admin_required")
    assert (await board(client, 8, headers=ALICE))["health"] == "maintenance"
    r = await client.post("/fpga/8/online", headers=OPS)
    assert r.status_code == 200 and r.json()["health"] == "good"


async def test_jobs_and_sessions_carry_the_caller(lab: httpx.AsyncClient) -> None:
    """The submit answer, the session and every job of it name the caller and the session id."""
    r = await submit(lab, 9, headers=CAROL)
    assert r.status_code == 202
    sid = r.json()["session_id"]
    assert sid
    build = await wait_job(lab, 9, r.json()["job_id"], headers=CAROL)
    assert (build["owner"], build["session_id"]) == ("carol", sid)
    session = (await lab.get("/fpga/9/session", headers=CAROL)).json()
    assert (session["owner"], session["session_id"]) == ("carol", sid)
    run = await lab.post("/fpga/9/run", json={"op": 2, "address": 0}, headers=CAROL)
    assert run.json()["session_id"] == sid
    done = await wait_job(lab, 9, run.json()["job_id"], headers=CAROL)
    assert (done["owner"], done["session_id"]) == ("carol", sid)
    reset = await lab.post("/fpga/9/reset", headers=CAROL)
    done = await wait_job(lab, 9, reset.json()["job_id"], headers=CAROL)
    assert (done["owner"], done["session_id"]) == ("carol", sid)
    other = await reserve(lab, 0, headers=ALICE)
    assert other["session_id"] != sid
    assert (await job(lab, 0, other["job_id"], headers=ALICE))["owner"] == "alice"


async def test_open_mode_needs_no_headers_and_warns_at_start(
    settings: Settings, start_worker: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With no keys the lab works without any header (every caller is an admin) and its
    start-up log warns that the lab is open."""
    assert settings.api_keys == "" and settings.api_keys_file is None
    with caplog.at_level(logging.INFO, logger="fpgalab.api"):
        async with serve(settings) as c:
            warnings = [
                rec for rec in caplog.records
                if rec.name == "fpgalab.api" and rec.levelno == logging.WARNING
            ]  # fmt: skip
            assert any("OPEN" in rec.getMessage() for rec in warnings), caplog.text
            await start_worker()
            accepted = await reserve(c, 2)
            assert (await job(c, 2, accepted["job_id"]))["owner"] == "anonymous"
            assert (await run_job(c, 2, {"op": 2, "address": 0}))["ok"] is True
            logs = await c.get(f"/fpga/2/jobs/{accepted['job_id']}/logs")
            assert logs.status_code == 200 and "programmed" in logs.text
            assert (await c.post("/fpga/2/session/renew")).status_code == 200
            assert (await c.post("/fpga/3/maintenance")).json()["health"] == "maintenance"
            assert (await c.post("/fpga/3/online")).json()["health"] == "good"
            assert (await c.post("/fpga/2/session/release")).status_code == 202


async def test_a_keyed_lab_does_not_warn_that_it_is_open(
    app_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """With keys configured the start-up log says how many, and no open-lab warning."""
    with caplog.at_level(logging.INFO, logger="fpgalab.api"):
        async with serve(app_settings) as c:
            assert (await c.get("/fpga")).status_code == 401
    api = [rec.getMessage() for rec in caplog.records if rec.name == "fpgalab.api"]
    assert not any("OPEN" in m for m in api), api
    assert any("4 API keys" in m for m in api), api


@pytest.mark.parametrize(
    ("api_keys", "file_text", "where", "secret"),
    [
        ("alice=alice-secret-1,bob-secret-2", None, "FPGALAB_API_KEYS: entry 2", "bob-secret-2"),
        ("=nameless-secret-3", None, "FPGALAB_API_KEYS: entry 1", "nameless-secret-3"),
        ("carol-secret-4:admin", None, "FPGALAB_API_KEYS: entry 1", "carol-secret-4"),
        ("alice=alice-secret-1,eve=:admin", None, "FPGALAB_API_KEYS: entry 2", "alice-secret-1"),
        ("da ve=dave-secret-5", None, "FPGALAB_API_KEYS: entry 1", "dave-secret-5"),
        ("", "# keys\nalice=alice-secret-1\nbob bob-secret-6\n", "entry 3", "bob-secret-6"),
        ("", "fr:ed=fred-secret-7\n", "entry 1", "fred-secret-7"),
    ],
)
def test_a_malformed_keys_entry_stops_the_start_without_showing_the_key(
    settings: Settings,
    tmp_path: Path,
    api_keys: str,
    file_text: str | None,
    where: str,
    secret: str,
) -> None:
    """create_app refuses a malformed keys entry with an error naming the entry, never the key."""
    update: dict[str, Any] = {"api_keys": api_keys}
    if file_text is not None:
        path = tmp_path / "lab.keys"
        path.write_text(file_text)
        update["api_keys_file"] = path
        where = f"{path}: {where}"
    with pytest.raises(ValueError) as caught:
        create_app(settings.model_copy(update=update))
    message = str(caught.value)
    assert where in message, message
    assert secret not in message and secret not in repr(caught.value), message
    assert caught.value.__cause__ is None and caught.value.__context__ is None


async def test_no_key_text_appears_in_any_response(
    client: httpx.AsyncClient, start_worker: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Across a whole session, its errors included, no response (body or header) and no log
    line carries a key's text."""
    seen: list[httpx.Response] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        seen.append(response)

    client.event_hooks = {"request": [], "response": [keep]}
    await start_worker()
    accepted = await reserve(client, 1, headers=ALICE)
    build_id, sid = accepted["job_id"], accepted["session_id"]
    await run_job(client, 1, {"op": 1, "address": 0, "data": [1, 2]}, headers=ALICE)
    run_id = (await client.post("/fpga/1/run", json={"op": 2, "address": 0}, headers=ALICE)).json()[
        "job_id"
    ]
    await wait_job(client, 1, run_id, headers=ALICE)
    for headers in (ALICE, BOB, OPS, {}, {"X-API-Key": ALICE_KEY + "x"}):
        await client.get("/fpga", headers=headers)
        await client.get("/fpga/1", headers=headers)
        await client.get("/fpga/1/session", headers=headers)
        await client.get(f"/fpga/1/jobs/{build_id}", headers=headers)
        await client.get(f"/fpga/1/jobs/{build_id}/logs", headers=headers)
        await client.get(f"/fpga/1/jobs/{run_id}/result", headers=headers)
        await client.post("/fpga/1/session/renew", headers={**headers, "X-Session-ID": "x"})
        await client.post("/fpga/1/maintenance", headers=headers)
    await client.get("/openapi.json")
    await client.get("/docs")
    await client.post("/fpga/1/session/release", headers={**ALICE, "X-Session-ID": sid})
    await wait_state(client, 1, "idle", headers=ALICE)

    statuses = {r.status_code for r in seen}
    assert {200, 202, 401, 403} <= statuses, statuses  # errors were among what was checked
    for response in seen:
        text = response.text + "".join(f"{k}: {v}" for k, v in response.headers.items())
        for key in ALL_KEYS:
            assert key not in text, (response.request.url, key)
    for key in ALL_KEYS:
        assert key not in caplog.text


def test_two_callers_with_the_same_key_stop_the_start(settings: Settings) -> None:
    """A key shared by two names is refused at start-up, naming both, not the key."""
    from fpgalab.service.auth import KeyFileError

    bad = settings.model_copy(update={"api_keys": "alice=samekey99,bob=samekey99"})
    with pytest.raises(KeyFileError) as info:
        create_app(bad)
    assert "alice" in str(info.value) and "bob" in str(info.value)
    assert "samekey99" not in str(info.value)
