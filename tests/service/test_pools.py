"""Pools over the API (ASGI, a real Redis, workers on the FakeBackend): a design for any
free board of a platform with some tags, placed in one step in Redis, in the order of
priority and fair share, with its queue position and ETA; impossible requests refused
at once; cancelled while waiting, never run."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from fpgalab.service import keys
from fpgalab.service.settings import Settings
from fpgalab.service.store import Actor, Store
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import assert_error, board, serve, wait_for, wait_job

KEYS = "alice=alice-key,bob=bob-key,carol=carol-key,ci=ci-key,ops=ops-key:admin"
OPS = Actor("ops", admin=True)
HEADERS = {name: {"X-API-Key": f"{name}-key"} for name in ("alice", "bob", "carol", "ci", "ops")}
DESIGN = b"# a design\nDesign = None\n"
#: The workers' boards: three of platform sim tagged dsp, two sim tagged slow, one ulx3s.
INVENTORY = {
    0: ("sim", ("dsp", "big")),
    1: ("sim", ("dsp",)),
    2: ("sim", ("dsp",)),
    3: ("sim", ("slow",)),
    4: ("sim", ("slow",)),
    5: ("ulx3s", ()),
}


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Keyed callers, no rate limit, room for twenty boards per caller."""
    return settings.model_copy(
        update={"api_keys": KEYS, "rate_limit": 0.0, "max_boards_per_caller": 20}
    )


@pytest.fixture
async def pooled(
    client: httpx.AsyncClient, start_worker: WorkerFactory, app_settings: Settings
) -> httpx.AsyncClient:
    """The API with a worker serving boards 0-5 as ``INVENTORY`` says (6-9 are in the lab
    but no worker serves them)."""
    await start_worker(list(INVENTORY), inventory=INVENTORY, worker_settings=app_settings)
    return client


async def pool_submit(
    client: httpx.AsyncClient, who: str, expect: int = 202, design: bytes = DESIGN, **fields: Any
) -> dict[str, Any]:
    data = {k: str(v) for k, v in fields.items()}
    r = await client.post(
        "/submit", files={"file": ("d.py", design)}, data=data, headers=HEADERS[who]
    )
    assert r.status_code == expect, r.text
    return r.json()  # type: ignore[no-any-return]


async def lab_job(client: httpx.AsyncClient, job_id: str, who: str = "ops") -> dict[str, Any]:
    r = await client.get(f"/jobs/{job_id}", headers=HEADERS[who])
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def release(client: httpx.AsyncClient, fpga_id: int) -> None:
    """Give the board back (as an admin) and wait until its reset has ended."""
    r = await client.post(f"/fpga/{fpga_id}/session/release", headers=HEADERS["ops"])
    assert r.status_code == 202, r.text
    await wait_job(client, fpga_id, r.json()["job_id"], headers=HEADERS["ops"])


async def test_a_pool_job_is_placed_at_once_on_a_free_matching_board(
    pooled: httpx.AsyncClient,
) -> None:
    """A pool submit with a board free is placed in the same step, on a free board that
    meets it; once placed, the board's session is the job's and every board route works
    as after a submit to that board."""
    accepted = await pool_submit(pooled, "alice", platform="sim", tags="big,dsp")
    assert accepted["fpga_id"] == 0 and accepted["queue_position"] == 0
    assert accepted["status"] == "queued" and accepted["eta_seconds"] is None
    done = await wait_job(pooled, 0, accepted["job_id"], headers=HEADERS["alice"])
    assert done["status"] == "complete" and done["type"] == "build_and_program"
    shown = await board(pooled, 0, headers=HEADERS["alice"])
    assert shown["state"] == "reserved" and shown["session"]["owner"] == "alice"
    assert shown["session"]["session_id"] == accepted["session_id"]
    job = await lab_job(pooled, accepted["job_id"], "alice")
    assert (job["fpga_id"], job["queue_position"], job["eta_seconds"]) == (0, 0, None)
    assert (job["platform"], job["tags"], job["priority"]) == ("sim", ["big", "dsp"], 50)
    # the next ones take other boards that meet them; "big" only board 0, now taken
    second = await pool_submit(pooled, "bob", tags="dsp")
    assert second["fpga_id"] in (1, 2)
    slow = await pool_submit(pooled, "bob", tags="slow")
    assert slow["fpga_id"] in (3, 4)
    waiting = await pool_submit(pooled, "bob", tags="big")
    assert waiting["fpga_id"] is None and waiting["queue_position"] == 0
    run = await pooled.post(
        "/fpga/0/run", json={"op": 1, "address": 0x2000_0000, "data": [7]},
        headers=HEADERS["alice"],
    )  # fmt: skip
    assert run.status_code == 202, run.text


async def test_a_request_no_board_can_meet_is_refused_at_once(
    pooled: httpx.AsyncClient,
) -> None:
    """422 no_matching_board, naming what is missing; a name that is not a tag's is 422
    validation_error naming the field; the admins' priority band is 403 for a caller."""
    for fields, says in [
        ({"platform": "ecp5"}, "no board has platform ecp5 (the lab has sim, ulx3s)"),
        ({"tags": "gpu"}, "no board has the tag gpu"),
        ({"platform": "ulx3s", "tags": "dsp"}, "no ulx3s board has the tag dsp"),
        ({"tags": "dsp,slow"}, "no single board has all of the tags dsp, slow"),
    ]:
        r = await pooled.post("/submit", files={"file": ("d.py", DESIGN)}, data=fields,
                              headers=HEADERS["alice"])  # fmt: skip
        assert says in assert_error(r, 422, "no_matching_board")["message"], fields
    bad: list[tuple[dict[str, str], str]] = [
        ({"tags": "Big"}, "tags"), ({"platform": "a b"}, "platform"),
        ({"priority": "101"}, "priority"), ({"priority": "x"}, "priority"),
    ]  # fmt: skip
    for fields, field in bad:
        r = await pooled.post("/submit", files={"file": ("d.py", DESIGN)}, data=fields,
                              headers=HEADERS["alice"])  # fmt: skip
        assert field in assert_error(r, 422, "validation_error")["message"], fields
    r = await pooled.post("/submit", files={"file": ("d.py", DESIGN)}, data={"priority": "95"},
                          headers=HEADERS["alice"])  # fmt: skip
    assert "admins' band" in assert_error(r, 403, "priority_reserved")["message"]
    assert (await pool_submit(pooled, "ops", priority=95))["fpga_id"] is not None
    # nothing of a refused request was kept
    boards = (await pooled.get("/fpga", headers=HEADERS["ops"])).json()
    assert sum(b["state"] != "idle" for b in boards) == 1


async def test_twenty_jobs_of_four_callers_on_three_boards_in_priority_and_turn_order(
    pooled: httpx.AsyncClient,
) -> None:
    """With the three dsp boards taken, ci submits ten jobs, alice four, bob three at a
    higher priority, carol three: each runs once, on a dsp board, placed in the order the
    rules say (bob's first; then, within a priority, the callers take turns in order of
    arrival; ci's six last ones at the end); a waiting job's queue position counts down
    to 0 as the boards come back."""
    holders = [await pool_submit(pooled, "ops", tags="dsp") for _ in range(3)]
    assert sorted(h["fpga_id"] for h in holders) == [0, 1, 2]
    for h in holders:
        await wait_job(pooled, h["fpga_id"], h["job_id"], headers=HEADERS["ops"])
    names: dict[str, str] = {}  # job id -> e.g. "ci3"
    for who, n, priority in [("ci", 10, 50), ("alice", 4, 50), ("bob", 3, 70), ("carol", 3, 50)]:
        for i in range(1, n + 1):
            accepted = await pool_submit(pooled, who, tags="dsp", priority=priority)
            assert accepted["fpga_id"] is None
            names[accepted["job_id"]] = f"{who}{i}"
    last = next(job_id for job_id, name in names.items() if name == "ci10")
    positions = [(await lab_job(pooled, last))["queue_position"]]
    assert positions == [19]

    placed: list[str] = []
    seen_boards: dict[str, int] = {}
    free = [0, 1, 2]
    while len(placed) < 20:
        await release(pooled, free.pop(0))
        for job_id, name in names.items():
            if name in placed:
                continue
            job = await lab_job(pooled, job_id)
            if job["fpga_id"] is not None:
                placed.append(name)
                seen_boards[name] = job["fpga_id"]
                done = await wait_job(pooled, job["fpga_id"], job_id, headers=HEADERS["ops"])
                assert done["status"] == "complete"
                free.append(job["fpga_id"])
        positions.append((await lab_job(pooled, last))["queue_position"])
    assert placed == [
        "bob1", "bob2", "bob3",
        "ci1", "alice1", "carol1", "ci2", "alice2", "carol2", "ci3", "alice3", "carol3",
        "ci4", "alice4", "ci5", "ci6", "ci7", "ci8", "ci9", "ci10",
    ]  # fmt: skip
    assert set(seen_boards.values()) <= {0, 1, 2}
    assert positions == sorted(positions, reverse=True) and positions[-1] == 0
    assert len(set(positions)) > 10  # it counted down, one board's turn at a time
    for job_id in names:  # each ran once: one build, on its board
        job = await lab_job(pooled, job_id)
        assert job["status"] == "complete" and job["queue_position"] == 0


async def test_a_waiting_job_cancelled_never_runs(pooled: httpx.AsyncClient) -> None:
    """DELETE /jobs/{id} of a waiting pool job: 204, it is cancelled and leaves its queue
    (the one behind moves up); the board that frees up takes the next one; another
    caller may not cancel it, and a finished one is 409."""
    holder = await pool_submit(pooled, "ops", platform="ulx3s")
    await wait_job(pooled, 5, holder["job_id"], headers=HEADERS["ops"])
    first = await pool_submit(pooled, "alice", platform="ulx3s")
    second = await pool_submit(pooled, "bob", platform="ulx3s")
    assert (first["queue_position"], second["queue_position"]) == (0, 1)
    other = await pooled.delete(f"/jobs/{first['job_id']}", headers=HEADERS["bob"])
    assert_error(other, 403, "not_session_owner")
    gone = await pooled.delete(f"/jobs/{first['job_id']}", headers=HEADERS["alice"])
    assert gone.status_code == 204, gone.text
    job = await lab_job(pooled, first["job_id"], "alice")
    assert job["status"] == "cancelled" and job["fpga_id"] is None
    assert (await lab_job(pooled, second["job_id"]))["queue_position"] == 0
    again = await pooled.delete(f"/jobs/{first['job_id']}", headers=HEADERS["alice"])
    assert_error(again, 409, "job_not_cancellable")
    await release(pooled, 5)
    taken = await lab_job(pooled, second["job_id"])
    assert taken["fpga_id"] == 5
    assert (await lab_job(pooled, first["job_id"]))["fpga_id"] is None  # never placed
    assert_error(await pooled.get("/jobs/nosuchjob", headers=HEADERS["bob"]), 404, "job_not_found")


async def test_racing_submits_through_two_replicas_never_share_a_board(
    pooled: httpx.AsyncClient, app_settings: Settings
) -> None:
    """Twelve pool submits at once through two API replicas for the three dsp boards:
    three are placed, each on its own board, the nine others wait in one queue of
    positions 0-8."""
    async with serve(app_settings) as replica:
        answers = await asyncio.gather(
            *(pool_submit(c, who, tags="dsp")
              for c in (pooled, replica) for who in ("alice", "bob", "carol", "ci", "ops", "ci")),
        )  # fmt: skip
    placed = [a["fpga_id"] for a in answers if a["fpga_id"] is not None]
    assert sorted(placed) == [0, 1, 2]
    positions = [a["queue_position"] for a in answers if a["fpga_id"] is None]
    assert sorted(positions) != [] and len(positions) == 9

    async def standing() -> list[int]:
        return sorted(
            [(await lab_job(pooled, a["job_id"]))["queue_position"] for a in answers
             if a["fpga_id"] is None]
        )  # fmt: skip

    assert await standing() == list(range(9))
    await wait_for(lambda: _all_built(pooled, [a for a in answers if a["fpga_id"] is not None]))


async def _all_built(client: httpx.AsyncClient, accepted: list[dict[str, Any]]) -> bool:
    for a in accepted:
        job = await lab_job(client, a["job_id"])
        if job["status"] != "complete":
            return False
    return True


async def test_a_wait_on_a_waiting_pool_job_ends_when_it_is_placed(
    pooled: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """GET /jobs/{id}?wait=S of a pool job waiting for a board answers once a board takes
    it: not at the end of S, nor once its build (held here) has finished."""
    holder = await pool_submit(pooled, "ops", platform="ulx3s")
    await wait_job(pooled, 5, holder["job_id"], headers=HEADERS["ops"])
    gated = b"# GATE\nDesign = None\n"
    waiting = await pool_submit(pooled, "alice", platform="ulx3s", design=gated)
    asked = asyncio.get_running_loop().time()
    held = asyncio.create_task(
        pooled.get(f"/jobs/{waiting['job_id']}", params={"wait": 20}, headers=HEADERS["alice"])
    )
    await asyncio.sleep(0.3)
    assert not held.done()
    await release(pooled, 5)
    answer = (await held).json()
    assert answer["fpga_id"] == 5 and answer["queue_position"] == 0
    assert answer["status"] in ("queued", "running")  # its build is held at the gate
    assert asyncio.get_running_loop().time() - asked < 10
    backend.release_gate()
    assert (await wait_job(pooled, 5, waiting["job_id"], headers=HEADERS["alice"]))["status"] == (
        "complete"
    )


async def test_restricted_tags_keep_their_boards_for_the_callers_named(
    start_worker: WorkerFactory, app_settings: Settings
) -> None:
    """With ``big`` restricted to alice: bob asking for big is 403 tag_restricted, a pool
    job of bob's never lands on board 0 (dsp, big) though it is free and the lowest, nor
    may he name board 0; alice's and an admin's may. A pool only restricted boards meet
    is 422 no_matching_board for bob, saying so."""
    settings = app_settings.model_copy(update={"restricted_tags": "big=alice;hub=alice"})
    inventory = {**INVENTORY, 5: ("ulx3s", ("hub",))}
    await start_worker(list(inventory), inventory=inventory, worker_settings=settings)
    async with serve(settings) as c:
        r = await c.post("/submit", files={"file": ("d.py", DESIGN)}, data={"tags": "big"},
                         headers=HEADERS["bob"])  # fmt: skip
        assert (
            "big restricted to other callers" in assert_error(r, 403, "tag_restricted")["message"]
        )
        first = (await pool_submit(c, "bob", tags="dsp"))["fpga_id"]
        assert first in (1, 2)
        named = await c.post("/fpga/0/submit", files={"file": ("d.py", DESIGN)},
                             headers=HEADERS["bob"])  # fmt: skip
        assert (
            "FPGA 0 is restricted (tag big)"
            in assert_error(named, 403, "tag_restricted")["message"]
        )
        r = await c.post("/submit", files={"file": ("d.py", DESIGN)},
                         data={"platform": "ulx3s"}, headers=HEADERS["bob"])  # fmt: skip
        message = assert_error(r, 422, "no_matching_board")["message"]
        assert "restricted (tags big, hub) to other callers" in message
        assert (await pool_submit(c, "bob", tags="dsp"))["fpga_id"] == 3 - first
        waiting = await pool_submit(c, "bob", tags="dsp")
        assert waiting["fpga_id"] is None  # board 0 is free, and not his
        assert (await pool_submit(c, "alice", tags="dsp"))["fpga_id"] == 0
        assert (await pool_submit(c, "ops", platform="ulx3s"))["fpga_id"] == 5


async def _free_lab(store: Store, boards: dict[int, tuple[str, tuple[str, ...]]],
                    served: dict[int, str], good: set[int]) -> None:  # fmt: skip
    """An empty Redis holding ``boards``; ``served`` leased to the workers named, those of
    ``good`` checked good (so free, if leased), the others bad."""
    await store.redis.flushall()
    await store.register_boards(boards)
    for fpga_id, worker in served.items():
        await store.redis.set(keys.owner(fpga_id), worker)
    for fpga_id in boards:
        await store.set_health(fpga_id, "check", "good" if fpga_id in good else "bad", "")


async def _placed(store: Store, req: str) -> int | None:
    accepted = await store.pool_submit(OPS, req, 50, "d.py", "x", "sha")
    return accepted["fpga_id"]  # type: ignore[no-any-return]


async def test_pool_jobs_spread_over_the_free_boards_and_their_workers(store: Store) -> None:
    """Pool jobs onto an idle lab take free boards at random, not the lowest ids first:
    four jobs onto ten free boards of two workers (0-4, 5-9) land on both workers in most
    of twenty rounds (all on one: 1 in 21), and the rounds use nearly every board."""
    lab = {i: ("sim", ()) for i in range(10)}
    used: set[int] = set()
    both = 0
    for _ in range(20):
        await _free_lab(store, lab, {i: "a" if i < 5 else "b" for i in lab}, set(lab))
        placed = [await _placed(store, "sim|") for _ in range(4)]
        assert None not in placed and len(set(placed)) == 4, placed
        used.update(p for p in placed if p is not None)
        both += {p is not None and p < 5 for p in placed} == {True, False}
    assert both >= 10 and len(used) >= 8, (both, used)


async def test_a_pool_few_free_boards_fit_gets_the_one_that_does(store: Store) -> None:
    """Of 40 free boards, the only free one with tag ``rare`` (among 17 so tagged, more
    than one look samples) is found every time, whichever way it is looked for; without
    a live worker it is not taken, and the job waits."""
    lab = {i: ("sim", ("rare",) if i <= 16 else ()) for i in range(40)}
    good = set(range(16, 40))
    for _ in range(10):
        await _free_lab(store, lab, {i: "w" for i in lab}, good)
        assert await _placed(store, "sim|rare") == 16
        assert await _placed(store, "sim|rare") is None
    await _free_lab(store, lab, {i: "w" for i in lab if i != 16}, good)
    assert await _placed(store, "sim|rare") is None
    assert await _placed(store, "sim|") not in (None, 16)
