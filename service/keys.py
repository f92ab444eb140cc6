"""Every Redis key the lab uses, in one place.

fpgalab:inventory             hash   board id -> {"platform", "tags"} (JSON): the lab's boards,
                                     as the workers that serve them registered them
fpgalab:platform:{name}       set    ids of the boards of a platform (pools)
fpgalab:tag:{name}            set    ids of the boards with a tag (pools)
fpgalab:free                  set    ids of the registered boards idle and healthy (pools)
fpgalab:pools                 set    requirements (``platform|tag,tag``) with pool jobs waiting
fpgalab:pool:{requirement}    zset   its waiting jobs: member ``seq:job_id``, score priority
                                     band and fair-share round (lower first)
fpgalab:fair                  hash   the fair-share clock: ``served``, ``seq``, each caller's
                                     last round (``c:{name}``), the boards' ``turnaround``
fpgalab:board:{id}            hash   state, health, session, current job, worker
fpgalab:board:{id}:queue      stream job ids, consumer group ``workers``
fpgalab:board:{id}:queued     set    ids of this board's queued jobs
fpgalab:board:{id}:owner      string worker id holding the board (TTL = heartbeat)
fpgalab:board:{id}:memory-map string csr.json of the SoC on the board now
fpgalab:job:{job_id}          hash   the job record (request, status, result)
fpgalab:job:{job_id}:log      stream log lines, field ``l``; entry ``0-N`` is line N
fpgalab:job:{job_id}:design   string the uploaded design bytes
fpgalab:job:{job_id}:waveform string a traced run's waveform (VCD)
fpgalab:build:{key}:callers   set    callers who built (or were given) a build, so that a
                                     build cache hit is told only to them (TTL: retention)
fpgalab:jobs:running          zset   job id -> start time, for lost-worker checks
fpgalab:sessions:expiry       zset   fpga id -> session expiry time
fpgalab:caller:{name}:queued  set    ids of the caller's queued jobs (per-caller limit)
fpgalab:caller:{name}:stored  hash   bytes the caller stored, per slot of the budget window
fpgalab:caller:{name}:boards  set    ids of the boards whose session the caller holds
fpgalab:caller:{name}:waiting set    ids of the caller's pool jobs not placed yet
fpgalab:ratelimit:{name}      hash   the caller's token bucket: tokens, at (TTL: refill time)
fpgalab:ratelimit:{name}:board:{id}
                              hash   the caller's bucket for runs on board {id} while its
                                     session holds it
fpgalab:unknown:bucket:{addr} hash   an address's token bucket for unknown-key calls
fpgalab:unknown:refused       hash   address -> its refused unknown-key calls not yet audited
fpgalab:unknown:due           zset   address -> when its refused calls become one record
fpgalab:audit                 stream one entry per mutating call (capped, MAXLEN ~)
fpgalab:worker:{wid}          string alive marker (TTL = heartbeat)
fpgalab:idem:{caller}:{key}   string stored 202 answer of an idempotent request
fpgalab:metrics               hash   lab-wide counters and histograms for GET /metrics
                                     (service.measures)
fpgalab:events                pubsub board and job changes
fpgalab:logs                  pubsub ids of jobs whose log grew (one message per append)
fpgalab:eventlog              stream the same changes, kept (capped, MAXLEN ~): GET /events
"""

from __future__ import annotations

PREFIX = "fpgalab"
GROUP = "workers"

#: The keys of one board, job or caller, as templates: the Python below and the Lua
#: scripts (``service.lua`` hands them this table, as it does the state table) make
#: their keys from these, so the two can never disagree.
TEMPLATES = {
    "board": f"{PREFIX}:board:{{id}}",
    "queue": f"{PREFIX}:board:{{id}}:queue",
    "queued": f"{PREFIX}:board:{{id}}:queued",
    "owner": f"{PREFIX}:board:{{id}}:owner",
    "memory_map": f"{PREFIX}:board:{{id}}:memory-map",
    "job": f"{PREFIX}:job:{{id}}",
    "log": f"{PREFIX}:job:{{id}}:log",
    "design": f"{PREFIX}:job:{{id}}:design",
    "waveform": f"{PREFIX}:job:{{id}}:waveform",
    "caller_queued": f"{PREFIX}:caller:{{id}}:queued",
    "caller_stored": f"{PREFIX}:caller:{{id}}:stored",
    "caller_boards": f"{PREFIX}:caller:{{id}}:boards",
    "caller_waiting": f"{PREFIX}:caller:{{id}}:waiting",
    "pool": f"{PREFIX}:pool:{{id}}",
    "platform": f"{PREFIX}:platform:{{id}}",
    "tag": f"{PREFIX}:tag:{{id}}",
}
#: Keys of the whole lab (the Lua scripts get these too).
INVENTORY = f"{PREFIX}:inventory"
FREE = f"{PREFIX}:free"
POOLS = f"{PREFIX}:pools"
FAIR = f"{PREFIX}:fair"
RUNNING = f"{PREFIX}:jobs:running"
SESSION_EXPIRY = f"{PREFIX}:sessions:expiry"
EVENTS = f"{PREFIX}:events"
EVENT_LOG = f"{PREFIX}:eventlog"
AUDIT = f"{PREFIX}:audit"
#: Channel told a job's id each time lines are appended to its log (live logs).
LOG_NOTICES = f"{PREFIX}:logs"
UNKNOWN_REFUSED = f"{PREFIX}:unknown:refused"
UNKNOWN_DUE = f"{PREFIX}:unknown:due"
METRICS = f"{PREFIX}:metrics"
#: The secret that signs the dashboard's login cookies when no FPGALAB_LOGIN_SECRET is
#: set: made once at random, the same for every API replica.
LOGIN_SECRET = f"{PREFIX}:login-secret"


def lua_layout() -> dict[str, str]:
    """What the Lua scripts' prelude receives: the templates and the lab-wide keys."""
    return {
        **TEMPLATES,
        "running": RUNNING,
        "expiry": SESSION_EXPIRY,
        "events": EVENTS,
        "eventlog": EVENT_LOG,
        "metrics": METRICS,
        "inventory": INVENTORY,
        "free": FREE,
        "pools": POOLS,
        "fair": FAIR,
    }


def _key(kind: str, thing: object) -> str:
    return TEMPLATES[kind].replace("{id}", str(thing))


def board(fpga_id: int) -> str:
    return _key("board", fpga_id)


def queue(fpga_id: int) -> str:
    return _key("queue", fpga_id)


def queued(fpga_id: int) -> str:
    return _key("queued", fpga_id)


def owner(fpga_id: int) -> str:
    return _key("owner", fpga_id)


def memory_map(fpga_id: int) -> str:
    return _key("memory_map", fpga_id)


def job(job_id: str) -> str:
    return _key("job", job_id)


def log(job_id: str) -> str:
    return _key("log", job_id)


def waveform(job_id: str) -> str:
    return _key("waveform", job_id)


def design(job_id: str) -> str:
    return _key("design", job_id)


def worker(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def idempotency(caller: str, key: str) -> str:
    return f"{PREFIX}:idem:{caller}:{key}"


def caller_queued(name: str) -> str:
    return _key("caller_queued", name)


def build_callers(build_key: str) -> str:
    return f"{PREFIX}:build:{build_key}:callers"


def caller_stored(name: str) -> str:
    return _key("caller_stored", name)


def rate_limit(name: str) -> str:
    return f"{PREFIX}:ratelimit:{name}"


def own_board_limit(name: str, fpga_id: int) -> str:
    # a caller's name has no ':' (service.auth), so this never is another caller's bucket
    return f"{PREFIX}:ratelimit:{name}:board:{fpga_id}"


def unknown_key_limit(address: str) -> str:
    return f"{PREFIX}:unknown:bucket:{address}"
