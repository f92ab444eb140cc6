"""The lab's scripts as one Redis Function library (``service.lua``): loaded when the
server lacks it, one per version and settings, its state never carried from a call to
the next."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis

from fpgalab.service import keys
from fpgalab.service.errors import LabError
from fpgalab.service.lua import NAMES, STANDALONE, library, source
from fpgalab.service.settings import Settings
from fpgalab.service.store import Actor, Store

ADMIN = Actor("ops", admin=True)


async def test_a_server_that_lost_the_library_is_sent_it_again(store: Store) -> None:
    """After ``FUNCTION FLUSH`` (as after a restart without its data) the next call loads
    the library and goes through, and so do many calls that find it missing at once (one
    of them loads it); the pipelined submit (``redis_wait_replicas``) is
    tests/service/test_failover.py's."""
    await store.set_health(0, "check", "good", "")
    await store.redis.function_flush()
    assert await store.redis.function_list() == []
    assert (await store.boards([0]))[0][1]["health"] == "good"
    assert await _libraries(store) == {library(store.settings.event_log_max_entries)[0]}

    await asyncio.gather(*(store.boards([i]) for i in range(10)))  # ten connections open
    await store.redis.function_flush()
    before = await _loads(store)
    rows = await asyncio.gather(*(store.boards([i]) for i in range(10)))
    assert [r[0][0] for r in rows] == list(range(10))
    assert await _loads(store) == before + 1  # ten calls found it missing: one load
    await store.redis.function_flush()
    reply = await store.submit(0, ADMIN, "d.py", "x", "sha")
    assert reply["status"] == "queued"
    assert (await store.boards([0]))[0][1]["state"] == "queued"


async def test_labs_of_other_settings_on_one_redis_each_call_their_own(
    store: Store, settings: Settings
) -> None:
    """A store whose event log keeps 10 entries and one whose keeps the default share a
    Redis: two libraries, each store's calls run its own (only the first trims the log)."""
    assert library(10)[0] != library(settings.event_log_max_entries)[0]
    other = Store.from_url(settings.redis_url or "", settings.model_copy(
        update={"event_log_max_entries": 10}))  # fmt: skip
    r = store.redis

    async def flap(s: Store) -> int:  # 260 board events
        await r.delete("fpgalab:eventlog")
        for _ in range(13):
            for fpga_id in range(10):
                await s.set_health(fpga_id, "maintenance", "maintenance", "")
                await s.set_health(fpga_id, "online", "good", "")
        return int(await r.xlen("fpgalab:eventlog"))

    try:
        assert await flap(other) < 200  # MAXLEN ~ 10: trimmed by whole nodes of 100
        assert await flap(store) == 260
        assert await flap(other) < 200
        assert await _libraries(store) >= {
            library(10)[0],
            library(settings.event_log_max_entries)[0],
        }
    finally:
        await other.close()


async def test_a_call_that_failed_half_way_leaves_nothing_for_the_next(store: Store) -> None:
    """The library outlives a call: a board change a call noted before Redis refused one
    of its writes (here: the free boards' set holding a string) is not published by the
    next call, which publishes its own only."""
    r = store.redis
    await r.set("fpgalab:free", "not a set")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await store.set_health(0, "maintenance", "maintenance", "")
    await r.delete("fpgalab:free")
    last = (await r.xrevrange("fpgalab:eventlog", count=1) or [("0-0", {})])[0][0]
    await store.set_health(1, "maintenance", "maintenance", "")
    events = [json.loads(e["e"]) for _, e in await r.xrange("fpgalab:eventlog", f"({last}", "+")]
    assert [(e["kind"], e["fpga_id"]) for e in events] == [("board", 1)], events


async def _loads(store: Store) -> int:
    """How many FUNCTION LOADs Redis has run."""
    stats = await store.redis.info("commandstats")
    return int(stats.get("cmdstat_function|load", {}).get("calls", 0))


async def _libraries(store: Store) -> set[str]:
    """The names of the libraries Redis holds."""
    rows = await store.redis.function_list()
    return {dict(zip(row[::2], row[1::2], strict=True))["library_name"] for row in rows}


def test_the_library_holds_every_script_but_the_standalone_ones() -> None:
    """One library, named by its text's hash: each script's body, as a function."""
    name, text = library()
    assert text.startswith(f"#!lua name={name}\n")
    for script in NAMES:
        registered = f"function_name='{name}_{script}'" in text
        assert registered == (script not in STANDALONE), script
    assert source("submit").split("-- Open a session")[0] in text  # the same prelude


async def test_a_refusal_is_raised_as_its_lab_error(store: Store) -> None:
    """A script's refusal (its ``{"err"}`` answer) is raised as that LabError."""
    with pytest.raises(LabError, match="no FPGA 99"):
        await store.renew(99, ADMIN, 60)


async def test_boards_and_orphans_read_a_big_lab_in_bulk(store: Store) -> None:
    """A lab of 1,005 boards (more than one batch of bulk reads): every board by id with
    its worker and inventory entry, some by the ids asked for in that order; the pass
    for orphans marks exactly the good boards no worker leases."""
    await store.register_boards({i: ("sim", ("dsp",) if i % 2 else ()) for i in range(1005)})
    leased = set(range(0, 1005, 3))
    for fpga_id in leased:
        await store.redis.set(keys.owner(fpga_id), "w1")
    for fpga_id in (1, 3, 1004):
        await store.set_health(fpga_id, "check", "good", "")
    rows = await store.boards()
    assert [i for i, _, _ in rows] == list(range(1005))
    assert {i for i, _, w in rows if w == "w1"} == leased
    assert rows[1003][1]["tags"] == "dsp" and rows[1004][1]["platform"] == "sim"
    some = await store.boards([1004, 3, 7])
    assert [(i, w, r.get("health")) for i, r, w in some] == [
        (1004, None, "good"),
        (3, "w1", "good"),
        (7, None, None),
    ]
    assert sorted(await store.mark_orphans()) == [1, 1004]
