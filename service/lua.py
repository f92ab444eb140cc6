"""The Lua scripts that change lab state atomically on the Redis server.

``scripts/lib.lua`` (with the board transition table from ``service.states``, the key
layout from ``service.keys`` and the event log's cap substituted in) and every
``scripts/NAME.lua`` that uses it are one Redis Function library, loaded once
(``FUNCTION LOAD``) and called by name (``FCALL``): the library is defined when it is
loaded, not again at every call as a prelude sent with each script would be. Its name
carries a hash of its text, so that labs of other versions (or settings) on the same
Redis each call their own. A server that lacks it (a restart without persistence) is
sent it again, as redis-py reloads a script the server forgot. The few scripts that need
no library (``STANDALONE``) stay plain scripts, run by SHA.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from fpgalab.service import keys
from fpgalab.service.errors import lab_error
from fpgalab.service.measures import DURATION_BUCKETS
from fpgalab.service.states import transitions_json

#: Scripts whose reply is a plain Redis reply, not the ``{"ok"}/{"err"}`` JSON.
RAW_REPLIES = frozenset({"claim", "boards", "ratelimit", "pool_job"})
#: Scripts that touch only the keys they are given: no library needed (plain scripts).
STANDALONE = frozenset({"claim", "ratelimit"})
#: Functions that only read: Redis runs them even when it is full (``maxmemory``), as it
#: runs a read (a function that may write is refused before it starts, then).
READ_ONLY = frozenset({"boards", "pool_job"})

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

_FOLDER = Path(__file__).parent / "scripts"


def lua_literal(value: Any) -> str:
    """``value`` (JSON-like: dicts, lists, strings, numbers) as a Lua constructor: the
    library's tables are written out, not decoded, since a library being loaded has no
    ``cjson``."""
    if isinstance(value, dict):
        pairs = (f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, str) and value.isascii() and value.isprintable():
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"no Lua literal for {value!r}")
    return repr(value)


def _prelude(event_log_max: int) -> str:
    lib = (_FOLDER / "lib.lua").read_text()
    lib = lib.replace("@TRANSITIONS@", lua_literal(json.loads(transitions_json())))
    layout = keys.lua_layout()
    lib = lib.replace("@LAYOUT@", lua_literal(layout))
    parts = {kind: t.split("{id}", 1) for kind, t in layout.items() if "{id}" in t}
    lib = lib.replace("@KEY_PARTS@", lua_literal(parts))
    lib = lib.replace("@BUCKETS@", lua_literal(list(DURATION_BUCKETS)))
    return lib.replace("@EVENTLOG_MAX@", str(int(event_log_max)))


@cache
def source(name: str, event_log_max: int = DEFAULT_EVENT_LOG_MAX) -> str:
    """Script ``name`` as one ``EVAL``-able text: the library's prelude, then its body."""
    body = (_FOLDER / f"{name}.lua").read_text()
    if name in STANDALONE:
        return body
    return _prelude(event_log_max) + "\n" + body


@cache
def library(event_log_max: int = DEFAULT_EVENT_LOG_MAX) -> tuple[str, str]:
    """(the library's name, its ``FUNCTION LOAD`` text): lib.lua, then each script's body
    as a function of (KEYS, ARGV), registered as ``<library>_<script>``. Each call starts
    with no board changes pending, no hash fields remembered and no time read: the
    library's state outlives a call (and a call that failed half-way may have left some)."""
    parts = [_prelude(event_log_max), "local SCRIPTS = {}"]
    for name in NAMES:
        if name not in STANDALONE:
            body = (_FOLDER / f"{name}.lua").read_text()
            parts.append(f"SCRIPTS['{name}'] = function(KEYS, ARGV)\n{body}\nend")
    parts.append(
        "local function entry(body)\n"
        "  return function(keys, args)\n"
        "    board_changes, board_order, cached, clock = {}, {}, {}, nil\n"
        "    return body(keys, args)\n"
        "  end\n"
        "end"
    )
    text = "\n".join(parts)
    lib_name = "fpgalab_" + hashlib.sha1(text.encode()).hexdigest()[:16]
    for name in NAMES:
        if name not in STANDALONE:
            flags = "{'no-writes'}" if name in READ_ONLY else "{}"
            text += (
                f"\nredis.register_function{{function_name='{lib_name}_{name}', "
                f"callback=entry(SCRIPTS['{name}']), flags={flags}}}"
            )
    return lib_name, f"#!lua name={lib_name}\n{text}\n"


def missing(reply: object) -> bool:
    """Whether ``reply`` (an error) says the server lacks a script or the library."""
    if isinstance(reply, NoScriptError):
        return True
    return isinstance(reply, ResponseError) and str(reply).startswith("Function not found")


class Scripts:
    """The lab's scripts on one Redis client, called by name."""

    def __init__(self, redis: Redis, event_log_max: int = DEFAULT_EVENT_LOG_MAX) -> None:
        self._redis = redis
        self._library, self._library_text = library(event_log_max)
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source(name)) for name in STANDALONE
        }
        self._loading = asyncio.Lock()
        self._loads = 0  # times the library was sent (see ``load``)

    def function(self, name: str) -> str:
        """The name script ``name`` has in Redis (``FCALL``'s)."""
        return f"{self._library}_{name}"

    async def call(self, name: str, *args: Any, keys: tuple[str, ...] = ()) -> Any:
        """Run script ``name``; its ``{"err": code}`` reply raises that LabError (with a
        ``Retry-After`` if the reply has a ``retry_after``)."""
        argv = [_arg(a) for a in args]
        if name in STANDALONE:
            raw = await self._scripts[name](keys=list(keys), args=argv)
            return self.reply(name, raw)
        loads = self._loads
        try:
            raw = await self._redis.fcall(self.function(name), len(keys), *keys, *argv)
        except ResponseError as exc:
            if not missing(exc):
                raise
            await self.load(name, loads)  # a server that lost its functions (a restart)
            raw = await self._redis.fcall(self.function(name), len(keys), *keys, *argv)
        return self.reply(name, raw)

    def queue(self, pipe: Pipeline, name: str, *args: Any, keys: tuple[str, ...] = ()) -> None:
        """Queue script ``name`` on ``pipe``, its answer read by ``reply``; a server that
        lacks it answers an error for which ``missing`` is true (``load`` it, then again)."""
        argv = (_arg(a) for a in args)
        if name in STANDALONE:
            pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *argv)
        else:
            pipe.fcall(self.function(name), len(keys), *keys, *argv)

    async def load(self, name: str, loads: int | None = None) -> None:
        """Send the server script ``name``: the library, for all but ``STANDALONE``; with
        ``loads`` (the count of loads when the caller's call failed), only if no other
        caller has sent it since: many calls that find it missing at once load it once."""
        if name in STANDALONE:
            script = self._scripts[name]
            await script.registered_client.script_load(script.script)
            return
        async with self._loading:
            if loads is None or loads == self._loads:
                await self._redis.function_load(self._library_text, replace=True)
                self._loads += 1

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
