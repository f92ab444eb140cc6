"""The service's settings: one pydantic-settings class, environment prefix ``FPGALAB_``."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fpgalab.backends import DEFAULT_BUILD_TIMEOUT, lab_data_dir

#: The most words one run job may carry: the ceiling the API's request schema publishes
#: (``RunRequest``). ``max_transfer_words`` may lower it, never raise it.
MAX_TRANSFER_WORDS = 65536
#: The most transactions one run job's ``ops`` may list: the schema's ceiling
#: (``RunOpsRequest``). ``max_ops_per_run`` may lower it, never raise it.
MAX_OPS_PER_RUN = 4096
#: The most signals a traced run may name (``RunRequest.signals``).
MAX_TRACE_SIGNALS = 64


def proxy_networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """``FPGALAB_TRUSTED_PROXIES`` as networks (a bare address is a network of one)."""
    try:
        return tuple(ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise ValueError(f"trusted_proxies: {exc}") from None


#: The scheme of a ``FPGALAB_REDIS_URL`` that names Redis Sentinel (``SentinelURL``).
SENTINEL_SCHEME = "redis+sentinel"
#: A sentinel's port when its URL names none.
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """``redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/service[/db]``: the
    sentinels to ask (port 26379 unless given; an IPv6 address in brackets), the name they
    monitor the primary under, its database (0 unless given), and the user and password
    of the data nodes (primary and replicas) if the URL has them. The sentinels are asked
    without a password."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelURL | None:
        """The URL's parts; None for a URL of another scheme (``redis://``, ``unix://``:
        redis-py's own); ValueError, naming what is wrong, for a malformed one."""
        parts = urlsplit(url)
        if parts.scheme != SENTINEL_SCHEME:
            return None
        form = f"expected {SENTINEL_SCHEME}://[user@]host[:port][,host[:port]...]/service[/db]"
        if parts.query or parts.fragment:
            raise ValueError(f"a {SENTINEL_SCHEME} URL takes no query or fragment; {form}")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        sentinels = tuple(_host_port(h.strip(), form) for h in hosts.split(","))
        path = parts.path.strip("/").split("/")
        if not path[0] or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError(f"{parts.path or 'no path'}: {form}")
        return cls(
            sentinels,
            unquote(path[0]),
            int(path[1]) if len(path) == 2 else 0,
            unquote(user) or None,
            unquote(password) or None,
        )


def _host_port(text: str, form: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: {form}")
        port = rest[1:]
    else:
        host, _, port = text.partition(":")
    if not host or (port and not port.isdigit()) or not 0 < int(port or SENTINEL_PORT) < 65536:
        raise ValueError(f"{text or 'an empty sentinel address'!r}: {form}")
    return host, int(port or SENTINEL_PORT)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FPGALAB_", extra="ignore")

    #: Redis to share; None means ``fpgalab serve`` starts a private one. A
    #: ``redis+sentinel://`` URL names Redis Sentinel (``SentinelURL``).
    redis_url: str | None = None
    #: A file holding the shared Redis's password (``requirepass``, or that of the ACL
    #: user named in the URL), so that it is in no URL, environment or command line.
    #: Behind Sentinel: the data nodes' password; the sentinels are asked without one.
    redis_password_file: Path | None = None
    #: Where the private Redis and the backends keep their data; mode 0700.
    data_dir: Path = Field(default_factory=lab_data_dir)

    #: ``name=key[:admin]`` entries, comma-separated. Empty (and no file): open lab.
    #: Left out of the settings' repr, so that logging the settings never shows a key.
    api_keys: str = Field(default="", repr=False)
    #: A file of the same entries, one per line; ``#`` starts a comment.
    api_keys_file: Path | None = None

    #: Seconds a new session lasts, and what a renew adds by default.
    session_ttl: int = Field(default=1800, gt=0)
    #: Hard limit on a session's whole life, renewals included (seconds).
    session_max_lifetime: int = Field(default=8 * 3600, gt=0)
    #: Seconds a finished job (record, logs, result) is kept.
    job_retention: int = Field(default=7 * 24 * 3600, gt=0)
    #: Seconds a stored Idempotency-Key answer is replayed.
    idempotency_ttl: int = Field(default=24 * 3600, gt=0)

    #: Largest design upload (bytes).
    max_upload_bytes: int = Field(default=1024 * 1024, gt=0)
    #: Largest Wishbone transfer one run job may carry (32-bit words); at most
    #: ``MAX_TRANSFER_WORDS``, the ceiling of the published request schema.
    max_transfer_words: int = Field(default=MAX_TRANSFER_WORDS, gt=0)
    #: Most transactions one run job's ``ops`` may list (their words together are held to
    #: ``max_transfer_words``); at most ``MAX_OPS_PER_RUN``, the schema's ceiling.
    max_ops_per_run: int = Field(default=MAX_OPS_PER_RUN, gt=0)
    #: Largest waveform a traced run keeps (bytes of VCD); a bigger capture is refused
    #: with an error in the run's result, its data still returned.
    max_waveform_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    #: Most log lines kept per job (older ones are trimmed).
    max_log_lines: int = Field(default=100_000, gt=0)
    #: Most log bytes kept per job: past them lines are dropped but for the last few, and
    #: the log says it was cut (a line can be long: the line count alone bounds nothing).
    max_log_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    #: Largest request body of a JSON route (bytes); a bigger one is refused unread.
    max_body_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    #: Most jobs waiting in one board's queue (run jobs, in practice).
    max_queued_per_board: int = Field(default=100, gt=0)
    #: Most jobs one caller may have waiting over all boards.
    max_queued_per_caller: int = Field(default=200, gt=0)
    #: Most boards one caller (not an admin) may hold at once: its open sessions.
    max_boards_per_caller: int = Field(default=4, gt=0)
    #: Pool jobs one pool (a platform and tags) holds waiting; past it a submit is 429.
    max_pool_waiting: int = Field(default=1000, gt=0)
    #: Bytes one caller (not an admin) may store (designs, run requests, logs, results)
    #: per ``storage_budget_window``; past it its new jobs are refused. 0: no budget.
    storage_budget_bytes: int = Field(default=128 * 1024 * 1024, ge=0)
    #: The rolling window of the storage budget (seconds).
    storage_budget_window: int = Field(default=24 * 3600, gt=0)

    #: Mutating calls (POST, DELETE) a caller may make per second, sustained; 0: no limit.
    rate_limit: float = Field(default=10.0, ge=0)
    #: Mutating calls a caller may make at once after a quiet spell (the bucket's size).
    rate_limit_burst: int = Field(default=50, gt=0)
    #: Runs a caller may queue per second on a board its session holds (reserved), per
    #: board, sustained; they cost no other caller, so they draw from this bucket instead
    #: of the caller's shared one. 0: no limit.
    own_board_rate_limit: float = Field(default=100.0, ge=0)
    #: Such runs a caller may queue at once on one of its boards (the bucket's size).
    own_board_rate_limit_burst: int = Field(default=500, gt=0)
    #: Audit records kept (the Redis Stream is trimmed to about this many).
    audit_max_entries: int = Field(default=100_000, gt=0)
    #: Board and job events kept for ``GET /events`` to replay (the Redis Stream is
    #: trimmed to about this many); a client resuming from an older one is told of the gap.
    event_log_max_entries: int = Field(default=50_000, gt=0)
    #: Events one ``GET /events`` client may have waiting to be sent; a client that falls
    #: this far behind is told where it stands (``lagged``) and disconnected.
    event_client_buffer: int = Field(default=1000, gt=0)
    #: Secret that signs the dashboard's login cookie (``POST /login``); empty: one is
    #: derived from the lab's API keys, so a changed key ends the logins made with it.
    login_secret: str = Field(default="", repr=False)
    #: Seconds a login cookie is valid.
    login_ttl: int = Field(default=12 * 3600, gt=0)
    #: Mutating calls with an unknown (or no) API key one client address may make per
    #: second, sustained, each audited; past them: 429, counted. 0: no limit.
    unknown_key_rate_limit: float = Field(default=0.1, ge=0)
    #: Such calls an address may make at once (the bucket's size).
    unknown_key_burst: int = Field(default=10, gt=0)
    #: Seconds over which an address's refused unknown-key calls become one audit record.
    unknown_key_window: float = Field(default=60.0, gt=0)
    #: Addresses or networks (comma-separated) of reverse proxies whose X-Forwarded-For
    #: names the client; empty: the client is the socket's peer, the header is ignored.
    trusted_proxies: str = ""

    #: ``maxmemory`` of the private Redis ``fpgalab serve`` starts (Redis units: 512mb,
    #: 2gb), with ``maxmemory-policy noeviction``: at the limit writes are refused, never
    #: lab state evicted. 0: no limit.
    redis_maxmemory: str = Field(default="2gb", pattern=r"^(?i:[0-9]+(k|kb|m|mb|g|gb)?)$")
    #: Fraction of Redis's maxmemory past which ``GET /health`` carries a warning.
    redis_memory_warning: float = Field(default=0.8, gt=0, le=1)
    #: Seconds one Redis command may take before it is abandoned: a stalled Redis is then
    #: a prompt ``503 redis_unavailable``, as a dead one is. A worker's blocking queue
    #: read gets its block time on top.
    redis_timeout: float = Field(default=2.0, gt=0)
    #: Most connections to Redis one process (an API replica, a worker) opens; a command
    #: that finds them all busy waits for one, within ``redis_timeout``. A request waiting
    #: for its job (``?wait=``) holds none: one subscription per API process serves all.
    redis_max_connections: int = Field(default=64, ge=8)
    #: Replicas that must hold a job before the API answers its ``202`` (Redis ``WAIT``,
    #: for half ``redis_timeout`` at most): a failover then loses no accepted job. Past
    #: that wait the answer is ``503 redis_unavailable``, the job queued on the primary.
    #: 0: answer once the primary has it (replication is asynchronous).
    redis_wait_replicas: int = Field(default=0, ge=0)

    #: Backend that workers drive: a registered name or ``module:Class``.
    backend: str = "sim"
    #: The lab file naming the boards of the ``hardware`` backend (docs/lab.md).
    lab_file: Path | None = None
    #: Tags of simulated boards (a lab file gives real boards theirs), for pools:
    #: ``0-3=dsp,big;4=slow`` (ids as ``--boards`` takes them, ``=``, comma-joined tags).
    board_tags: str = ""
    #: Restricted pools: tags only named callers may use, ``secure=alice,bob;prod=ci``
    #: (admins may use every tag). A board with such a tag takes no other caller's job:
    #: not from a pool, not named (``403 tag_restricted``).
    restricted_tags: str = ""
    #: Wall-clock limit of one build (elaboration + compile), seconds.
    build_timeout: float = Field(default=DEFAULT_BUILD_TIMEOUT, gt=0)
    #: Builds at once on a lab host (its workers sharing a data folder); 0: as many as
    #: fit in three quarters of its memory, given each build step's memory bound.
    build_slots: int = Field(default=0, ge=0)
    #: How builds and simulators are confined: ``bwrap`` (bubblewrap), or ``none`` only
    #: where nobody untrusted submits designs (docs/operations.md, Sandbox).
    sandbox: Literal["bwrap", "none"] = "bwrap"
    #: The uid build steps and simulators run as when the worker runs as root (not 0).
    sandbox_uid: int = Field(default=65534, gt=0)
    #: Seconds a worker's heartbeat lives; a worker silent this long is dead.
    worker_heartbeat_ttl: float = Field(default=15.0, gt=0)
    #: Seconds a stopping worker lets its running jobs finish before abandoning them.
    worker_stop_grace: float = Field(default=30.0, ge=0)
    #: Seconds between health checks of an idle board.
    health_interval: float = Field(default=60.0, gt=0)
    #: Seconds between housekeeping passes (session expiry, lost jobs).
    housekeeping_interval: float = Field(default=1.0, gt=0)

    #: ``GET /metrics`` without an API key (a Prometheus that scrapes without one). Off:
    #: it needs a key, as every read does (X-API-Key, or ``Authorization: Bearer KEY``).
    #: Either way it shows no key and no caller's name (docs/operations.md, "Metrics").
    metrics_public: bool = False
    #: The port of the worker's own metrics (its process, ``fpgalab worker``); 0: none.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    #: The address the worker's metrics listen on.
    worker_metrics_host: str = "127.0.0.1"
    host: str = "127.0.0.1"
    port: int = 8000
    #: Largest request line and headers together (bytes); a longer head is answered 431.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    #: Seconds a client has to send a request's line and headers, from connecting or from
    #: the previous answer; a connection still sending them then is answered 408, closed.
    header_timeout: float = Field(default=10.0, gt=0)
    #: Seconds a stopping API lets open requests finish before it ends them: event and
    #: log streams (which never end by themselves) and waits (``?wait=``); their clients
    #: resume (``Last-Event-ID``) or ask again, from this replica or another.
    shutdown_grace: float = Field(default=5.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is not None:
            SentinelURL.parse(url)  # a malformed Sentinel URL stops the start here
        return url

    @field_validator("redis_password_file")
    @classmethod
    def _one_password(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        # redis-py lets a URL's password win over any other: two would be a silent choice
        url = info.data.get("redis_url")
        if path is not None and url and urlsplit(url).password:
            raise ValueError("the Redis URL has a password too: give it in one place only")
        return path

    @field_validator("max_transfer_words")
    @classmethod
    def _within_the_schema(cls, value: int) -> int:
        # the request schema (and /openapi.json) caps a run at MAX_TRANSFER_WORDS: a
        # larger setting would promise what the schema refuses
        if value > MAX_TRANSFER_WORDS:
            raise ValueError(
                f"{value} is over {MAX_TRANSFER_WORDS:,}, the most words a run job may carry "
                "(the API's published limit); this setting may only lower it"
            )
        return value

    @field_validator("max_ops_per_run")
    @classmethod
    def _ops_within_the_schema(cls, value: int) -> int:
        if value > MAX_OPS_PER_RUN:
            raise ValueError(
                f"{value} is over {MAX_OPS_PER_RUN:,}, the most transactions a run job may "
                "list (the API's published limit); this setting may only lower it"
            )
        return value

    @field_validator("restricted_tags")
    @classmethod
    def _restricted(cls, value: str) -> str:
        restricted_tags(value)  # a typo stops the start here
        return value

    def denied_tags(self, caller: str, admin: bool) -> list[str]:
        """The restricted tags ``caller`` may not use (none for an admin), sorted."""
        if admin:
            return []
        rules = restricted_tags(self.restricted_tags)
        return sorted(tag for tag, callers in rules.items() if caller not in callers)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        proxy_networks(value)  # a typo stops the start here, not every request
        return value

    def redis_password(self) -> str | None:
        """The password in ``redis_password_file`` (alone on its one line), if there is one."""
        if self.redis_password_file is None:
            return None
        lines = self.redis_password_file.read_text().splitlines()
        if len(lines) != 1 or not lines[0]:
            raise ValueError(
                f"{self.redis_password_file}: expected the Redis password alone on one line"
            )
        return lines[0]


def restricted_tags(text: str) -> dict[str, frozenset[str]]:
    """``secure=alice,bob;prod=ci`` as tag -> the callers who may use it; ValueError
    naming what is wrong."""
    from fpgalab.backends import name_problem

    rules: dict[str, frozenset[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        tag, sep, names = part.partition("=")
        tag = tag.strip()
        callers = frozenset(n.strip() for n in names.split(",") if n.strip())
        if not sep or not callers:
            raise ValueError(f"{part!r}: expected tag=caller,caller (e.g. secure=alice,bob)")
        if problem := name_problem(tag):
            raise ValueError(f"{part!r}: a tag {problem}")
        rules[tag] = rules.get(tag, frozenset()) | callers
    return rules
