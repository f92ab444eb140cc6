"""The audit trail: one record per mutating call, refused ones included, in a capped
Redis Stream (``fpgalab:audit``, ``XADD ... MAXLEN ~``).

A record says who called (the caller's name, never the key, and the client's address),
what (method, path and the route's name), which board and job, the status answered and,
for a refusal, its error code. When is the entry's id: the Redis server's clock, in
milliseconds, the one clock every API replica shares. Admins read it through
``GET /audit``. Calls with unknown keys past their address's limit are counted instead
(``service.ratelimit``): one record with a ``count`` stands for many.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from redis.exceptions import OutOfMemoryError

from fpgalab.service import keys

#: Entries read per round trip while filtering (newest first).
_BATCH = 500


@dataclass(frozen=True)
class AuditRecord:
    """One mutating call as the audit trail keeps it ('' where not known)."""

    caller: str
    method: str
    path: str
    action: str
    fpga_id: str
    job_id: str
    status: int
    error: str
    client: str = ""

    def fields(self) -> dict[str, str]:
        return {name: str(value) for name, value in asdict(self).items()}

    def flat(self) -> list[str]:
        """``field value ...``, as a script's XADD takes them."""
        return [part for item in self.fields().items() for part in item]


class AuditLog:
    """Writes and reads the audit stream of one Redis client."""

    def __init__(
        self, redis: Any, max_entries: int, flush: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._redis = redis
        self.max_entries = max_entries
        self._flush = flush  # writes pending counts of refused calls, before a read

    async def record(self, record: AuditRecord) -> None:
        await self._redis.xadd(
            keys.AUDIT, record.fields(), maxlen=self.max_entries, approximate=True
        )

    async def read(
        self,
        limit: int,
        fpga_id: int | None = None,
        caller: str | None = None,
        before: str | None = None,
    ) -> list[tuple[str, dict[str, str]]]:
        """Up to ``limit`` (entry id, fields), newest first, older than ``before`` if
        given, of one board and/or one caller if given."""
        if before is not None and before.strip("-0") == "":
            return []  # nothing is older than the first possible id, 0-0
        if self._flush is not None:
            with contextlib.suppress(OutOfMemoryError):  # a full Redis can still be read
                await self._flush()
        wanted: dict[str, str] = {}
        if fpga_id is not None:
            wanted["fpga_id"] = str(fpga_id)
        if caller is not None:
            wanted["caller"] = caller
        found: list[tuple[str, dict[str, str]]] = []
        start = f"({before}" if before else "+"
        while len(found) < limit:
            count = limit - len(found) if not wanted else _BATCH
            batch = await self._redis.xrevrange(keys.AUDIT, start, "-", count=count)
            for entry_id, fields in batch:
                if all(fields.get(k) == v for k, v in wanted.items()):
                    found.append((entry_id, fields))
                    if len(found) == limit:
                        break
            if len(batch) < count:
                break  # the stream's oldest entry was read
            start = f"({batch[-1][0]}"
        return found
