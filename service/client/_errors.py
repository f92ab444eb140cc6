"""Everything the client raises, each lab error code its own class.

    FpgalabError
    ├── TransportError               the lab could not be reached, or its answer was lost
    ├── UnexpectedResponse           the lab answered something this client cannot read
    ├── JobFailed                    a job waited on ended failed or cancelled (.job,
    │                                .log_tail, .result for a run)
    ├── JobTimeout                   a wait ran out of time first (.job as last seen);
    │                                also a TimeoutError
    ├── NoIdleBoard                  reserve(None, ...) found no board to take
    ├── TraceUnavailable             a traced run made no waveform (.reason, .result: the
    │                                run's data stands)
    └── LabError                     the lab answered an error (.status, .code, .message,
        │                            .response, .retry_after)
        ├── BadRequest               400 bad_request
        ├── InvalidApiKey            401 invalid_api_key
        ├── Forbidden                403 ┬ AdminRequired          admin_required
        │                                ├ NotSessionOwner        not_session_owner
        │                                ├ SessionMismatch        session_mismatch
        │                                ├ PriorityReserved       priority_reserved
        │                                └ TagRestricted          tag_restricted
        ├── NotFound                 404 ┬ JobNotFound            job_not_found
        │                                ├ FpgaNotFound           fpga_not_found
        │                                ├ NoActiveSession        no_active_session
        │                                ├ MemoryMapUnknown       memory_map_unknown
        │                                ├ WaveformNotFound       waveform_not_found
        │                                └ RouteNotFound          not_found
        ├── MethodNotAllowed         405 method_not_allowed
        ├── RequestTimeout           408 request_timeout
        ├── Conflict                 409 ┬ FpgaNotIdle            fpga_not_idle
        │                                ├ FpgaUnavailable        fpga_unavailable
        │                                ├ FpgaNotReserved        fpga_not_reserved
        │                                ├ FpgaNotResettable      fpga_not_resettable
        │                                ├ JobNotComplete         job_not_complete
        │                                ├ JobNotCancellable      job_not_cancellable
        │                                ├ SessionRenewLimit      session_renew_limit
        │                                └ TooManyBoards          too_many_boards
        ├── PayloadTooLarge          413 ┬ DesignTooLarge         design_too_large
        │                                └ RequestTooLarge        request_too_large
        ├── Unprocessable            422 ┬ ValidationError        validation_error
        │                                ├ UnsupportedDesign      unsupported_design
        │                                ├ EmptyDesign            empty_design
        │                                ├ DesignNotText          design_not_text
        │                                ├ NoMatchingBoard        no_matching_board
        │                                └ IdempotencyKeyReused   idempotency_key_reused
        ├── TooManyRequests          429 ┬ RateLimited            rate_limited
        │                                ├ TooManyQueuedJobs      too_many_queued_jobs
        │                                └ StorageBudgetExceeded  storage_budget_exceeded
        ├── RequestHeaderTooLarge    431 request_header_too_large
        ├── InternalError            500 internal_error
        └── ServiceUnavailable       503 ┬ RedisUnavailable       redis_unavailable
                                         └ RedisFull              redis_full

The class statements below are the table of codes: each names its ``code``, and
defining it registers it (``__init_subclass__``), so ``error_for`` needs no second list.
A code this client does not know yet (the API is additive) becomes its status's class
(``Conflict`` for a new 409), or ``LabError`` for a status without one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

if TYPE_CHECKING:
    from fpgalab.client._models import Job, RunResult

#: Every lab error code this client knows, to its class (filled as the classes are made).
ERRORS_BY_CODE: dict[str, type[LabError]] = {}
#: Each status's own class: the one a code without a class of its own gets.
_BY_STATUS: dict[int, type[LabError]] = {}


class FpgalabError(Exception):
    """The root of everything the client raises on purpose."""


class TransportError(FpgalabError):
    """The lab could not be reached (refused, timed out, the connection dropped), after
    the retries the client's budget allowed. ``__cause__`` is httpx's error."""


class UnexpectedResponse(FpgalabError):
    """The lab answered with a body this client cannot read (not the documented shape)."""

    def __init__(self, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


class JobFailed(FpgalabError):
    """A job the client waited on ended ``failed`` or ``cancelled``. ``job`` is the job as
    it ended; ``log_tail`` the last lines of its log (untrusted text: what a design and
    its tools printed; never put in ``str(exc)``); ``result`` the run's result, for a run
    (a bus error's words read before it, and with ``ops`` which op failed)."""

    def __init__(
        self, job: Job, log_tail: list[str] | None = None, result: RunResult | None = None
    ) -> None:
        why = f": {job.error}" if job.error else ""
        super().__init__(f"job {job.job_id} ({job.type}) on FPGA {job.fpga_id} {job.status}{why}")
        self.job = job
        self.log_tail = list(log_tail or [])
        self.result = result


class TraceUnavailable(FpgalabError):
    """A run asked for a trace and got none (no analyzer in the build, an unknown signal,
    a waveform over the lab's limit): ``reason`` says why, ``result`` is the run's result,
    its words read as they would be untraced."""

    def __init__(self, reason: str, result: RunResult) -> None:
        super().__init__(f"no waveform: {reason}")
        self.reason = reason
        self.result = result


class JobTimeout(FpgalabError, TimeoutError):
    """Waiting for a job ran out of time before the job finished; ``job`` is the job as
    last seen (it goes on in the lab)."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(
            f"job {job.job_id} on FPGA {job.fpga_id} is still {job.status} after {timeout:g} s"
        )
        self.job = job
        self.timeout = timeout


class NoIdleBoard(FpgalabError):
    """``reserve`` with no board named found none idle and in service to take."""


class LabError(FpgalabError):
    """The lab answered with an error: ``{"detail": {"error": code, "message": ...}}``.

    ``status`` is the HTTP status, ``code`` the error code (``None`` when the body was
    not the lab's shape, e.g. a proxy's page), ``message`` the lab's sentence (one line,
    safe to print), ``response`` the ``httpx.Response``."""

    #: The HTTP status of this class's code(s) (0: any).
    STATUS: ClassVar[int] = 0
    #: The error code this class stands for (``""`` on a class of a whole status).
    CODE: ClassVar[str] = ""

    def __init__(
        self, status: int, code: str | None, message: str, response: httpx.Response | None = None
    ) -> None:
        super().__init__(f"{status} {code or 'error'}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.response = response

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "CODE" in vars(cls):
            if cls.CODE in ERRORS_BY_CODE:
                raise TypeError(f"{cls.CODE!r} has two classes")
            ERRORS_BY_CODE[cls.CODE] = cls
        elif "STATUS" in vars(cls):
            _BY_STATUS[cls.STATUS] = cls

    @property
    def retry_after(self) -> float | None:
        """The answer's ``Retry-After`` in seconds, if it had one."""
        return None if self.response is None else retry_after(self.response)


# The table: one class per status that has several codes, one per code ----------------


class BadRequest(LabError):
    STATUS, CODE = 400, "bad_request"


class InvalidApiKey(LabError):
    STATUS, CODE = 401, "invalid_api_key"


class Forbidden(LabError):
    STATUS = 403


class AdminRequired(Forbidden):
    CODE = "admin_required"


class NotSessionOwner(Forbidden):
    CODE = "not_session_owner"


class SessionMismatch(Forbidden):
    CODE = "session_mismatch"


class PriorityReserved(Forbidden):
    CODE = "priority_reserved"


class TagRestricted(Forbidden):
    CODE = "tag_restricted"


class NotFound(LabError):
    STATUS = 404


class JobNotFound(NotFound):
    CODE = "job_not_found"


class FpgaNotFound(NotFound):
    CODE = "fpga_not_found"


class NoActiveSession(NotFound):
    CODE = "no_active_session"


class MemoryMapUnknown(NotFound):
    CODE = "memory_map_unknown"


class WaveformNotFound(NotFound):
    CODE = "waveform_not_found"


class RouteNotFound(NotFound):
    CODE = "not_found"


class MethodNotAllowed(LabError):
    STATUS, CODE = 405, "method_not_allowed"


class RequestTimeout(LabError):
    STATUS, CODE = 408, "request_timeout"


class Conflict(LabError):
    STATUS = 409


class FpgaNotIdle(Conflict):
    CODE = "fpga_not_idle"


class FpgaUnavailable(Conflict):
    CODE = "fpga_unavailable"


class FpgaNotReserved(Conflict):
    CODE = "fpga_not_reserved"


class FpgaNotResettable(Conflict):
    CODE = "fpga_not_resettable"


class JobNotComplete(Conflict):
    CODE = "job_not_complete"


class JobNotCancellable(Conflict):
    CODE = "job_not_cancellable"


class SessionRenewLimit(Conflict):
    CODE = "session_renew_limit"


class TooManyBoards(Conflict):
    CODE = "too_many_boards"


class PayloadTooLarge(LabError):
    STATUS = 413


class DesignTooLarge(PayloadTooLarge):
    CODE = "design_too_large"


class RequestTooLarge(PayloadTooLarge):
    CODE = "request_too_large"


class Unprocessable(LabError):
    STATUS = 422


class ValidationError(Unprocessable):
    CODE = "validation_error"


class UnsupportedDesign(Unprocessable):
    CODE = "unsupported_design"


class EmptyDesign(Unprocessable):
    CODE = "empty_design"


class DesignNotText(Unprocessable):
    CODE = "design_not_text"


class NoMatchingBoard(Unprocessable):
    CODE = "no_matching_board"


class IdempotencyKeyReused(Unprocessable):
    CODE = "idempotency_key_reused"


class TooManyRequests(LabError):
    STATUS = 429


class RateLimited(TooManyRequests):
    CODE = "rate_limited"


class TooManyQueuedJobs(TooManyRequests):
    CODE = "too_many_queued_jobs"


class StorageBudgetExceeded(TooManyRequests):
    CODE = "storage_budget_exceeded"


class RequestHeaderTooLarge(LabError):
    STATUS, CODE = 431, "request_header_too_large"


class InternalError(LabError):
    STATUS, CODE = 500, "internal_error"


class ServiceUnavailable(LabError):
    STATUS = 503


class RedisUnavailable(ServiceUnavailable):
    CODE = "redis_unavailable"


class RedisFull(ServiceUnavailable):
    CODE = "redis_full"


# Reading an error answer ---------------------------------------------------------------


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (the lab sends whole seconds), or None."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_for(response: httpx.Response) -> LabError:
    """The typed error of an answer whose status is an error."""
    status = response.status_code
    code: str | None = None
    try:
        detail = json.loads(response.content)["detail"]
        code, message = str(detail["error"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {status} {response.reason_phrase}".strip()
    cls = ERRORS_BY_CODE.get(code or "")
    if cls is None or status != cls.STATUS:
        cls = _BY_STATUS.get(status, LabError)
    return cls(status, code, message, response)
