"""``GET /metrics``: the lab-wide view read from Redis at each scrape, the API's own
request latency by route, Prometheus' naming conventions, and who may scrape."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fpgalab.backends import Build, Design, LogFn
from fpgalab.service.settings import Settings
from fpgalab.service.states import BOARD_IDS
from fpgalab.service.store import Store
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import (
    REPO,
    CliProcess,
    assert_error,
    free_port,
    reserve,
    run_job,
    serve,
    submit,
    wait_http,
    wait_job,
)

ALICE = {"X-API-Key": "alice-key"}
OPS = {"X-API-Key": "ops-key"}  # admin
BURST = 3

#: (type, label names) of every fpgalab_ metric, as docs/operations.md lists them.
DOCS = REPO / "docs" / "operations.md"
_ROW = re.compile(r"^\| `(fpgalab_[a-z_]+)` \| (gauge|counter|histogram) \|([^|]*)\|", re.M)


def documented() -> dict[str, tuple[str, set[str]]]:
    found = {
        name: (kind, set(re.findall(r"`([a-z_]+)`", labels)))
        for name, kind, labels in _ROW.findall(DOCS.read_text())
    }
    assert found, "no metrics table in docs/operations.md"
    return found


class CachingBackend(FakeBackend):
    """The fake, with a build cache: the same design again is a hit."""

    def __init__(self) -> None:
        super().__init__()
        self.built: set[str] = set()

    def build(self, design: Design, log: LogFn) -> Build:
        found = super().build(design, log)
        hit = found.key in self.built
        self.built.add(found.key)
        return dataclasses.replace(found, cached=hit)


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Keys for alice and ops (admin); alice's bucket holds 3 calls."""
    return settings.model_copy(
        update={
            "api_keys": "alice=alice-key,ops=ops-key:admin",
            "rate_limit": 0.01,
            "rate_limit_burst": BURST,
        }
    )


Families = dict[str, Any]


async def scrape(client: httpx.AsyncClient, **kw: Any) -> Families:
    r = await client.get("/metrics", **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def sample(families: Families, name: str, **labels: str) -> float:
    """The value of the one sample ``name`` with these labels (others any)."""
    family = families[re.sub(r"_(total|count|sum|bucket)$", "", name)]
    found = [
        s
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return float(found[0].value)


def samples(families: Families, name: str) -> list[Sample]:
    return list(families[name].samples)


async def test_every_metric_is_documented_named_by_convention_and_typed(
    client: httpx.AsyncClient,
) -> None:
    """A scrape of an empty lab has exactly the fpgalab_ metrics docs/operations.md
    lists, with their type and label names; counters end _total, durations are in
    seconds, and the process's own metrics come along."""
    families = await scrape(client, headers=ALICE)
    ours = {n: f for n, f in families.items() if n.startswith("fpgalab_")}
    docs = documented()
    assert set(ours) == set(docs)
    for name, family in ours.items():
        kind, labels = docs[name]
        assert family.type == kind, name
        for s in family.samples:
            assert set(s.labels) - {"le"} == labels, (name, s)
            if kind == "counter":
                assert s.name == name + "_total", s
        if kind == "histogram" or "duration" in name or "age" in name:
            assert name.endswith("_seconds"), name
    assert "process_cpu_seconds" in families or "python_info" in families
    # an empty lab: ten idle boards, health unknown; nothing counted yet
    assert sample(families, "fpgalab_boards", state="idle", health="unknown") == len(BOARD_IDS)
    assert sum(s.value for s in samples(families, "fpgalab_jobs_finished")) == 0
    assert sample(families, "fpgalab_redis_round_trip_seconds") > 0


@pytest.fixture
def caching() -> CachingBackend:
    return CachingBackend()


async def test_values_follow_what_the_lab_does(
    client: httpx.AsyncClient, start_worker: WorkerFactory, caching: CachingBackend
) -> None:
    """Submits, runs, resets, a cache hit and a refusal show up in the next scrape of
    the lab: boards by state, jobs by type and outcome, the phases' histograms, the cache
    counters, refusals by bucket and the worker's heartbeat."""
    worker = await start_worker(boards=[1, 2], fake=caching)
    await reserve(client, 1, headers=OPS)
    assert (await run_job(client, 1, {"op": 2, "address": 0}, headers=OPS))["ok"]
    families = await scrape(client, headers=OPS)
    assert sample(families, "fpgalab_boards", state="reserved", health="good") == 1
    assert sample(families, "fpgalab_board_ready", board="1") == 1
    assert sample(families, "fpgalab_board_ready", board="5") == 0
    finished = "fpgalab_jobs_finished_total"
    assert sample(families, finished, type="build_and_program", outcome="complete") == 1
    assert sample(families, finished, type="run", outcome="complete") == 1
    assert sample(families, "fpgalab_build_cache_misses_total") == 1
    assert sample(families, "fpgalab_build_cache_hits_total") == 0
    for name, labels in [
        ("fpgalab_build_duration_seconds", {"cache": "miss"}),
        ("fpgalab_program_duration_seconds", {}),
        ("fpgalab_run_duration_seconds", {}),
        ("fpgalab_job_queue_wait_seconds", {"type": "run"}),
    ]:
        assert sample(families, name + "_count", **labels) == 1, name
        assert sample(families, name + "_bucket", le="+Inf", **labels) == 1, name
        assert 0 <= sample(families, name + "_sum", **labels) < 10, name
    age = sample(families, "fpgalab_worker_heartbeat_age_seconds", worker=worker.id)
    assert 0 <= age <= 1.5  # the tests' heartbeat TTL

    # the same design on another board: a cache hit; a bad design fails its build
    r = await submit(client, 2, headers=OPS)
    assert (await wait_job(client, 2, r.json()["job_id"], headers=OPS))["status"] == "complete"
    r = await client.post("/fpga/1/reset", headers=OPS)
    await wait_job(client, 1, r.json()["job_id"], headers=OPS)
    r = await submit(client, 1, text="FAIL_BUILD\n", headers=OPS)
    assert (await wait_job(client, 1, r.json()["job_id"], headers=OPS))["status"] == "failed"
    # alice: her burst of (refused-anyway) renews, then a 429
    for _ in range(BURST):
        await client.post("/fpga/5/session/renew", headers=ALICE)
    assert_error(await client.post("/fpga/5/session/renew", headers=ALICE), 429, "rate_limited")

    families = await scrape(client, headers=OPS)
    assert sample(families, "fpgalab_build_cache_hits_total") == 1
    assert sample(families, "fpgalab_build_duration_seconds_count", cache="hit") == 1
    assert sample(families, finished, type="build_and_program", outcome="complete") == 2
    assert sample(families, finished, type="build_and_program", outcome="failed") == 1
    assert sample(families, finished, type="reset", outcome="complete") == 1
    assert sample(families, "fpgalab_reset_duration_seconds_count") == 1
    assert sample(families, "fpgalab_rate_limit_refusals_total", bucket="caller") == 1
    assert sample(families, "fpgalab_rate_limit_refusals_total", bucket="unknown_key") == 0
    assert sample(families, "fpgalab_boards", state="reserved", health="good") == 1  # board 2


async def test_queued_jobs_cancellations_and_running_jobs_are_counted(
    client: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """A board's queue depth is what waits in it; a cancelled job is counted as such."""
    await start_worker(boards=[3])
    await reserve(client, 3, headers=OPS)
    backend.hold = {"transact"}
    first = await client.post("/fpga/3/run", json={"op": 2, "address": 0}, headers=OPS)
    queued = [
        await client.post("/fpga/3/run", json={"op": 2, "address": 0}, headers=OPS)
        for _ in range(2)
    ]
    families = await scrape(client, headers=OPS)
    assert sample(families, "fpgalab_board_queued_jobs", board="3") >= 2
    r = await client.delete(f"/fpga/3/jobs/{queued[1].json()['job_id']}", headers=OPS)
    assert r.status_code == 204, r.text
    backend.resume.set()
    await wait_job(client, 3, first.json()["job_id"], headers=OPS)
    await wait_job(client, 3, queued[0].json()["job_id"], headers=OPS)
    families = await scrape(client, headers=OPS)
    assert sample(families, "fpgalab_board_queued_jobs", board="3") == 0
    assert sample(families, "fpgalab_jobs_running") == 0
    finished = "fpgalab_jobs_finished_total"
    assert sample(families, finished, type="run", outcome="cancelled") == 1
    assert sample(families, finished, type="run", outcome="complete") == 2


async def test_request_latency_is_labelled_by_route_template(
    client: httpx.AsyncClient,
) -> None:
    """Requests are timed under their route's template, method and status class: two
    boards are one series, and an unknown path is ``unmatched``, never itself."""
    for fpga_id in (3, 4):
        assert (await client.get(f"/fpga/{fpga_id}", headers=ALICE)).status_code == 200
    assert (await client.head("/fpga/4", headers=ALICE)).status_code == 200
    assert (await client.get("/no/such/path-x1")).status_code == 404
    assert (await client.get("/fpga/5")).status_code == 401
    families = await scrape(client, headers=ALICE)
    name = "fpgalab_http_request_duration_seconds_count"
    assert sample(families, name, route="/fpga/{fpga_id}", method="GET", status="2xx") == 2
    assert sample(families, name, route="/fpga/{fpga_id}", method="HEAD", status="2xx") == 1
    assert sample(families, name, route="/fpga/{fpga_id}", method="GET", status="4xx") == 1
    assert sample(families, name, route="unmatched", method="GET", status="4xx") == 1
    routes = {s.labels["route"] for s in samples(families, "fpgalab_http_request_duration_seconds")}
    assert not any("path-x1" in r or re.search(r"/fpga/\d", r) for r in routes), routes


async def test_metrics_need_a_key_unless_public_and_show_no_key_or_caller(
    client: httpx.AsyncClient, app_settings: Settings
) -> None:
    """Without FPGALAB_METRICS_PUBLIC a scrape needs a key (X-API-Key or a bearer token);
    with it, none; a scrape shows no key and no caller's name."""
    assert_error(await client.get("/metrics"), 401, "invalid_api_key")
    assert_error(
        await client.get("/metrics", headers={"Authorization": "Bearer nope"}),
        401,
        "invalid_api_key",
    )
    await scrape(client, headers={"Authorization": "Bearer alice-key"})
    await client.post("/fpga/5/session/renew", headers=ALICE)
    public = app_settings.model_copy(update={"metrics_public": True})
    async with serve(public) as anyone:
        r = await anyone.get("/metrics")
        assert r.status_code == 200, r.text
        for secret in ("alice", "ops-key", "alice-key"):
            assert secret not in r.text


async def test_scrapes_are_neither_rate_limited_nor_audited(client: httpx.AsyncClient) -> None:
    """A scrape is a read: many of them in a row take no token and leave no record."""
    for _ in range(BURST * 3):
        await scrape(client, headers=ALICE)
    r = await client.get("/audit", headers=OPS)
    assert r.status_code == 200, r.text
    assert r.json() == [], r.json()


@pytest.fixture
async def second(app_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app_settings) as c:
        yield c


async def test_any_replica_reports_the_whole_lab(
    client: httpx.AsyncClient, second: httpx.AsyncClient, start_worker: WorkerFactory
) -> None:
    """What one API replica saw happen, another replica's scrape reports as well."""
    await start_worker(boards=[6])
    await reserve(client, 6, headers=OPS)
    families = await scrape(second, headers=OPS)
    finished = "fpgalab_jobs_finished_total"
    assert sample(families, finished, type="build_and_program", outcome="complete") == 1
    assert sample(families, "fpgalab_boards", state="reserved", health="good") == 1


async def test_a_worker_serves_its_process_metrics_on_its_own_port(
    redis_url: str, tmp_path: Path
) -> None:
    """``fpgalab worker --metrics-port N`` answers /metrics on N with its process's
    metrics (CPU, memory) in the text format."""
    port = free_port()
    args = ["worker", "--boards", "0", "--backend", "tests.fakes:FakeBackend",
            "--redis-url", redis_url, "--metrics-port", str(port)]  # fmt: skip
    env = {"FPGALAB_DATA_DIR": str(tmp_path / "data")}
    worker = CliProcess(args, tmp_path / "worker.log", env).start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        await wait_http(url, proc=worker)
        async with httpx.AsyncClient(trust_env=False) as c:
            text = (await c.get(url)).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["process_cpu_seconds"].type == "counter"
        assert families["process_resident_memory_bytes"].samples[0].value > 0
    finally:
        worker.stop()


async def test_a_job_whose_worker_died_is_counted_lost(
    client: httpx.AsyncClient, store: Store
) -> None:
    """A running job failed because its worker is gone counts as ``lost``, once, and its
    wait in the queue was observed when it was taken."""
    r = await submit(client, 7, headers=OPS)
    job_id = r.json()["job_id"]
    await store.claim_board(7, "ghost")
    await store.ensure_group(7)
    [(entry_id, taken)] = await store.next_entries(7, "ghost", 100)
    assert taken == job_id
    assert await store.take(7, job_id, "ghost", entry_id) is not None
    assert (await store.mark_lost(job_id, "ghost", "the ghost was lost"))["lost"]
    assert not (await store.mark_lost(job_id, "ghost", "again"))["lost"]
    families = await scrape(client, headers=OPS)
    finished = "fpgalab_jobs_finished_total"
    assert sample(families, finished, type="build_and_program", outcome="lost") == 1
    assert sample(families, finished, type="build_and_program", outcome="failed") == 0
    wait = "fpgalab_job_queue_wait_seconds_count"
    assert sample(families, wait, type="build_and_program") == 1
