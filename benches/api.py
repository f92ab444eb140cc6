"""API throughput and latency, beside a bare FastAPI endpoint served the same way.

    python benches/api.py [--seconds 4] [--concurrency 4]      (or: nox -s bench)

Starts its own ``redis-server`` (free port, temporary folder, AOF on as in
``fpgalab serve``) and, each in its own process:

- the fpgalab app (``create_app``) under one uvicorn worker on a loopback socket,
- a worker for all ten boards driving ``InstantBackend`` (defined here: every
  build, program, transaction and reset returns at once),
- a bare FastAPI app with one JSON endpoint (a list of 10 small dicts), served by
  uvicorn with the same options,
- the load generator: asyncio on keep-alive HTTP/1.1 connections, written
  directly on streams so that the client is cheaper than either server.

It measures requests/s and p50/p99 latency of ``GET /fpga``, ``GET /fpga/{id}``
and a full cycle (submit -> poll until reserved -> run (write) -> poll -> result ->
reset -> poll until idle), each printed beside the bare endpoint measured in the
same run, with the ratio.

Then the guard of mutating calls (rate limit + audit), which the open lab's callers
(admins) skip in part: two more API processes with an API key for a non-admin caller,
one rate-limited (a bucket too big to ever refuse, so every call pays for the check)
and one with ``FPGALAB_RATE_LIMIT=0``; ``POST /fpga/{id}/session/renew`` on a board
that caller holds, on each, side by side, and the ratio. Every process it starts is
stopped before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from fpgalab.backends import (  # noqa: E402
    Build,
    Design,
    HealthReport,
    LogFn,
    Op,
    Transaction,
    TransactResult,
)

HOST = "127.0.0.1"
#: The goals from the issue: GET /fpga at >= 60% of the bare endpoint, p50 <= 2 ms.
AIM_RATIO = 0.60
AIM_P50_MS = 2.0
DESIGN = b"# bench design\nDesign = None\n"
#: The non-admin caller of the guard rows.
BENCH_KEY = "bench-user-key"
BOUNDARY = "fpgalabbenchboundary"


# -- the backend: instant ----------------------------------------------------------------


class InstantBackend:
    """A lab where nothing takes time: builds, programming and resets return at once,
    and each board is a word memory."""

    name = "instant"

    def __init__(self) -> None:
        self.memory: dict[int, dict[int, int]] = {}

    def build(self, design: Design, log: LogFn) -> Build:
        log(f"instant: built {design.filename}")
        return Build(key=design.sha256)

    def program(self, board: int, build: Build, log: LogFn) -> None:
        self.memory[board] = {}
        log(f"instant: board {board} programmed")

    def transact(self, board: int, txn: Transaction) -> TransactResult:
        mem = self.memory.setdefault(board, {})
        if txn.op is Op.WRITE:
            for i, word in enumerate(txn.data):
                mem[txn.address + 4 * i] = word
            return TransactResult(ok=True)
        words = [mem.get(txn.address + 4 * i, 0) for i in range(txn.length)]
        return TransactResult(ok=True, data=words)

    def transact_many(self, board: int, txns: Sequence[Transaction]) -> list[TransactResult]:
        return [self.transact(board, txn) for txn in txns]

    def reset(self, board: int, log: LogFn) -> None:
        self.memory.pop(board, None)
        log(f"instant: board {board} reset")

    def health(self, board: int) -> HealthReport:
        return HealthReport(ok=True, detail="instant")

    def memory_map(self, board: int) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        pass


# -- the served processes -------------------------------------------------------------------


def bare_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()
    items = [{"id": i, "name": f"item-{i}", "ok": True} for i in range(10)]

    @app.get("/items")
    async def list_items() -> list[dict[str, Any]]:
        return items

    return app


def serve(app: Any, port: int) -> None:
    """One uvicorn worker, as ``fpgalab api`` runs it (``service.server``: the h11 protocol
    with bounded request heads; no access log)."""
    import uvicorn

    from fpgalab.service import server
    from fpgalab.service.settings import Settings

    settings = Settings(host=HOST, port=port)
    uvicorn.Server(server.config(app, settings, log_level="warning", access_log=False)).run()


def role_lab(args: argparse.Namespace) -> None:
    from fpgalab.service.app import create_app
    from fpgalab.service.settings import Settings

    keys = f"user={BENCH_KEY},ops=bench-admin-key:admin" if args.keyed else ""
    settings = Settings(
        redis_url=args.redis_url, api_keys=keys, api_keys_file=None,
        rate_limit=args.rate_limit, rate_limit_burst=1_000_000_000,
    )  # fmt: skip
    serve(create_app(settings), args.port)


def role_bare(args: argparse.Namespace) -> None:
    serve(bare_app(), args.port)


def role_worker(args: argparse.Namespace) -> None:
    from fpgalab.service.settings import Settings
    from fpgalab.service.states import BOARD_IDS

    serve_boards(Settings(redis_url=args.redis_url, worker_stop_grace=2), list(BOARD_IDS))


def serve_boards(
    settings: Any,
    boards: Sequence[int],
    inventory: dict[int, tuple[str, tuple[str, ...]]] | None = None,
    blocking: float = 0.0,
) -> None:
    """A worker for ``boards`` on ``InstantBackend`` until SIGTERM or SIGINT (a bench's
    worker role)."""
    from fpgalab.service.store import Store
    from fpgalab.service.worker import Worker

    async def main() -> None:
        store = Store.from_url(settings.redis_url, settings, blocking=blocking)
        worker = Worker(store, InstantBackend(), boards, inventory=inventory)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        try:
            await worker.run()
        finally:
            await store.close()

    asyncio.run(main())


# -- the load generator ---------------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: a request, then its whole response."""

    def __init__(self, port: int, headers: str = "") -> None:
        self.port = port
        self.headers = headers  # extra header lines, each ending in CRLF
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = ""
    ) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n{self.headers}"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        if body or method in ("POST", "PUT"):
            head += f"Content-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length, chunked = 0, False
        while (line := await self.reader.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            return status, await self.reader.readexactly(length) if length else b""
        chunks = []
        while size := int((await self.reader.readline()).split(b";")[0], 16):
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readline()
        await self.reader.readline()
        return status, b"".join(chunks)


class Recorder:
    """Latencies of requests that finished inside the measured window, which ends
    at its time limit or when ``max_requests`` have been sent, whichever is first."""

    def __init__(self, start: float, end: float, max_requests: int) -> None:
        self.start, self.end = start, end
        self.left = max_requests
        self.latencies: list[float] = []
        self.cycles: list[float] = []
        self.errors: list[str] = []

    def measuring(self, t: float) -> bool:
        return self.start <= t < self.end

    def go_on(self) -> bool:
        now = time.perf_counter()
        if self.left <= 0 and now < self.end:
            self.end = max(now, self.start + 1e-3)  # the cap ends the window early
        return now < self.end and self.left > 0

    @property
    def seconds(self) -> float:
        return self.end - self.start


async def timed(
    conn: HttpConnection, rec: Recorder, method: str, path: str, **kw: Any
) -> tuple[int, bytes]:
    t0 = time.perf_counter()
    rec.left -= 1
    status, body = await conn.request(method, path, **kw)
    t1 = time.perf_counter()
    if rec.measuring(t0) and t1 < rec.end:
        rec.latencies.append(t1 - t0)
    return status, body


async def get_loop(
    conn: HttpConnection, rec: Recorder, paths: Sequence[str], offset: int, method: str = "GET"
) -> None:
    i = offset
    while rec.go_on():
        status, body = await timed(conn, rec, method, paths[i % len(paths)])
        if status != 200:
            rec.errors.append(f"{method} {paths[i % len(paths)]}: {status} {body[:200]!r}")
            return
        i += 1


def multipart(filename: str, content: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


async def cycle_loop(conn: HttpConnection, rec: Recorder, board: int, poll: float) -> None:
    """submit, poll until reserved, run (write), poll, result, reset, poll until idle."""
    upload = multipart("design.py", DESIGN)
    run = json.dumps({"op": 1, "address": 256, "data": [0xDEADBEEF, board]}).encode()

    async def expect(status: int, method: str, path: str, **kw: Any) -> dict[str, Any]:
        got, body = await timed(conn, rec, method, path, **kw)
        if got != status:
            raise RuntimeError(f"{method} {path}: {got} {body[:300]!r}")
        return json.loads(body) if body else {}

    async def until(path: str, field: str, want: str, bad: tuple[str, ...]) -> None:
        while True:
            value = (await expect(200, "GET", path))[field]
            if value == want:
                return
            if value in bad:
                raise RuntimeError(f"GET {path}: {field} is {value}")
            await asyncio.sleep(poll)

    base = f"/fpga/{board}"
    while rec.go_on():
        t0 = time.perf_counter()
        try:
            await expect(202, "POST", f"{base}/submit", body=upload,
                         content_type=f"multipart/form-data; boundary={BOUNDARY}")  # fmt: skip
            await until(base, "state", "reserved", ("error", "idle"))
            job = (await expect(202, "POST", f"{base}/run", body=run,
                                content_type="application/json"))["job_id"]  # fmt: skip
            await until(f"{base}/jobs/{job}", "status", "complete", ("failed", "cancelled"))
            result = await expect(200, "GET", f"{base}/jobs/{job}/result")
            if not result.get("ok"):
                raise RuntimeError(f"run result: {result}")
            await expect(202, "POST", f"{base}/reset")
            await until(base, "state", "idle", ("error",))
        except RuntimeError as exc:
            rec.errors.append(str(exc))
            return
        t1 = time.perf_counter()
        if rec.measuring(t0) and t1 < rec.end:
            rec.cycles.append(t1 - t0)


async def load(args: argparse.Namespace) -> dict[str, Any]:
    headers = f"X-API-Key: {BENCH_KEY}\r\n" if args.keyed else ""
    conns = [HttpConnection(args.port, headers) for _ in range(args.concurrency)]
    for c in conns:
        await c.open()
    now = time.perf_counter()
    rec = Recorder(now + args.warmup, now + args.warmup + args.seconds, args.max_requests)
    try:
        if args.mode == "cycle":
            tasks = [cycle_loop(c, rec, board, args.poll) for board, c in enumerate(conns)]
        elif args.mode == "post":  # one board (path) per connection
            pairs = zip(args.paths, conns, strict=True)
            tasks = [get_loop(c, rec, [path], 0, "POST") for path, c in pairs]
        else:
            tasks = [get_loop(c, rec, args.paths, i) for i, c in enumerate(conns)]
        await asyncio.wait_for(asyncio.gather(*tasks), args.warmup + args.seconds + 30)
    finally:
        for c in conns:
            await c.close()
    lat = sorted(rec.latencies)
    cyc = sorted(rec.cycles)
    return {
        "requests": len(lat),
        "rps": len(lat) / rec.seconds,
        "p50_ms": 1000 * percentile(lat, 50),
        "p99_ms": 1000 * percentile(lat, 99),
        "cycles": len(cyc),
        "cps": len(cyc) / rec.seconds,
        "cycle_p50_ms": 1000 * percentile(cyc, 50),
        "cycle_p99_ms": 1000 * percentile(cyc, 99),
        "errors": rec.errors[:5],
    }


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(p) - 1]


def role_load(args: argparse.Namespace) -> None:
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(load(args))
    else:
        result = uvloop.run(load(args))
    print(json.dumps(result))


# -- the orchestration ----------------------------------------------------------------------


class Processes:
    """Children started by the bench, each stopped (TERM, then KILL) on the way out; each
    runs ``script`` (this file by default: another bench passes its own) with a role."""

    def __init__(self, logdir: Path, script: str = __file__) -> None:
        self.logdir = logdir
        self.script = script
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        from fpgalab.service.procs import child_dies_with_parent

        log = (self.logdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, self.script, *args], stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=child_dies_with_parent, cwd=REPO,
        )  # fmt: skip
        log.close()
        self.procs.append((name, proc))
        return proc

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited ({proc.returncode}):\n{self.log(name)}")

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_load(
    port: int, args: argparse.Namespace, mode: str, *paths: str, keyed: bool = False
) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "_load", "--port", str(port), "--mode", mode,
        *(["--keyed"] if keyed else []),
        "--seconds", str(args.seconds), "--warmup", str(args.warmup),
        "--concurrency", str(args.concurrency), "--poll", str(args.poll),
        "--max-requests", str(args.max_requests),
        *(f"--path={p}" for p in paths),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, check=False, timeout=args.seconds + 90, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed:\n{out.stderr.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"]:
        raise SystemExit(f"{mode} {' '.join(paths)}: errors: {result['errors']}")
    if not result["requests"]:
        raise SystemExit(f"{mode} {' '.join(paths)}: no request inside the measured window "
                         "(--max-requests used up in the warm-up?)")  # fmt: skip
    return result


def wait_http(
    procs: Processes, port: int, path: str, ready: Any = None, timeout: float = 30
) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            r = httpx.get(f"http://{HOST}:{port}{path}", timeout=2)
            if r.status_code == 200 and (ready is None or ready(r.json())):
                return
        time.sleep(0.1)
    raise SystemExit(f"http://{HOST}:{port}{path} was not ready within {timeout} s")


def mean(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two measurements of the same thing, averaged."""
    return {k: (a[k] + b[k]) / 2 for k in ("rps", "p50_ms", "p99_ms")}


def line(
    name: str, lab: dict[str, Any], bare: dict[str, Any], what: str = "", against: str = "bare"
) -> str:
    ratio = lab["rps"] / bare["rps"]
    return (
        f"{name:<16} {what + ': ' if what else ''}{lab['rps']:>8,.0f} req/s  "
        f"p50 {lab['p50_ms']:5.2f} ms  p99 {lab['p99_ms']:5.2f} ms | {against}: "
        f"{bare['rps']:>8,.0f} req/s  p50 {bare['p50_ms']:5.2f} ms  "
        f"p99 {bare['p99_ms']:5.2f} ms | ratio {ratio:.2f}"
    )


def guard_rows(ports: dict[str, int], args: argparse.Namespace) -> tuple[dict[str, Any], ...]:
    """POST renew as a non-admin caller: (rate-limited, not), each the mean of two runs
    interleaved with the other's."""
    import httpx

    boards = list(range(args.concurrency))
    with httpx.Client(base_url=f"http://{HOST}:{ports['limited']}", timeout=10,
                      headers={"X-API-Key": BENCH_KEY}) as c:  # fmt: skip
        for board in boards:  # a session of the bench's caller on each board
            r = c.post(f"/fpga/{board}/submit", files={"file": ("design.py", DESIGN)})
            r.raise_for_status()
        deadline = time.monotonic() + 30
        while not all(c.get(f"/fpga/{b}").json()["state"] == "reserved" for b in boards):
            if time.monotonic() > deadline:
                raise SystemExit("guard rows: the boards were not reserved within 30 s")
            time.sleep(0.05)
    paths = [f"/fpga/{b}/session/renew" for b in boards]
    runs: dict[str, list[dict[str, Any]]] = {"limited": [], "unlimited": []}
    for name in ("unlimited", "limited", "limited", "unlimited"):
        runs[name].append(run_load(ports[name], args, "post", *paths, keyed=True))
    return mean(*runs["limited"]), mean(*runs["unlimited"])


@contextlib.contextmanager
def lab_processes(args: argparse.Namespace) -> Iterator[dict[str, int]]:
    """Redis, the lab API (open; and keyed: rate-limited, unlimited), its worker and the
    bare app; their ports by name."""
    from fpgalab.service.redisproc import PrivateRedis, free_port

    with tempfile.TemporaryDirectory(prefix="fpgalab-bench-") as tmp:
        redis = PrivateRedis(Path(tmp) / "redis")
        procs = Processes(Path(tmp))
        try:
            redis.start()
            ports = {name: free_port() for name in ("lab", "bare", "limited", "unlimited")}
            procs.start("worker", "_worker", "--redis-url", redis.url)
            procs.start("lab", "_lab", "--port", str(ports["lab"]), "--redis-url", redis.url)
            procs.start("bare", "_bare", "--port", str(ports["bare"]))
            for name, rate in (("limited", "1e9"), ("unlimited", "0")):
                procs.start(name, "_lab", "--port", str(ports[name]), "--redis-url", redis.url,
                            "--keyed", "--rate-limit", rate)  # fmt: skip
            wait_http(procs, ports["bare"], "/items")
            wait_http(
                procs, ports["lab"], "/fpga",
                ready=lambda boards: all(b["health"] == "good" for b in boards),
            )  # fmt: skip
            for name in ("limited", "unlimited"):
                wait_http(procs, ports[name], "/health")
            yield ports
            procs.check()
        finally:
            procs.stop()
            redis.stop()


def main(args: argparse.Namespace) -> int:
    # a SIGTERM unwinds like Ctrl-C, so that every child is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    print(
        f"fpgalab API bench: 1 uvicorn worker per app, {args.concurrency} keep-alive "
        f"connections, {args.warmup:g} s warm-up + {args.seconds:g} s per row, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus",
        flush=True,
    )
    rows = [
        ("GET /fpga", "get", ("/fpga",)),
        ("GET /fpga/{id}", "get", tuple(f"/fpga/{i}" for i in range(10))),
        ("cycle requests", "cycle", ()),
    ]
    results: dict[str, dict[str, Any]] = {}
    with lab_processes(args) as ports:
        # bare before and after every row: each row is compared with its neighbours,
        # so that a slow spell on a shared machine weighs on both sides alike
        bares = [run_load(ports["bare"], args, "get", "/items")]
        for name, mode, paths in rows:
            results[name] = run_load(ports["lab"], args, mode, *paths)
            bares.append(run_load(ports["bare"], args, "get", "/items"))
        guard = guard_rows(ports, args)
    for k, (name, _, _) in enumerate(rows):
        print(line(name, results[name], mean(bares[k], bares[k + 1])))
    cycle = results["cycle requests"]
    print(
        f"{'cycle':<16} {cycle['cps']:>8,.1f} cycles/s on {args.concurrency} boards, "
        f"cycle p50 {cycle['cycle_p50_ms']:.1f} ms  p99 {cycle['cycle_p99_ms']:.1f} ms  "
        f"(submit, poll, run, poll, result, reset, poll; polls every {1000 * args.poll:g} ms)"
    )
    limited, unlimited = guard
    print(line("POST renew", limited, unlimited, "rate limit + audit", "audit only"))
    low, high = min(b["rps"] for b in bares), max(b["rps"] for b in bares)
    print(f"bare measured {len(bares)} times: {low:,.0f} to {high:,.0f} req/s (run-to-run noise)")
    fpga = results["GET /fpga"]
    ratio = fpga["rps"] / mean(bares[0], bares[1])["rps"]
    ok = ratio >= AIM_RATIO and fpga["p50_ms"] <= AIM_P50_MS
    print(
        f"aim GET /fpga >= {AIM_RATIO:.0%} of bare and p50 <= {AIM_P50_MS:g} ms: "
        f"{'met' if ok else 'NOT met'} ({ratio:.0%}, p50 {fpga['p50_ms']:.2f} ms); "
        f"{time.monotonic() - t0:.0f} s"
    )
    return 0


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="main",
                        choices=["main", "_lab", "_bare", "_worker", "_load"])  # fmt: skip
    parser.add_argument("--path", dest="paths", action="append", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=4, help="connections (1-10)")
    parser.add_argument("--poll", type=float, default=0.002, help="cycle poll interval (s)")
    parser.add_argument(
        "--max-requests",
        type=int,
        default=200_000,
        help="cap on requests sent per row, warm-up included",
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="get", help=argparse.SUPPRESS)
    parser.add_argument("--keyed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rate-limit", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 10:
        parser.error("--concurrency: 1 to 10 (the cycle uses one board per connection)")
    return args


if __name__ == "__main__":
    arguments = parse()
    roles = {"_lab": role_lab, "_bare": role_bare, "_worker": role_worker, "_load": role_load}
    if arguments.role in roles:
        roles[arguments.role](arguments)
    else:
        sys.exit(main(arguments))
