"""What the lab answers, as typed records, each read from its documented body
(``docs/api.md``), and the two Wishbone operations a run carries (``Read``, ``Write``).

Records are frozen dataclasses. Fields the API adds later are ignored, so a newer lab
never breaks an older client; a documented field missing or of the wrong type is
``UnexpectedResponse``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from fpgalab.client._errors import UnexpectedResponse

__all__ = [
    "AuditEntry",
    "Board",
    "BoardCounts",
    "BoardHealth",
    "BoardState",
    "Csr",
    "Health",
    "Job",
    "JobAccepted",
    "JobStatus",
    "JobType",
    "MemoryMap",
    "OpResult",
    "Read",
    "RedisMemory",
    "Region",
    "RunResult",
    "Session",
    "Write",
]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Complete, failed or cancelled: it will not change again."""
        return self in (JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.CANCELLED)


class JobType(enum.StrEnum):
    BUILD_AND_PROGRAM = "build_and_program"
    RUN = "run"
    RESET = "reset"


class BoardState(enum.StrEnum):
    IDLE = "idle"
    QUEUED = "queued"
    PROGRAMMING = "programming"
    RESERVED = "reserved"
    RESETTING = "resetting"
    ERROR = "error"


class BoardHealth(enum.StrEnum):
    GOOD = "good"
    UNKNOWN = "unknown"
    BAD = "bad"
    MAINTENANCE = "maintenance"


# Reading bodies ---------------------------------------------------------------------------

E = TypeVar("E", bound=enum.StrEnum)


class _Body:
    """A JSON object being read into a record; a wrong field names the record and field."""

    def __init__(self, what: str, value: object) -> None:
        if not isinstance(value, Mapping):
            raise UnexpectedResponse(f"{what}: expected a JSON object, got {type(value).__name__}")
        self.what = what
        self.body: Mapping[str, Any] = value

    def _wrong(self, key: str, expected: str) -> UnexpectedResponse:
        return UnexpectedResponse(f"{self.what}.{key}: expected {expected}")

    def get(self, key: str, optional: bool = True) -> Any:
        if key not in self.body and not optional:
            raise self._wrong(key, "a value (missing)")
        return self.body.get(key)

    def integer(self, key: str) -> int:
        value = self.get(key, False)
        if type(value) is not int:
            raise self._wrong(key, "an integer")
        return value

    def opt_integer(self, key: str) -> int | None:
        value = self.get(key, True)
        return None if value is None else self.integer(key)

    def flag(self, key: str) -> bool:
        value = self.get(key, False)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false")
        return value

    def string(self, key: str) -> str:
        value = self.get(key, False)
        if not isinstance(value, str):
            raise self._wrong(key, "a string")
        return value

    def opt_string(self, key: str) -> str | None:
        value = self.get(key, True)
        return None if value is None else self.string(key)

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings; none if the lab does not send it (an older lab)."""
        value = self.get(key, True)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong(key, "a list of strings")
        return tuple(value)

    def time(self, key: str) -> datetime:
        try:
            return datetime.fromisoformat(self.string(key))
        except ValueError:
            raise self._wrong(key, "an ISO 8601 time") from None

    def opt_time(self, key: str) -> datetime | None:
        return None if self.get(key, True) is None else self.time(key)

    def enum(self, key: str, kind: type[E]) -> E:
        try:
            return kind(self.string(key))
        except ValueError:
            raise self._wrong(key, "one of " + ", ".join(kind)) from None

    def words(self, key: str) -> list[int]:
        value = self.get(key, True)
        if value is None:
            return []
        if not isinstance(value, list) or any(type(w) is not int for w in value):
            raise self._wrong(key, "an array of integers")
        return value

    def obj(self, key: str) -> _Body | None:
        value = self.get(key, True)
        return None if value is None else _Body(f"{self.what}.{key}", value)

    def objects(self, key: str) -> list[tuple[str, _Body]]:
        """An object of objects (``memories``), as (name, body) pairs."""
        outer = self.obj(key)
        if outer is None:
            return []
        return [(str(name), _Body(f"{outer.what}.{name}", v)) for name, v in outer.body.items()]


# Records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisMemory:
    used_bytes: int
    max_bytes: int | None
    policy: str


@dataclass(frozen=True, slots=True)
class BoardCounts:
    #: Boards up: held by a live worker that has checked them, health good, not in error.
    ready: int
    total: int


@dataclass(frozen=True, slots=True)
class Health:
    """``GET /health``: ``status`` is ``ok`` or ``degraded`` (Redis unreachable)."""

    status: str
    redis: bool
    memory: RedisMemory | None
    warning: str | None
    boards: BoardCounts | None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def parse(cls, raw: object) -> Health:
        b = _Body("health", raw)
        memory = boards = None
        if (m := b.obj("memory")) is not None:
            memory = RedisMemory(
                m.integer("used_bytes"), m.opt_integer("max_bytes"), m.string("policy")
            )
        if (n := b.obj("boards")) is not None:
            boards = BoardCounts(n.integer("ready"), n.integer("total"))
        return cls(
            status=b.string("status"),
            redis=b.flag("redis"),
            memory=memory,
            warning=b.opt_string("warning"),
            boards=boards,
        )


@dataclass(frozen=True, slots=True)
class Session:
    """A board's session. ``fpga_id`` is None where the API nests it in a board."""

    session_id: str
    owner: str
    created_at: datetime
    expires_at: datetime
    #: Renewals never extend the session past this.
    max_expires_at: datetime
    fpga_id: int | None = None

    @classmethod
    def parse(cls, raw: object) -> Session:
        b = _Body("session", raw)
        return cls(
            session_id=b.string("session_id"),
            owner=b.string("owner"),
            created_at=b.time("created_at"),
            expires_at=b.time("expires_at"),
            max_expires_at=b.time("max_expires_at"),
            fpga_id=b.opt_integer("fpga_id"),
        )


@dataclass(frozen=True, slots=True)
class Board:
    """A board as ``GET /fpga/{id}`` shows it (``FPGASummary``)."""

    fpga_id: int
    state: BoardState
    health: BoardHealth
    session: Session | None = None
    current_job_id: str | None = None
    health_reason: str | None = None
    #: The worker holding the board (None: no live worker).
    worker: str | None = None
    updated_at: datetime | None = None
    #: Its platform (``sim``; a real board's lab file's) and tags: what pools select by
    #: (empty from a lab older than pools).
    platform: str = ""
    tags: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        """Idle, in service, and served by a live worker: a submit would be taken, and
        its build run."""
        in_service = self.health in (BoardHealth.GOOD, BoardHealth.UNKNOWN)
        return self.state is BoardState.IDLE and in_service and self.worker is not None

    @classmethod
    def parse(cls, raw: object) -> Board:
        b = _Body("board", raw)
        session = b.get("session", True)
        return cls(
            fpga_id=b.integer("fpga_id"),
            state=b.enum("state", BoardState),
            health=b.enum("health", BoardHealth),
            session=None if session is None else Session.parse(session),
            current_job_id=b.opt_string("current_job_id"),
            health_reason=b.opt_string("health_reason"),
            worker=b.opt_string("worker"),
            updated_at=b.opt_time("updated_at"),
            platform=b.opt_string("platform") or "",
            tags=b.strings("tags"),
        )


@dataclass(frozen=True, slots=True)
class JobAccepted:
    """The ``202`` of a submit, run, reset or release: the job queued."""

    job_id: str
    fpga_id: int
    status: JobStatus
    session_id: str | None = None
    #: When the session ends unless renewed (submit only).
    expires_at: datetime | None = None
    #: True when the lab replayed an earlier answer to the same ``Idempotency-Key``.
    replayed: bool = False
    #: A run posted with ``?wait=`` that finished within it: its result.
    result: RunResult | None = None

    @classmethod
    def parse(cls, raw: object) -> JobAccepted:
        b = _Body("accepted job", raw)
        replayed = b.get("replayed", True)
        result = b.get("result")
        return cls(
            job_id=b.string("job_id"),
            fpga_id=b.integer("fpga_id"),
            status=b.enum("status", JobStatus),
            session_id=b.opt_string("session_id"),
            expires_at=b.opt_time("expires_at"),
            replayed=bool(replayed),
            result=None if result is None else RunResult.parse(result),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A job as ``GET /fpga/{id}/jobs/{job_id}`` shows it."""

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
    #: Why it failed: one line, control characters escaped by the lab (safe to print).
    error: str | None = None
    filename: str | None = None
    design_sha256: str | None = None

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.COMPLETE

    @classmethod
    def parse(cls, raw: object) -> Job:
        b = _Body("job", raw)
        return cls(
            job_id=b.string("job_id"),
            fpga_id=b.integer("fpga_id"),
            type=b.enum("type", JobType),
            status=b.enum("status", JobStatus),
            created_at=b.time("created_at"),
            updated_at=b.time("updated_at"),
            started_at=b.opt_time("started_at"),
            finished_at=b.opt_time("finished_at"),
            owner=b.opt_string("owner"),
            session_id=b.opt_string("session_id"),
            error=b.opt_string("error"),
            filename=b.opt_string("filename"),
            design_sha256=b.opt_string("design_sha256"),
        )


@dataclass(frozen=True, slots=True)
class PoolJob:
    """A pool job (``POST /submit``; ``GET /jobs/{job_id}``): a build for the first free
    board of a platform and tags, and where it stands."""

    job_id: str
    status: JobStatus
    #: Its board once placed; None while it waits for one.
    fpga_id: int | None
    #: Its session's id, opened on the board it is placed on.
    session_id: str | None
    #: Jobs ahead of it in its pool's queue (0 once placed).
    queue_position: int | None = None
    #: Estimated seconds until it is placed (None: placed, or no estimate yet).
    eta_seconds: float | None = None
    platform: str | None = None
    tags: tuple[str, ...] = ()
    priority: int | None = None
    #: Why it failed or was cancelled (one line, escaped by the lab).
    error: str | None = None
    #: True when the lab replayed an earlier answer to the same ``Idempotency-Key``.
    replayed: bool = False

    @property
    def placed(self) -> bool:
        return self.fpga_id is not None

    @property
    def finished(self) -> bool:
        return self.status.finished

    @classmethod
    def parse(cls, raw: object) -> PoolJob:
        b = _Body("pool job", raw)
        eta = b.get("eta_seconds")
        if eta is not None and (isinstance(eta, bool) or not isinstance(eta, int | float)):
            raise b._wrong("eta_seconds", "a number")
        return cls(
            job_id=b.string("job_id"),
            status=b.enum("status", JobStatus),
            fpga_id=b.opt_integer("fpga_id"),
            session_id=b.opt_string("session_id"),
            queue_position=b.opt_integer("queue_position"),
            eta_seconds=None if eta is None else float(eta),
            platform=b.opt_string("platform"),
            tags=b.strings("tags"),
            priority=b.opt_integer("priority"),
            error=b.opt_string("error"),
            replayed=bool(b.get("replayed", True)),
        )


@dataclass(frozen=True, slots=True)
class OpResult:
    """One op of an ``ops`` run: ``data`` the words it read (empty for a write)."""

    ok: bool
    data: list[int] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TraceInfo:
    """What a traced run captured (``ok``: a waveform was made), or why it has none."""

    ok: bool
    error: str | None = None
    format: str | None = None
    bytes: int | None = None
    #: Samples the analyzer stored: the cycles the user slot's bus was busy.
    samples: int | None = None
    #: The analyzer filled up before the run ended: the waveform shows the run's start.
    full: bool | None = None
    signals: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: object) -> TraceInfo:
        b = _Body("result.trace", raw)
        return cls(
            b.flag("ok"), b.opt_string("error"), b.opt_string("format"), b.opt_integer("bytes"),
            b.opt_integer("samples"), b.get("full") is True,
            b.strings("signals"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunResult:
    """A finished job's result. For a run: ``data`` the words read (with ``ops``, every
    read's words in order); ``results`` one ``OpResult`` per op of an ``ops`` run, up to
    the first that failed (empty for a single-op run, a build or a reset). A traced run:
    ``trace`` what was captured, ``waveform`` the VCD (once fetched), ``job_id`` its job."""

    ok: bool
    data: list[int] = field(default_factory=list)
    error: str | None = None
    results: list[OpResult] = field(default_factory=list)
    trace: TraceInfo | None = None
    waveform: bytes | None = None
    job_id: str | None = None

    @classmethod
    def parse(cls, raw: object) -> RunResult:
        b = _Body("result", raw)
        results = b.get("results", True) or []
        if not isinstance(results, list):
            raise UnexpectedResponse("result.results: expected an array")
        ops = []
        for i, one in enumerate(results):
            r = _Body(f"result.results[{i}]", one)
            ops.append(OpResult(r.flag("ok"), r.words("data"), r.opt_string("error")))
        trace = b.get("trace", True)
        return cls(
            b.flag("ok"), b.words("data"), b.opt_string("error"), ops,
            TraceInfo.parse(trace) if trace is not None else None,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Traced:
    """A traced read or write: ``data`` the words read, ``waveform`` the run's VCD (also
    written to ``path`` when one was given), ``info`` what the analyzer captured."""

    data: list[int]
    waveform: bytes
    info: TraceInfo
    job_id: str
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class Region:
    """A memory region of the SoC (``csr.json``'s ``memories``): byte addresses."""

    name: str
    base: int
    size: int
    type: str = ""

    @property
    def end(self) -> int:
        """The first byte address past the region."""
        return self.base + self.size

    def __contains__(self, address: object) -> bool:
        return isinstance(address, int) and self.base <= address < self.end


@dataclass(frozen=True, slots=True)
class Csr:
    """A CSR register (``csr.json``'s ``csr_registers``): ``size`` in 32-bit words,
    ``access`` ``rw`` or ``ro``."""

    name: str
    address: int
    size: int = 1
    access: str = ""


@dataclass(frozen=True, slots=True)
class MemoryMap:
    """A board's LiteX ``csr.json`` (``GET /fpga/{id}/memory-map``), with names looked up:
    ``region("user").base``, ``csr("ctrl_scratch")``, ``address(name)``."""

    regions: dict[str, Region]
    csrs: dict[str, Csr]
    #: CSR blocks' base addresses (``csr_bases``), e.g. ``identifier_mem``.
    csr_bases: dict[str, int]
    constants: dict[str, Any]
    #: The whole ``csr.json`` as the lab sent it.
    raw: dict[str, Any]

    def region(self, name: str) -> Region:
        try:
            return self.regions[name]
        except KeyError:
            raise KeyError(_unknown("region", name, self.regions)) from None

    def csr(self, name: str) -> int:
        """The byte address of a CSR register or of a CSR block (``csr_bases``)."""
        if name in self.csrs:
            return self.csrs[name].address
        if name in self.csr_bases:
            return self.csr_bases[name]
        raise KeyError(_unknown("CSR", name, {**self.csrs, **self.csr_bases}))

    def address(self, name: str) -> int:
        """A CSR's address, or a region's base."""
        if name in self.csrs or name in self.csr_bases:
            return self.csr(name)
        if name in self.regions:
            return self.regions[name].base
        every = {**self.csrs, **self.csr_bases, **self.regions}
        raise KeyError(_unknown("CSR or region", name, every))

    @classmethod
    def parse(cls, raw: object) -> MemoryMap:
        b = _Body("memory map", raw)
        regions = {}
        for name, r in b.objects("memories"):
            regions[name] = Region(
                name, r.integer("base"), r.integer("size"), r.opt_string("type") or ""
            )
        csrs = {}
        for name, r in b.objects("csr_registers"):
            size = r.opt_integer("size")
            access = r.opt_string("type") or ""
            csrs[name] = Csr(name, r.integer("addr"), 1 if size is None else size, access)
        bases = b.obj("csr_bases")
        csr_bases = {name: bases.integer(name) for name in bases.body} if bases else {}
        constants = b.obj("constants")
        return cls(
            regions, csrs, csr_bases, dict(constants.body) if constants else {}, dict(b.body)
        )


def _unknown(kind: str, name: str, known: Mapping[str, object]) -> str:
    return f"no {kind} {name!r} in the memory map (it has: {', '.join(sorted(known)) or 'none'})"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One mutating call in the audit trail (``GET /audit``, admins)."""

    id: str
    at: datetime
    method: str
    path: str
    status: int
    caller: str | None = None
    action: str | None = None
    fpga_id: int | None = None
    job_id: str | None = None
    error: str | None = None
    client: str | None = None
    count: int | None = None

    @classmethod
    def parse(cls, raw: object) -> AuditEntry:
        b = _Body("audit entry", raw)
        return cls(
            id=b.string("id"),
            at=b.time("at"),
            method=b.string("method"),
            path=b.string("path"),
            status=b.integer("status"),
            caller=b.opt_string("caller"),
            action=b.opt_string("action"),
            fpga_id=b.opt_integer("fpga_id"),
            job_id=b.opt_string("job_id"),
            error=b.opt_string("error"),
            client=b.opt_string("client"),
            count=b.opt_integer("count"),
        )


# Operations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """Write ``data`` (32-bit words) at consecutive word addresses from ``address`` (a
    word-aligned byte address)."""

    address: int
    data: Sequence[int]

    def body(self) -> dict[str, Any]:
        return {"op": 1, "address": self.address, "data": list(self.data)}


@dataclass(frozen=True, slots=True)
class Read:
    """Read ``length`` words from consecutive word addresses from ``address``."""

    address: int
    length: int = 1

    def body(self) -> dict[str, Any]:
        return {"op": 2, "address": self.address, "length": self.length}


def op_body(op: Read | Write | Mapping[str, Any]) -> dict[str, Any]:
    """An op as the API's JSON (a mapping is taken as already that)."""
    return op.body() if isinstance(op, Read | Write) else dict(op)
