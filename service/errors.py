"""Every error the API can answer with, each carrying its code and HTTP status.

    LabError
    ├── ValidationFailed          422 validation_error
    ├── DesignRejected            422 unsupported_design | empty_design | design_not_text
    ├── Unsatisfiable             422 no_matching_board
    ├── DesignTooLarge            413 design_too_large
    ├── RequestTooLarge           413 request_too_large
    ├── BadRequest                400 bad_request              ┐ answered by the server
    ├── RequestTimeout            408 request_timeout          │ (service.server) to a
    ├── RequestHeadTooLarge       431 request_header_too_large ┘ head, before the app
    ├── IdempotencyKeyReused      422 idempotency_key_reused
    ├── InvalidApiKey             401 invalid_api_key
    ├── Forbidden                 403 admin_required | not_session_owner | session_mismatch
    │                                 | priority_reserved | tag_restricted
    ├── NotFound                  404 job_not_found | no_active_session | not_found
    │                                 | fpga_not_found
    │                                 | memory_map_unknown | waveform_not_found
    ├── Conflict                  409 fpga_not_idle | fpga_not_reserved | fpga_not_resettable
    │                                 | fpga_unavailable | job_not_complete
    │                                 | job_not_cancellable | session_renew_limit
    │                                 | too_many_boards
    ├── TooManyRequests           429 rate_limited | too_many_queued_jobs
    │                                 | storage_budget_exceeded
    ├── ServiceUnavailable        503 redis_unavailable | redis_full
    └── InternalError             500 internal_error (a bug of the lab's: logged)

Routes raise these; ``service.handlers`` renders each as
``{"detail": {"error": code, "message": message}}``, with ``headers`` (``Retry-After``)
when the error has any.
"""

from __future__ import annotations

from typing import ClassVar


class LabError(Exception):
    status: ClassVar[int] = 500
    codes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        if code not in self.codes:  # a typo here would silently break the contract
            raise ValueError(f"{type(self).__name__} has no error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


class ValidationFailed(LabError):
    status = 422
    codes = frozenset({"validation_error"})


class DesignRejected(LabError):
    status = 422
    codes = frozenset({"unsupported_design", "empty_design", "design_not_text"})


class Unsatisfiable(LabError):
    """A pool job no board of the lab can ever take."""

    status = 422
    codes = frozenset({"no_matching_board"})


class DesignTooLarge(LabError):
    status = 413
    codes = frozenset({"design_too_large"})


class RequestTooLarge(LabError):
    status = 413
    codes = frozenset({"request_too_large"})


class BadRequest(LabError):
    status = 400
    codes = frozenset({"bad_request"})


class RequestTimeout(LabError):
    status = 408
    codes = frozenset({"request_timeout"})


class RequestHeadTooLarge(LabError):
    status = 431
    codes = frozenset({"request_header_too_large"})


class IdempotencyKeyReused(LabError):
    status = 422
    codes = frozenset({"idempotency_key_reused"})


class InvalidApiKey(LabError):
    status = 401
    codes = frozenset({"invalid_api_key"})


class Forbidden(LabError):
    status = 403
    codes = frozenset(
        {
            "admin_required",
            "not_session_owner",
            "session_mismatch",
            "priority_reserved",
            "tag_restricted",
        }
    )


class NotFound(LabError):
    status = 404
    codes = frozenset(
        {
            "job_not_found",
            "no_active_session",
            "not_found",
            "memory_map_unknown",
            "fpga_not_found",
            "waveform_not_found",
        }
    )


class Conflict(LabError):
    status = 409
    codes = frozenset(
        {
            "fpga_not_idle",
            "fpga_not_reserved",
            "fpga_not_resettable",
            "fpga_unavailable",
            "job_not_complete",
            "job_not_cancellable",
            "session_renew_limit",
            "too_many_boards",
        }
    )


class TooManyRequests(LabError):
    status = 429
    codes = frozenset({"rate_limited", "too_many_queued_jobs", "storage_budget_exceeded"})


class ServiceUnavailable(LabError):
    status = 503
    codes = frozenset({"redis_unavailable", "redis_full"})


class InternalError(LabError):
    status = 500
    codes = frozenset({"internal_error"})


ALL_ERRORS: tuple[type[LabError], ...] = (
    ValidationFailed,
    DesignRejected,
    Unsatisfiable,
    DesignTooLarge,
    RequestTooLarge,
    BadRequest,
    RequestTimeout,
    RequestHeadTooLarge,
    IdempotencyKeyReused,
    InvalidApiKey,
    Forbidden,
    NotFound,
    Conflict,
    TooManyRequests,
    ServiceUnavailable,
    InternalError,
)

_BY_CODE = {code: cls for cls in ALL_ERRORS for code in cls.codes}


def lab_error(code: str, message: str, retry_after: int | None = None) -> LabError:
    """The error for ``code`` (as returned by a Lua script), of the right class; with
    ``retry_after``, a ``Retry-After`` header of that many seconds."""
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return _BY_CODE[code](code, message, headers)
