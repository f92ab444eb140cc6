"""Every Redis key the lab uses, in one place.

fpgalab:board:{id}            hash   state, health, session, current job, worker
fpgalab:board:{id}:queue      stream job ids, consumer group ``workers``
fpgalab:board:{id}:queued     set    ids of this board's queued jobs
fpgalab:board:{id}:owner      string worker id holding the board (TTL = heartbeat)
fpgalab:board:{id}:memory-map string csr.json of the SoC on the board now
fpgalab:job:{job_id}          hash   the job record (request, status, result)
fpgalab:job:{job_id}:log      stream log lines, field ``l``
fpgalab:job:{job_id}:design   string the uploaded design bytes
fpgalab:jobs:running          zset   job id -> start time, for lost-worker checks
fpgalab:sessions:expiry       zset   fpga id -> session expiry time
fpgalab:caller:{name}:queued  set    ids of the caller's queued jobs (per-caller limit)
fpgalab:ratelimit:{name}      hash   the caller's token bucket: tokens, at (TTL: refill time)
fpgalab:audit                 stream one entry per mutating call (capped, MAXLEN ~)
fpgalab:worker:{wid}          string alive marker (TTL = heartbeat)
fpgalab:idem:{caller}:{key}   string stored 202 answer of an idempotent request
fpgalab:events                pubsub board and job changes
"""

from __future__ import annotations

PREFIX = "fpgalab"
GROUP = "workers"

RUNNING = f"{PREFIX}:jobs:running"
SESSION_EXPIRY = f"{PREFIX}:sessions:expiry"
EVENTS = f"{PREFIX}:events"
AUDIT = f"{PREFIX}:audit"


def board(fpga_id: int) -> str:
    return f"{PREFIX}:board:{fpga_id}"


def queue(fpga_id: int) -> str:
    return f"{PREFIX}:board:{fpga_id}:queue"


def queued(fpga_id: int) -> str:
    return f"{PREFIX}:board:{fpga_id}:queued"


def owner(fpga_id: int) -> str:
    return f"{PREFIX}:board:{fpga_id}:owner"


def memory_map(fpga_id: int) -> str:
    return f"{PREFIX}:board:{fpga_id}:memory-map"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def log(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:log"


def design(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:design"


def worker(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def idempotency(caller: str, key: str) -> str:
    return f"{PREFIX}:idem:{caller}:{key}"


def caller_queued(name: str) -> str:
    return f"{PREFIX}:caller:{name}:queued"


def rate_limit(name: str) -> str:
    return f"{PREFIX}:ratelimit:{name}"
