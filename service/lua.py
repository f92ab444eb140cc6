"""The Lua scripts that change lab state atomically on the Redis server.

Each ``scripts/NAME.lua`` is prepended with ``scripts/lib.lua`` (with the board
transition table from ``service.states``, the key layout
from ``service.keys`` and the event log's cap, substituted in) and registered once;
redis-py runs it by SHA and reloads it if the server forgot it (after a restart).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from fpgalab.service import keys
from fpgalab.service.errors import lab_error
from fpgalab.service.measures import DURATION_BUCKETS
from fpgalab.service.states import transitions_json

#: Scripts whose reply is a plain Redis reply, not the ``{"ok"}/{"err"}`` JSON.
RAW_REPLIES = frozenset({"claim", "boards", "ratelimit", "pool_job"})
#: Scripts that touch only the keys they are given: no prelude needed.
STANDALONE = frozenset({"claim", "ratelimit"})

NAMES = (
    "submit",
    "run",
    "reset",
    "cancel",
    "take",
    "finish",
    "lost",
    "renew",
    "health",
    "claim",
    "boards",
    "ratelimit",
    "append",
    "register",
    "pool_submit",
    "pool_job",
    "pool_cancel",
    "orphans",
)


#: Entries the event log keeps when no setting says (``event_log_max_entries``).
DEFAULT_EVENT_LOG_MAX = 50_000


@cache
def source(name: str, event_log_max: int = DEFAULT_EVENT_LOG_MAX) -> str:
    folder = Path(__file__).parent / "scripts"
    body = (folder / f"{name}.lua").read_text()
    if name in STANDALONE:
        return body
    lib = (folder / "lib.lua").read_text().replace("@TRANSITIONS@", transitions_json())
    lib = lib.replace("@LAYOUT@", json.dumps(keys.lua_layout()))
    lib = lib.replace("@BUCKETS@", json.dumps(DURATION_BUCKETS))
    lib = lib.replace("@EVENTLOG_MAX@", str(int(event_log_max)))
    return lib + "\n" + body


class Scripts:
    """The registered scripts of one Redis client, called by name."""

    def __init__(self, redis: Redis, event_log_max: int = DEFAULT_EVENT_LOG_MAX) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source(name, event_log_max)) for name in NAMES
        }

    async def call(self, name: str, *args: Any, keys: tuple[str, ...] = ()) -> Any:
        """Run script ``name``; its ``{"err": code}`` reply raises that LabError (with a
        ``Retry-After`` if the reply has a ``retry_after``)."""
        raw = await self._scripts[name](keys=list(keys), args=[_arg(a) for a in args])
        return self.reply(name, raw)

    def queue(self, pipe: Pipeline, name: str, *args: Any, keys: tuple[str, ...] = ()) -> None:
        """Queue script ``name`` on ``pipe`` by its SHA, its answer read by ``reply``; a
        server that lacks it answers ``NoScriptError`` (``load`` it, then again)."""
        pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *(_arg(a) for a in args))

    async def load(self, name: str) -> None:
        script = self._scripts[name]
        await script.registered_client.script_load(script.script)

    def reply(self, name: str, raw: Any) -> Any:
        """Script ``name``'s answer, as ``call`` returns it (or raises it)."""
        if name in RAW_REPLIES:
            return raw
        reply = json.loads(raw)
        if "err" in reply:
            raise lab_error(reply["err"], reply["message"], reply.get("retry_after"))
        return reply["ok"]


def _arg(value: Any) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (str, int, float)):
        return value
    return str(value)
