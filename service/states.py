"""The lab's vocabulary: board states and health, job types and statuses, and
the one table of board transitions that every state change goes through.

The table is data. Python uses it to document and test the machine; the Lua
scripts that change state in Redis receive it (as JSON) on every call, so the
server-side check and this file can never disagree.
"""

from __future__ import annotations

import json
from enum import StrEnum

from fpgalab.backends import MAX_BOARDS as MAX_BOARDS  # re-exported: the lab's vocabulary
from fpgalab.backends import NUM_BOARDS as NUM_BOARDS

#: The boards a worker serves when nothing says which: the prototype's ten. The lab's
#: boards are those its workers registered (``fpgalab:inventory``), any ids below
#: ``MAX_BOARDS`` (the lab file's rule too).
BOARD_IDS = range(NUM_BOARDS)
#: The platform of a simulated board (a real board's is its lab file's).
SIM_PLATFORM = "sim"
#: A pool job's priority: 0-100, higher placed first; a caller's at most
#: ``PRIORITY_CALLER_MAX``, the band above it is the admins'.
PRIORITY_MAX = 100
PRIORITY_CALLER_MAX = 89
PRIORITY_DEFAULT = 50


class BoardState(StrEnum):
    """Where a board is in its life cycle (what it is doing for whom)."""

    #: Free: accepts a submit (unless its health is bad or maintenance).
    IDLE = "idle"
    #: A build_and_program job is queued; a session is open.
    QUEUED = "queued"
    #: A worker is building the design and programming the board.
    PROGRAMMING = "programming"
    #: The user's design is on the board; the session owner may run jobs.
    RESERVED = "reserved"
    #: A reset job is queued or running: the base SoC is being reflashed.
    RESETTING = "resetting"
    #: The last build, program or reset failed, or the board faulted; reset it.
    ERROR = "error"


class Health(StrEnum):
    """Whether a board can be trusted, kept apart from its state (as LAVA does)."""

    #: Last health check passed: the board takes new submits.
    GOOD = "good"
    #: Never checked yet, or not since an infrastructure fault (worker lost, board
    #: fault). An idle board of unknown health takes submits: the worker checks it before
    #: it runs the build.
    UNKNOWN = "unknown"
    #: A health check or a reset failed: out of service until a good check.
    BAD = "bad"
    #: Taken out of service by an admin; only an admin brings it back.
    MAINTENANCE = "maintenance"


class JobType(StrEnum):
    BUILD_AND_PROGRAM = "build_and_program"
    RUN = "run"
    RESET = "reset"


class JobStatus(StrEnum):
    #: In the board's queue; may still be cancelled.
    QUEUED = "queued"
    #: Taken by a worker; can no longer be cancelled.
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.CANCELLED})


class Event(StrEnum):
    """Things that happen to a board."""

    SUBMIT = "submit"  # a user submits a design (API)
    CANCEL_BUILD = "cancel_build"  # the queued build is cancelled (API)
    CHECK_FAIL = "check_fail"  # the board failed its health check before its build began
    BUILD_START = "build_start"  # a worker takes the build job
    BUILD_OK = "build_ok"  # design built and programmed
    BUILD_FAIL = "build_fail"  # build or program failed
    RESET = "reset"  # reset, release or session expiry (API / housekeeping)
    RESET_OK = "reset_ok"  # base SoC back, board checked
    RESET_FAIL = "reset_fail"  # the reflash failed
    FAULT = "fault"  # the board stopped answering during a run
    WORKER_LOST = "worker_lost"  # the worker died holding a job on this board


_S, _E = BoardState, Event

#: (state, event) -> next state. A pair that is missing is refused.
TRANSITIONS: dict[tuple[BoardState, Event], BoardState] = {
    (_S.IDLE, _E.SUBMIT): _S.QUEUED,
    (_S.QUEUED, _E.CANCEL_BUILD): _S.IDLE,
    (_S.QUEUED, _E.CHECK_FAIL): _S.IDLE,
    (_S.QUEUED, _E.BUILD_START): _S.PROGRAMMING,
    (_S.PROGRAMMING, _E.BUILD_OK): _S.RESERVED,
    (_S.PROGRAMMING, _E.BUILD_FAIL): _S.ERROR,
    (_S.PROGRAMMING, _E.WORKER_LOST): _S.ERROR,
    (_S.RESERVED, _E.RESET): _S.RESETTING,
    (_S.RESERVED, _E.FAULT): _S.ERROR,
    (_S.RESERVED, _E.WORKER_LOST): _S.ERROR,
    (_S.ERROR, _E.RESET): _S.RESETTING,
    (_S.RESETTING, _E.RESET_OK): _S.IDLE,
    (_S.RESETTING, _E.RESET_FAIL): _S.ERROR,
    (_S.RESETTING, _E.WORKER_LOST): _S.ERROR,
}


def next_state(state: BoardState, event: Event) -> BoardState | None:
    """The state ``event`` leads to from ``state``, or None if it is not allowed."""
    return TRANSITIONS.get((state, event))


def transitions_json() -> str:
    """The table as ``{"state": {"event": "next"}}``, the form the Lua scripts read."""
    table: dict[str, dict[str, str]] = {}
    for (state, event), target in TRANSITIONS.items():
        table.setdefault(state.value, {})[event.value] = target.value
    return json.dumps(table, separators=(",", ":"))
