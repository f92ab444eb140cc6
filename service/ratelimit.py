"""Per-caller rate limit of mutating calls: a token bucket per caller name in Redis.

The bucket lives in Redis (``scripts/ratelimit.lua``, one atomic call), so the limit
holds across every API replica. A caller may make ``rate_limit_burst`` calls at once,
then ``rate_limit`` per second; a refused call costs the same single round trip, the
script writing its audit record itself.
"""

from __future__ import annotations

from service import keys
from service.audit import AuditRecord
from service.scripts import Scripts
from service.settings import Settings


class RateLimiter:
    def __init__(self, scripts: Scripts, settings: Settings) -> None:
        self._scripts = scripts
        self.rate = settings.rate_limit
        self.burst = settings.rate_limit_burst
        self.audit_max_entries = settings.audit_max_entries

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    async def take(self, caller: str, refused: AuditRecord) -> int:
        """0 if ``caller`` may go on, else the whole seconds to wait (``refused`` is
        then in the audit trail)."""
        wait = await self._scripts.call(
            "ratelimit", self.rate, self.burst, self.audit_max_entries, *refused.flat(),
            keys=(keys.rate_limit(caller), keys.AUDIT),
        )  # fmt: skip
        return int(wait)
