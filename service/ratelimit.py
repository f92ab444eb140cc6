"""Rate limits of mutating calls: token buckets in Redis, one per caller name, and one
per client address for calls whose API key nobody knows.

The buckets live in Redis (``scripts/ratelimit.lua``, one atomic call), so the limits
hold across every API replica. A caller may make ``rate_limit_burst`` calls at once,
then ``rate_limit`` per second; a refused call costs the same single round trip, the
script writing its audit record itself.

That bucket guards what callers share (builds, queues, the API). A run on a board the
caller's session holds (reserved) costs nobody else, and the board's queue cap bounds
it: such runs take from the caller's bucket for that board instead
(``own_board_rate_limit_burst``, then ``own_board_rate_limit`` per second), which the
same script call picks, reading the board's owner and state.

Calls with an unknown key are limited per address (``unknown_key_burst``, then
``unknown_key_rate_limit`` per second), and past the limit they are counted rather than
recorded: the first refused call of a window (``unknown_key_window``) is recorded, the
rest become one record with a ``count`` once the window has closed, so that made-up keys
cannot flood the audit trail and push its records out.
"""

from __future__ import annotations

from fpgalab.service import keys
from fpgalab.service.audit import AuditRecord
from fpgalab.service.lua import Scripts
from fpgalab.service.settings import Settings

#: The keys every call of the script takes, before the bucket's own (the last: the lab's
#: counters, where refusals are counted for ``GET /metrics``).
_KEYS = (keys.AUDIT, keys.UNKNOWN_REFUSED, keys.UNKNOWN_DUE, keys.METRICS)


class RateLimiter:
    def __init__(self, scripts: Scripts, settings: Settings) -> None:
        self._scripts = scripts
        self.rate = settings.rate_limit
        self.burst = settings.rate_limit_burst
        self.own_rate = settings.own_board_rate_limit
        self.own_burst = settings.own_board_rate_limit_burst
        self.unknown_rate = settings.unknown_key_rate_limit
        self.unknown_burst = settings.unknown_key_burst
        self.unknown_window = settings.unknown_key_window
        self.audit_max_entries = settings.audit_max_entries

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def limits(self, action: str) -> bool:
        """Whether a caller's call of route ``action`` is limited at all."""
        return self.enabled or (action == "run" and self.own_rate > 0)

    @property
    def unknown_enabled(self) -> bool:
        return self.unknown_rate > 0

    async def take(
        self, caller: str, refused: AuditRecord, run_on: int | None = None
    ) -> tuple[int, bool]:
        """(0, _) if ``caller`` may go on, else (the whole seconds to wait, whether it was
        the bucket of runs on its own board); ``refused`` is then in the audit trail.
        ``run_on``: the call is a run on that board, which takes from the caller's bucket
        for the board if its session holds the board."""
        own = () if run_on is None else (keys.board(run_on), keys.own_board_limit(caller, run_on))
        wait = await self._scripts.call(
            "ratelimit", self.rate, self.burst, self.audit_max_entries, "record", 0, "",
            caller, self.own_rate, self.own_burst, *refused.flat(),
            keys=(*_KEYS, keys.rate_limit(caller), *own),
        )  # fmt: skip
        return abs(int(wait)), int(wait) < 0

    async def take_unknown(self, address: str, refused: AuditRecord) -> int:
        """0 if a call with an unknown key from ``address`` may go on (to its 401), else
        the whole seconds to wait; ``refused`` is recorded if it is the first refusal of
        the address's window, else counted."""
        wait = await self._scripts.call(
            "ratelimit", self.unknown_rate, self.unknown_burst, self.audit_max_entries,
            "count", self.unknown_window, address, "", 0, 0, *refused.flat(),
            keys=(*_KEYS, keys.unknown_key_limit(address)),
        )  # fmt: skip
        return int(wait)

    async def flush_counts(self) -> None:
        """Write the counts of refused unknown-key calls whose window has closed."""
        await self._scripts.call(
            "ratelimit", 0, 0, self.audit_max_entries, "flush", 0, "", "", 0, 0, keys=_KEYS
        )
