"""The lab's client side: a Python client of the REST API (``Client``, ``AsyncClient``),
the ``fpgalab`` command's client commands, and a pytest plugin. Installed without extras
(``pip install fpgalab``): it imports nothing of the lab's server side.

    from fpgalab.client import Client, Read, Write

    with Client() as lab, lab.reserve(3, "alu.py") as board:
        board.write(board.region("user").base, [5, 7])

See docs/client.md.
"""

from typing import TYPE_CHECKING, Any

from fpgalab.client._client import BoardSession, Client
from fpgalab.client._errors import (
    ERRORS_BY_CODE,
    AdminRequired,
    BadRequest,
    Conflict,
    DesignNotText,
    DesignTooLarge,
    EmptyDesign,
    Forbidden,
    FpgalabError,
    FpgaNotFound,
    FpgaNotIdle,
    FpgaNotReserved,
    FpgaNotResettable,
    FpgaUnavailable,
    IdempotencyKeyReused,
    InternalError,
    InvalidApiKey,
    JobFailed,
    JobNotCancellable,
    JobNotComplete,
    JobNotFound,
    JobTimeout,
    LabError,
    MemoryMapUnknown,
    MethodNotAllowed,
    NoActiveSession,
    NoIdleBoard,
    NoMatchingBoard,
    NotFound,
    NotSessionOwner,
    PayloadTooLarge,
    PriorityReserved,
    RateLimited,
    RedisFull,
    RedisUnavailable,
    RequestHeaderTooLarge,
    RequestTimeout,
    RequestTooLarge,
    RouteNotFound,
    ServiceUnavailable,
    SessionMismatch,
    SessionRenewLimit,
    StorageBudgetExceeded,
    TagRestricted,
    TooManyBoards,
    TooManyQueuedJobs,
    TooManyRequests,
    TransportError,
    UnexpectedResponse,
    Unprocessable,
    UnsupportedDesign,
    ValidationError,
)
from fpgalab.client._models import (
    AuditEntry,
    Board,
    BoardCounts,
    BoardHealth,
    BoardState,
    Csr,
    Health,
    Job,
    JobAccepted,
    JobStatus,
    JobType,
    MemoryMap,
    OpResult,
    PoolJob,
    Read,
    RedisMemory,
    Region,
    RunResult,
    Session,
    Write,
)
from fpgalab.client._protocol import DEFAULT_URL, KEY_ENV, URL_ENV

if TYPE_CHECKING:
    from fpgalab.client._async_client import AsyncBoardSession, AsyncClient, AsyncReservation

#: Imported when first asked for: asyncio is not worth its start-up time to the command
#: line and to synchronous callers.
_ASYNC = frozenset({"AsyncBoardSession", "AsyncClient", "AsyncReservation"})


def __getattr__(name: str) -> Any:
    if name in _ASYNC:
        from fpgalab.client import _async_client

        return getattr(_async_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_URL",
    "ERRORS_BY_CODE",
    "KEY_ENV",
    "URL_ENV",
    "AdminRequired",
    "AsyncBoardSession",
    "AsyncClient",
    "AsyncReservation",
    "AuditEntry",
    "BadRequest",
    "Board",
    "BoardCounts",
    "BoardHealth",
    "BoardSession",
    "BoardState",
    "Client",
    "Conflict",
    "Csr",
    "DesignNotText",
    "DesignTooLarge",
    "EmptyDesign",
    "Forbidden",
    "FpgaNotFound",
    "FpgaNotIdle",
    "FpgaNotReserved",
    "FpgaNotResettable",
    "FpgaUnavailable",
    "FpgalabError",
    "Health",
    "IdempotencyKeyReused",
    "InternalError",
    "InvalidApiKey",
    "Job",
    "JobAccepted",
    "JobFailed",
    "JobNotCancellable",
    "JobNotComplete",
    "JobNotFound",
    "JobStatus",
    "JobTimeout",
    "JobType",
    "LabError",
    "MemoryMap",
    "MemoryMapUnknown",
    "MethodNotAllowed",
    "NoActiveSession",
    "NoIdleBoard",
    "NoMatchingBoard",
    "NotFound",
    "NotSessionOwner",
    "OpResult",
    "PayloadTooLarge",
    "PoolJob",
    "PriorityReserved",
    "RateLimited",
    "Read",
    "RedisFull",
    "RedisMemory",
    "RedisUnavailable",
    "Region",
    "RequestHeaderTooLarge",
    "RequestTimeout",
    "RequestTooLarge",
    "RouteNotFound",
    "RunResult",
    "ServiceUnavailable",
    "Session",
    "SessionMismatch",
    "SessionRenewLimit",
    "StorageBudgetExceeded",
    "TagRestricted",
    "TooManyBoards",
    "TooManyQueuedJobs",
    "TooManyRequests",
    "TransportError",
    "UnexpectedResponse",
    "Unprocessable",
    "UnsupportedDesign",
    "ValidationError",
    "Write",
]
