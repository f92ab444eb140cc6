"""Bad input and limits: request bodies refused before they are read, upload names,
transfer sizes, and the queued-job limits per board and per caller."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from fpgalab.service import keys
from fpgalab.service.bodylimit import MULTIPART_SLACK
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from tests.fakes import FakeBackend
from tests.helpers import (
    assert_error,
    board,
    job,
    jobs_in_redis,
    reserve,
    submit,
    wait_job,
    wait_set,
    wait_state,
)

ALICE = {"X-API-Key": "alice-key"}
BOB = {"X-API-Key": "bob-key"}
OPS = {"X-API-Key": "ops-key"}  # admin

BODY_LIMIT = 4096
UPLOAD_LIMIT = 2048
PER_BOARD = 3
PER_CALLER = 4
READ = {"op": 2, "address": 0}


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Small limits, keys for alice, bob and ops (admin), and no rate limit."""
    return settings.model_copy(
        update={
            "api_keys": "alice=alice-key,bob=bob-key,ops=ops-key:admin",
            "max_body_bytes": BODY_LIMIT,
            "max_upload_bytes": UPLOAD_LIMIT,
            "max_transfer_words": 8,
            "max_queued_per_board": PER_BOARD,
            "max_queued_per_caller": PER_CALLER,
            "rate_limit": 0.0,
        }
    )


class Chunks:
    """A request body sent in chunks (``head``, then ``fill`` up to ``size`` bytes),
    counting how much of it the server asked for."""

    def __init__(self, size: int, chunk: int = 1024, fill: bytes = b" ", head: bytes = b"") -> None:
        self.size, self.chunk, self.fill, self.head = size, chunk, fill, head
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head:
            self.sent += len(self.head)
            yield self.head
        while self.sent < self.size:
            part = self.fill * min(self.chunk, self.size - self.sent)
            self.sent += len(part)
            yield part


# -- request bodies ---------------------------------------------------------------------


async def test_a_json_body_over_the_limit_is_refused_unread(lab: httpx.AsyncClient) -> None:
    """A JSON body whose Content-Length is over max_body_bytes is 413 request_too_large
    before a byte of it is read."""
    await reserve(lab, 0, headers=ALICE)
    body = Chunks(10 * 1024 * 1024)
    r = await lab.post(
        "/fpga/0/run",
        content=body,
        headers={**ALICE, "Content-Length": str(body.size), "Content-Type": "application/json"},
    )
    assert_error(r, 413, "request_too_large")
    assert body.sent == 0


async def test_a_chunked_json_body_is_cut_off_at_the_limit(lab: httpx.AsyncClient) -> None:
    """A body without Content-Length is read only until it passes max_body_bytes: 413
    request_too_large, the rest never read, nothing queued."""
    accepted = await reserve(lab, 0, headers=ALICE)
    body = Chunks(10 * 1024 * 1024)
    r = await lab.post(
        "/fpga/0/run", content=body, headers={**ALICE, "Content-Type": "application/json"}
    )
    assert_error(r, 413, "request_too_large")
    assert body.sent <= BODY_LIMIT + body.chunk
    assert (await board(lab, 0, headers=ALICE))["current_job_id"] is None
    assert (await job(lab, 0, accepted["job_id"], headers=ALICE))["status"] == "complete"


async def test_a_body_at_the_limit_is_read(lab: httpx.AsyncClient) -> None:
    """A JSON body of exactly max_body_bytes is read and judged on its content."""
    await reserve(lab, 0, headers=ALICE)
    padded = b'{"op": 2, "address": 0}'.ljust(BODY_LIMIT, b" ")
    r = await lab.post(
        "/fpga/0/run", content=padded, headers={**ALICE, "Content-Type": "application/json"}
    )
    assert r.status_code == 202, r.text


async def test_a_body_on_a_route_without_one_is_still_capped(client: httpx.AsyncClient) -> None:
    """A POST whose route takes no body (reset) is refused 413 when its body is too big."""
    r = await client.post("/fpga/1/reset", content=b"x" * (BODY_LIMIT + 1), headers=OPS)
    assert_error(r, 413, "request_too_large")


async def test_a_huge_upload_is_refused_unread(lab: httpx.AsyncClient, store: Store) -> None:
    """An upload far over max_upload_bytes is 413 design_too_large, unread (with a
    Content-Length) or cut off (chunked); nothing is queued either way."""
    boundary = "limitsboundary"
    headers = {**ALICE, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.py"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    for with_length in (True, False):
        body = Chunks(UPLOAD_LIMIT + MULTIPART_SLACK + 100_000, fill=b"#", head=head)
        sent_headers = {**headers, "Content-Length": str(body.size)} if with_length else headers
        r = await lab.post("/fpga/2/submit", content=body, headers=sent_headers)
        assert_error(r, 413, "design_too_large")
        assert body.sent <= (0 if with_length else UPLOAD_LIMIT + MULTIPART_SLACK + body.chunk)
    assert (await board(lab, 2, headers=ALICE))["state"] == "idle"
    assert await jobs_in_redis(store) == []


@pytest.mark.parametrize(
    "filename",
    [b"tab\there.sv", b"\x1b[2Jclear.v", b"bell\x07.py", b"x" * 253 + b".py"],
    ids=["tab", "terminal escape", "bell", "256 characters"],
)
async def test_an_upload_name_must_be_printable_and_short(
    lab: httpx.AsyncClient, store: Store, filename: bytes
) -> None:
    """A design file name with control characters or over 255 characters is 422
    unsupported_design: it would be echoed into job records and build logs."""
    boundary = b"namesboundary"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename + b'"\r\nContent-Type: text/plain\r\n\r\nDesign = None\n\r\n--'
        + boundary + b"--\r\n"
    )  # fmt: skip
    content_type = "multipart/form-data; boundary=" + boundary.decode()
    r = await lab.post(
        "/fpga/3/submit", content=body, headers={**ALICE, "Content-Type": content_type}
    )
    assert_error(r, 422, "unsupported_design")
    assert await jobs_in_redis(store) == []


async def test_a_transfer_over_the_lab_limit_is_refused(lab: httpx.AsyncClient) -> None:
    """A run over FPGALAB_MAX_TRANSFER_WORDS is 422 validation_error naming the field."""
    await reserve(lab, 0, headers=ALICE)
    r = await lab.post("/fpga/0/run", json={"op": 2, "address": 0, "length": 9}, headers=ALICE)
    assert "length" in assert_error(r, 422, "validation_error")["message"]
    r = await lab.post("/fpga/0/run", json={"op": 1, "address": 0, "data": [1] * 9}, headers=ALICE)
    assert "data" in assert_error(r, 422, "validation_error")["message"]
    ok = await lab.post("/fpga/0/run", json={"op": 2, "address": 0, "length": 8}, headers=ALICE)
    assert ok.status_code == 202, ok.text


def test_the_transfer_setting_may_lower_the_schemas_limit_never_raise_it() -> None:
    """FPGALAB_MAX_TRANSFER_WORDS takes 1 to 65,536 (the request schema's ceiling, one
    constant); above it the settings refuse it, saying why."""
    from pydantic import ValidationError

    from fpgalab.service.models import RunRequest

    assert Settings(max_transfer_words=65536).max_transfer_words == 65536
    assert Settings(max_transfer_words=8).max_transfer_words == 8
    with pytest.raises(ValidationError, match="65,536, the most words a run job may carry"):
        Settings(max_transfer_words=65537)
    schema = RunRequest.model_json_schema()["properties"]
    assert schema["length"]["anyOf"][0]["maximum"] == 65536
    assert schema["data"]["anyOf"][0]["maxItems"] == 65536


# -- queued jobs --------------------------------------------------------------------------


async def queued_counts(store: Store, fpga_id: int, caller: str) -> tuple[int, int]:
    """(jobs in the board's queue set, jobs in the caller's queue set), from Redis."""
    return (
        await store.redis.scard(keys.queued(fpga_id)),
        await store.redis.scard(keys.caller_queued(caller)),
    )


async def hold_a_run(lab: httpx.AsyncClient, backend: FakeBackend, fpga_id: int) -> str:
    """Start a run that a worker takes and holds (running, not queued); its job id."""
    backend.held.clear()
    r = await lab.post(f"/fpga/{fpga_id}/run", json=READ, headers=ALICE)
    assert r.status_code == 202, r.text
    await wait_set(backend.held)
    return str(r.json()["job_id"])


@pytest.fixture
async def holding(lab: httpx.AsyncClient, backend: FakeBackend) -> AsyncIterator[FakeBackend]:
    """The lab, with every transaction held until the test resumes it (at the latest
    at teardown, before the worker stops)."""
    backend.hold = {"transact"}
    yield backend
    backend.resume.set()


async def test_a_board_queue_is_limited_and_frees_as_jobs_leave(
    lab: httpx.AsyncClient, holding: FakeBackend, store: Store
) -> None:
    """Past max_queued_per_board queued runs a run is 429 too_many_queued_jobs; a cancel
    and the queue running dry each make room again."""
    await reserve(lab, 1, headers=ALICE)
    running = await hold_a_run(lab, holding, 1)
    queued = []
    for _ in range(PER_BOARD):
        r = await lab.post("/fpga/1/run", json=READ, headers=ALICE)
        assert r.status_code == 202, r.text
        queued.append(r.json()["job_id"])
    full = await lab.post("/fpga/1/run", json=READ, headers=ALICE)
    assert "FPGA 1" in assert_error(full, 429, "too_many_queued_jobs")["message"]
    assert await queued_counts(store, 1, "alice") == (PER_BOARD, PER_BOARD)

    assert (await lab.delete(f"/fpga/1/jobs/{queued[0]}", headers=ALICE)).status_code == 204
    assert await queued_counts(store, 1, "alice") == (PER_BOARD - 1, PER_BOARD - 1)
    again = await lab.post("/fpga/1/run", json=READ, headers=ALICE)
    assert again.status_code == 202, again.text
    queued.append(again.json()["job_id"])

    holding.resume.set()
    for job_id in [running, *queued[1:]]:
        assert (await wait_job(lab, 1, job_id, headers=ALICE))["status"] == "complete"
    assert await queued_counts(store, 1, "alice") == (0, 0)
    for _ in range(PER_BOARD):
        r = await lab.post("/fpga/1/run", json=READ, headers=ALICE)
        assert r.status_code == 202, r.text


async def test_a_caller_queue_is_limited_over_all_boards(
    lab: httpx.AsyncClient, holding: FakeBackend, store: Store
) -> None:
    """A caller's queued jobs on all boards together stop at max_queued_per_caller (429
    too_many_queued_jobs naming the caller); another caller is not held back by them."""
    for fpga_id in (1, 2):
        await reserve(lab, fpga_id, headers=ALICE)
        await hold_a_run(lab, holding, fpga_id)
    for n in range(PER_CALLER):
        r = await lab.post(f"/fpga/{1 + n % 2}/run", json=READ, headers=ALICE)
        assert r.status_code == 202, r.text
    full = await lab.post("/fpga/2/run", json=READ, headers=ALICE)
    assert "alice" in assert_error(full, 429, "too_many_queued_jobs")["message"]
    refused = await submit(lab, 3, headers=ALICE)  # a new build would queue too
    assert_error(refused, 429, "too_many_queued_jobs")
    assert (await board(lab, 3, headers=ALICE))["state"] == "idle"

    bob = await submit(lab, 4, headers=BOB)
    assert bob.status_code == 202, bob.text
    assert await store.redis.scard(keys.caller_queued("alice")) == PER_CALLER


async def test_queued_jobs_cancelled_by_a_reset_or_failed_by_a_fault_leave_the_counts(
    lab: httpx.AsyncClient, holding: FakeBackend, store: Store
) -> None:
    """Runs cancelled by a reset, and runs failed because the board faulted under them,
    no longer count: the board's and the caller's queued counts are back to zero."""
    await reserve(lab, 1, headers=ALICE)
    await hold_a_run(lab, holding, 1)
    for _ in range(PER_BOARD):
        assert (await lab.post("/fpga/1/run", json=READ, headers=ALICE)).status_code == 202
    holding.hold_boards = {1}  # what the test holds from now on: board 1 only
    r = await lab.post("/fpga/1/reset", headers=ALICE)
    assert r.status_code == 202, r.text
    assert await queued_counts(store, 1, "alice") == (1, 1)  # the reset job itself
    holding.hold = set()
    holding.resume.set()
    await wait_state(lab, 1, "idle", headers=ALICE)
    assert await queued_counts(store, 1, "alice") == (0, 0)

    holding.resume.clear()
    holding.hold = {"transact"}
    await reserve(lab, 1, headers=ALICE)
    running = await hold_a_run(lab, holding, 1)
    behind = [
        (await lab.post("/fpga/1/run", json=READ, headers=ALICE)).json()["job_id"]
        for _ in range(PER_BOARD)
    ]
    holding.crashed.add(1)  # the held run faults the board; the runs behind it fail
    holding.resume.set()
    assert (await wait_job(lab, 1, running, headers=ALICE))["status"] == "failed"
    for job_id in behind:
        assert (await wait_job(lab, 1, job_id, headers=ALICE))["status"] == "failed"
    assert await queued_counts(store, 1, "alice") == (0, 0)


async def test_a_stale_queue_entry_does_not_hold_the_limit(
    lab: httpx.AsyncClient, holding: FakeBackend, store: Store
) -> None:
    """A queued job whose record vanished from Redis (expired, lost) stops counting: at
    the limit its entry is dropped and the run is accepted."""
    await reserve(lab, 1, headers=ALICE)
    await hold_a_run(lab, holding, 1)
    queued = [
        (await lab.post("/fpga/1/run", json=READ, headers=ALICE)).json()["job_id"]
        for _ in range(PER_BOARD)
    ]
    await store.redis.delete(keys.job(queued[0]))
    r = await lab.post("/fpga/1/run", json=READ, headers=ALICE)
    assert r.status_code == 202, r.text
    members = await store.redis.smembers(keys.queued(1))
    assert members == {*queued[1:], r.json()["job_id"]}


async def test_a_replayed_run_is_not_refused_at_the_limit(
    lab: httpx.AsyncClient, holding: FakeBackend
) -> None:
    """A retry with the same Idempotency-Key replays its 202 even once the queue is full."""
    await reserve(lab, 1, headers=ALICE)
    await hold_a_run(lab, holding, 1)
    retry = {**ALICE, "Idempotency-Key": "run-7"}
    first = await lab.post("/fpga/1/run", json=READ, headers=retry)
    for _ in range(PER_BOARD - 1):
        assert (await lab.post("/fpga/1/run", json=READ, headers=ALICE)).status_code == 202
    assert_error(
        await lab.post("/fpga/1/run", json=READ, headers=ALICE), 429, "too_many_queued_jobs"
    )
    again = await lab.post("/fpga/1/run", json=READ, headers=retry)
    assert again.status_code == 202 and again.json()["replayed"] is True
    assert again.json()["job_id"] == first.json()["job_id"]


async def test_a_reset_is_never_refused_for_a_full_queue(
    lab: httpx.AsyncClient, holding: FakeBackend
) -> None:
    """With the board's and the caller's queues full, a reset is still queued."""
    await reserve(lab, 1, headers=ALICE)
    await hold_a_run(lab, holding, 1)
    for _ in range(PER_BOARD):
        assert (await lab.post("/fpga/1/run", json=READ, headers=ALICE)).status_code == 202
    r = await lab.post("/fpga/1/reset", headers=ALICE)
    assert r.status_code == 202, r.text
    holding.hold = set()
    holding.resume.set()
    assert (await wait_job(lab, 1, r.json()["job_id"], headers=ALICE))["status"] == "complete"
    await wait_state(lab, 1, "idle", headers=ALICE)
