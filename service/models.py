"""The API's request and response bodies (the names are part of the contract)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fpgalab.backends import Op, span_problem
from fpgalab.service.settings import MAX_OPS_PER_RUN, MAX_TRACE_SIGNALS, MAX_TRANSFER_WORDS
from fpgalab.service.states import BoardState, Health, JobStatus, JobType

Word = Annotated[int, Field(ge=0, lt=2**32)]


def iso(ts: str | float | None) -> datetime | None:
    """A stored epoch timestamp as an aware UTC datetime (rendered ISO 8601)."""
    if ts is None or ts == "":
        return None
    return datetime.fromtimestamp(float(ts), tz=UTC)


class ErrorBody(BaseModel):
    error: str = Field(description="Stable machine-readable code, e.g. `fpga_not_idle`.")
    message: str = Field(description="What went wrong, for a person.")


class ErrorResponse(BaseModel):
    """Every error the API returns, 422 and 401 included."""

    detail: ErrorBody


class RedisMemory(BaseModel):
    used_bytes: int = Field(description="Memory Redis uses now.")
    max_bytes: int | None = Field(description="Its maxmemory; null: no limit.")
    policy: str = Field(description="Its maxmemory-policy; the lab needs noeviction.")


class BoardCounts(BaseModel):
    ready: int = Field(
        description="Boards that are up: held by a live worker that has checked them since it "
        "took them, health good, not in error (idle or in use)."
    )
    total: int = Field(description="The lab's boards (10), whether a worker serves them or not.")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    redis: bool
    memory: RedisMemory | None = Field(default=None, description="Redis's memory; null if unknown.")
    warning: str | None = Field(
        default=None, description="What an operator should look at (Redis's memory), if anything."
    )
    boards: BoardCounts | None = Field(
        default=None, description="How many boards are ready; null while Redis is unreachable."
    )


class SessionInfo(BaseModel):
    session_id: str
    owner: str
    created_at: datetime
    expires_at: datetime
    max_expires_at: datetime = Field(description="Renewals never extend past this.")


class SessionResponse(SessionInfo):
    fpga_id: int


class FPGASummary(BaseModel):
    fpga_id: int
    platform: str = Field(
        description="The board's platform (``sim`` for a simulated board, the lab file's "
        "for a real one): what a pool submit selects boards by."
    )
    tags: list[str] = Field(description="The board's tags, sorted: what pools select by too.")
    state: BoardState
    session: SessionInfo | None = None
    current_job_id: str | None = None
    health: Health = Field(description="good, unknown, bad or maintenance; kept apart from state.")
    health_reason: str | None = None
    worker: str | None = Field(None, description="Worker holding this board now, if any.")
    updated_at: datetime | None = None


def _json_integer(value: object) -> object:
    """An enum's value is taken as strictly as any integer: ``2``, never ``"2"``, ``2.0``
    or ``true`` (strict mode alone would want an ``Op`` instance, which JSON cannot hold)."""
    if type(value) is not int:
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


class StrictBody(BaseModel):
    """A request body taken as JSON wrote it: an integer is a JSON integer (not a string,
    a boolean or a number with a fraction or exponent, ``1.0`` included), a string a
    JSON string; no unknown fields. Duplicate keys never get this far
    (``service.jsonbody``)."""

    model_config = ConfigDict(extra="forbid", strict=True)


#: A signal a trace may show: the user slot's bus (``wb_cyc``, ``wb_adr``…) or one of the
#: design's probes by its name (docs/designs.md, Probes).
SignalName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class TraceFields(StrictBody):
    """What a run asks of the board's logic analyzer (docs/api.md, Traces)."""

    trace: bool = Field(
        False,
        description="Capture the run's window on the board's logic analyzer: the job's "
        "result then says what was captured and `GET …/jobs/{job_id}/waveform` serves it "
        "(VCD).",
    )
    signals: list[SignalName] | None = Field(
        None,
        min_length=1,
        max_length=MAX_TRACE_SIGNALS,
        description="With `trace`: the signals to show, by name (default: every signal the "
        "analyzer captures: the user slot's Wishbone bus and the design's probes).",
    )

    @model_validator(mode="after")
    def _check_trace(self) -> TraceFields:
        if self.signals is not None and not self.trace:
            raise ValueError("signals: name signals only with trace: true")
        if self.signals is not None and len(set(self.signals)) != len(self.signals):
            twice = sorted({s for s in self.signals if self.signals.count(s) > 1})
            raise ValueError(f"signals: {', '.join(twice)} named twice")
        return self


class RunOp(StrictBody):
    """One Wishbone transaction: a write of ``data`` or a read of ``length`` words,
    at consecutive word addresses starting at ``address``."""

    op: Annotated[Op, BeforeValidator(_json_integer)] = Field(
        strict=False, description="1 = write, 2 = read."
    )
    address: int = Field(ge=0, lt=2**32, description="Wishbone byte address, word-aligned.")
    data: list[Word] | None = Field(
        None,
        max_length=MAX_TRANSFER_WORDS,
        description="32-bit words to write (op 1 only, 1 to 65,536 words).",
    )
    length: int | None = Field(
        None,
        ge=1,
        le=MAX_TRANSFER_WORDS,
        description="Words to read (op 2 only, default 1, at most 65,536).",
    )

    @model_validator(mode="after")
    def _check_shape(self) -> RunOp:
        if self.op is Op.WRITE:
            if not self.data:
                raise ValueError("data: a write (op 1) needs at least one word")
            if self.length is not None:
                raise ValueError("length: only a read (op 2) takes a length")
            words = len(self.data)
        else:
            if self.data is not None:
                raise ValueError("data: a read (op 2) takes no data")
            words = self.length or 1
        if problem := span_problem(self.address, words):
            raise ValueError(f"address: {problem}")
        return self

    @property
    def words(self) -> int:
        return len(self.data) if self.data else (self.length or 1)


class RunRequest(RunOp, TraceFields):
    """One Wishbone transaction: a write of ``data`` or a read of ``length`` words,
    at consecutive word addresses starting at ``address``; ``trace`` captures it."""


#: RunRequest's fields: a list of transactions has none of them beside it.
_ONE_RUN_FIELDS = ("op", "address", "data", "length")


class RunOpsRequest(TraceFields):
    """Several Wishbone transactions, run in order on the board in one job; the first
    that fails stops the list. ``trace`` captures the whole list."""

    ops: list[RunOp] = Field(
        min_length=1,
        max_length=MAX_OPS_PER_RUN,
        description="The transactions, each as a single run takes it (op, address, data | "
        f"length); 1 to {MAX_OPS_PER_RUN:,} of them, {MAX_TRANSFER_WORDS:,} words in all.",
    )

    @model_validator(mode="before")
    @classmethod
    def _alone(cls, body: Any) -> Any:
        if isinstance(body, dict) and (found := [f for f in _ONE_RUN_FIELDS if f in body]):
            raise ValueError(
                f"ops: a run carries one transaction (op, address, data | length) or a list "
                f"of them (ops), not both; this one has ops and {', '.join(found)}"
            )
        return body

    @property
    def words(self) -> int:
        return sum(op.words for op in self.ops)


def _run_kind(body: Any) -> str:
    return "RunOpsRequest" if isinstance(body, dict) and "ops" in body else "RunRequest"


#: The body of ``POST /fpga/{id}/run``: one transaction, or a list of them (``ops``).
#: Its union tags (the models' names) are no fields: error messages leave them out.
RunBody = Annotated[
    Annotated[RunRequest, Tag("RunRequest")] | Annotated[RunOpsRequest, Tag("RunOpsRequest")],
    Discriminator(_run_kind),
]
UNION_TAGS = frozenset({"RunRequest", "RunOpsRequest"})


class JobAccepted(BaseModel):
    job_id: str
    fpga_id: int
    status: JobStatus
    session_id: str | None = None
    expires_at: datetime | None = Field(None, description="Session expiry (submit only).")
    replayed: bool = Field(False, description="True when an Idempotency-Key replayed this.")


class PoolJobAccepted(BaseModel):
    """A pool submit's 202: the job, its session id (the session opens on the board it
    is placed on), and where it stands."""

    job_id: str
    status: JobStatus
    fpga_id: int | None = Field(
        description="The board it was placed on, or null while it waits for one."
    )
    session_id: str
    queue_position: int = Field(description="Jobs ahead of it in its pool's queue (0: placed).")
    eta_seconds: float | None = Field(
        None, description="Estimated seconds until it is placed (null: no estimate yet)."
    )
    replayed: bool = Field(False, description="True when an Idempotency-Key replayed this.")


class RunAccepted(JobAccepted):
    """A run's 202; with ``?wait=``, answered once it has finished (or at the wait's end),
    ``status`` as it is then."""

    result: RunResult | None = Field(
        None,
        description="With `?wait=`, once the run has finished (complete or failed): its "
        "result, as `GET …/jobs/{job_id}/result` answers it. Absent otherwise.",
    )


class JobResponse(BaseModel):
    job_id: str
    fpga_id: int
    type: JobType
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str | None = None
    session_id: str | None = None
    error: str | None = Field(None, description="One line saying why a job failed.")
    filename: str | None = None
    design_sha256: str | None = None


class LabJobResponse(JobResponse):
    """A job as ``GET /jobs/{job_id}`` shows it: any job of the lab; a pool job with what
    it asked for and where it stands."""

    fpga_id: int | None = Field(  # type: ignore[assignment]
        description="Its board; null for a pool job no board has taken yet."
    )
    platform: str | None = Field(None, description="A pool job's platform (null: any).")
    tags: list[str] | None = Field(None, description="A pool job's tags.")
    priority: int | None = Field(None, description="A pool job's priority.")
    queue_position: int | None = Field(
        None, description="A pool job's place in its pool's queue: jobs ahead of it (0: placed)."
    )
    eta_seconds: float | None = Field(
        None,
        description="A waiting pool job's estimated seconds until it is placed (null: placed, "
        "or no estimate yet).",
    )
    placed_at: datetime | None = None


class RunOpResult(BaseModel):
    """What one transaction of an ``ops`` run did."""

    ok: bool
    data: list[int] = Field(default_factory=list, description="Words it read.")
    error: str | None = Field(None, description="Why it failed (the one that stopped the list).")


class TraceSummary(BaseModel):
    """What a traced run captured (``ok``), or why it has no waveform (``error``)."""

    ok: bool = Field(description="A waveform was made: `GET …/jobs/{job_id}/waveform` serves it.")
    error: str | None = Field(
        None, description="Why there is no waveform (the run's own data stands)."
    )
    format: Literal["vcd"] | None = Field(None, description="The waveform's format.")
    bytes: int | None = Field(None, description="Its size.")
    samples: int | None = Field(
        None, description="Samples the analyzer stored: the cycles the user slot's bus was busy."
    )
    full: bool | None = Field(
        None,
        description="The analyzer filled up before the run ended: the waveform shows the "
        "run's start.",
    )
    signals: list[str] | None = Field(None, description="The signals it shows.")


class RunResult(BaseModel):
    ok: bool
    data: list[int] = Field(
        default_factory=list,
        description="Words read (empty for a write); for an `ops` run, every op's words in turn.",
    )
    error: str | None = Field(
        None, description="Why it failed; for an `ops` run, `op N of M: …` (N counts from 1)."
    )
    results: list[RunOpResult] | None = Field(
        None,
        description="An `ops` run only (absent otherwise): one entry per op run, in order, up "
        "to and including the one that failed.",
    )
    trace: TraceSummary | None = Field(
        None, description="A traced run only (absent otherwise): what its trace captured."
    )


def result_json(status: str | None, stored: str | None, error: str | None) -> str | None:
    """A finished job's result as the JSON it is served as (a run's as its worker stored
    it; builds, resets and runs that never reached the bus made of their status and
    error); None while it is queued or running, or if it was cancelled."""
    if status not in (JobStatus.COMPLETE, JobStatus.FAILED):
        return None
    if stored is not None:
        return stored
    return json.dumps({"ok": status == JobStatus.COMPLETE, "data": [], "error": error})


class WhoAmI(BaseModel):
    name: str = Field(description="The caller's name (`anonymous` in an open lab).")
    admin: bool


class MaintenanceRequest(StrictBody):
    reason: str | None = Field(None, max_length=500, description="Shown as the health reason.")


class RenewRequest(StrictBody):
    seconds: int | None = Field(
        None, gt=0, le=7 * 24 * 3600, description="Extend to now + seconds (default: the TTL)."
    )


class AuditEntry(BaseModel):
    """One mutating call, as the audit trail keeps it."""

    id: str = Field(description="The entry's id; pass it as `before` for the next page.")
    at: datetime = Field(description="When the call was answered (the Redis server's clock).")
    caller: str | None = Field(None, description="Who called; null for an unknown key.")
    method: str
    path: str
    action: str | None = Field(None, description="The route's name, e.g. `submit`.")
    fpga_id: int | None = None
    job_id: str | None = None
    status: int = Field(description="The status code answered.")
    error: str | None = Field(None, description="The error code of a refusal.")
    client: str | None = Field(None, description="The client's address (or IPv6 /64).")
    count: int | None = Field(
        None,
        description="Set on a record that stands for this many further calls with unknown "
        "keys from `client`, refused (429) in one window and not recorded one by one.",
    )


def audit_entry(entry_id: str, fields: dict[str, str]) -> AuditEntry:
    """An audit stream entry as the API shows it ('' fields are null)."""
    fpga_id = fields.get("fpga_id", "")
    return AuditEntry(
        id=entry_id,
        at=iso(int(entry_id.split("-", 1)[0]) / 1000),  # type: ignore[arg-type]
        caller=fields.get("caller") or None,
        method=fields.get("method", ""),
        path=fields.get("path", ""),
        action=fields.get("action") or None,
        fpga_id=int(fpga_id) if fpga_id.isdigit() else None,
        job_id=fields.get("job_id") or None,
        status=int(fields.get("status") or 0),
        error=fields.get("error") or None,
        client=fields.get("client") or None,
        count=int(fields["count"]) if fields.get("count", "").isdigit() else None,
    )


def job_response(record: dict[str, Any]) -> JobResponse:
    """A job hash from Redis as the API shows it."""
    return JobResponse(**_job_fields(record))


def lab_job_response(
    record: dict[str, Any], position: int | None, eta: float | None
) -> LabJobResponse:
    """A job hash as ``GET /jobs/{job_id}`` shows it, with a pool job's standing."""
    pool = "pool" in record
    return LabJobResponse(
        **_job_fields(record),
        platform=(record.get("platform") or None) if pool else None,
        tags=[t for t in record.get("tags", "").split(",") if t] if pool else None,
        priority=int(record["priority"]) if pool else None,
        queue_position=position,
        eta_seconds=None if eta is None or "fpga_id" in record else round(eta, 1),
        placed_at=iso(record.get("placed_at")),
    )


def _job_fields(record: dict[str, Any]) -> dict[str, Any]:
    return dict(
        job_id=record["job_id"],
        fpga_id=int(record["fpga_id"]) if "fpga_id" in record else None,
        type=JobType(record["type"]),
        status=JobStatus(record["status"]),
        created_at=iso(record["created_at"]),
        updated_at=iso(record["updated_at"]),
        started_at=iso(record.get("started_at")),
        finished_at=iso(record.get("finished_at")),
        owner=record.get("owner"),
        session_id=record.get("session_id"),
        error=record.get("error"),
        filename=record.get("filename"),
        design_sha256=record.get("design_sha256"),
    )


def session_info(board: dict[str, str]) -> SessionInfo | None:
    if "session_id" not in board:
        return None
    return SessionInfo(
        session_id=board["session_id"],
        owner=board["session_owner"],
        created_at=iso(board["session_created_at"]),  # type: ignore[arg-type]
        expires_at=iso(board["session_expires_at"]),  # type: ignore[arg-type]
        max_expires_at=iso(board["session_max_expires_at"]),  # type: ignore[arg-type]
    )


def board_summary(fpga_id: int, board: dict[str, str], worker: str | None) -> FPGASummary:
    tags = board.get("tags", "")
    return FPGASummary(
        fpga_id=fpga_id,
        platform=board.get("platform", ""),
        tags=tags.split(",") if tags else [],
        state=BoardState(board.get("state", BoardState.IDLE)),
        session=session_info(board),
        current_job_id=board.get("current_job_id"),
        health=Health(board.get("health", Health.UNKNOWN)),
        health_reason=board.get("health_reason") or None,
        worker=worker,
        updated_at=iso(board.get("updated_at")),
    )
