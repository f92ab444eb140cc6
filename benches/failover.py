"""What waiting for a replica costs: a job accepted once one replica has it
(``FPGALAB_REDIS_WAIT_REPLICAS=1``) beside one accepted once the primary has it (0, the
default), measured in the same run.

    python benches/failover.py [--seconds 5] [--calls 2000]      (or: nox -s bench)

Starts a redis-server primary and a replica of it (free loopback ports, a temporary
folder, AOF on as in ``fpgalab serve``), a worker for the ten boards on benches/api.py's
``InstantBackend``, and two lab API processes (one uvicorn worker each, an open lab
without rate or queue limits) on the primary: one that waits for the replica, one that
does not. Then:

1. ``POST /fpga/{id}/run`` on a board reserved for the bench, one keep-alive connection
   to each API process, one request at a time (latency, not throughput), the two
   processes taking turns call by call for ``--seconds``, so that a slow spell of a
   shared machine weighs on both alike; p50/p99 of each side and their ratio;
2. the same call at the store, in this process (``Store.run``: the script, and with the
   wait the ``WAIT`` after it), ``--calls`` times with each setting, taking turns: the
   part of the cost that is Redis's.

Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (REPO, HERE):  # run as a script from a checkout
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import api  # noqa: E402
from api import HOST, HttpConnection, percentile, wait_http  # noqa: E402

from fpgalab.service.procs import child_dies_with_parent  # noqa: E402

#: The run each call queues (a one-word write), as JSON.
RUN = json.dumps({"op": 1, "address": 256, "data": [0xDEADBEEF]})
#: The board the HTTP rows run on, and the one the store rows run on.
HTTP_BOARD, STORE_BOARD = 0, 1


class Children(api.Processes):
    """``api.Processes`` whose children run this file (or redis-server)."""

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.run(name, sys.executable, __file__, *args)

    def run(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        out = (self.logdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=child_dies_with_parent,
            cwd=REPO,
        )  # fmt: skip
        out.close()
        self.procs.append((name, proc))
        return proc


def role_lab(args: argparse.Namespace) -> None:
    from fpgalab.service.app import create_app
    from fpgalab.service.settings import Settings

    settings = Settings(
        redis_url=args.redis_url, api_keys="", api_keys_file=None, rate_limit=0,
        own_board_rate_limit=0, max_queued_per_board=10**9, max_queued_per_caller=10**9,
        redis_wait_replicas=args.wait,
    )  # fmt: skip
    api.serve(create_app(settings), args.port)


def start_redis(procs: Children, folder: Path, name: str, port: int) -> None:
    """A redis-server on ``port`` (AOF on, as ``fpgalab serve``'s), answering PING."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    (folder / name).mkdir()
    procs.run(name, exe, "--port", str(port), "--bind", HOST, "--dir", str(folder / name),
              "--appendonly", "yes", "--save", "", "--repl-diskless-sync-delay", "0")  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        procs.check()
        try:
            with redis.Redis(HOST, port, socket_timeout=1) as r:
                r.ping()
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: redis-server did not answer on {port}") from None
            time.sleep(0.05)


def replicate(replica: int, primary: int) -> None:
    import redis

    with redis.Redis(HOST, replica, decode_responses=True) as r:
        r.replicaof(HOST, primary)
        deadline = time.monotonic() + 10
        while r.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise SystemExit("the replica did not sync within 10 s")
            time.sleep(0.05)


# -- the measurements -------------------------------------------------------------------


async def http_rows(ports: dict[str, int], args: argparse.Namespace) -> dict[str, list[float]]:
    """Latencies (s) of ``POST /fpga/{HTTP_BOARD}/run`` on each API process, one call at
    a time, the two taking turns call by call."""
    conns = {name: HttpConnection(port) for name, port in ports.items()}
    latencies: dict[str, list[float]] = {name: [] for name in conns}
    for conn in conns.values():
        await conn.open()
    try:
        start = time.perf_counter()
        while time.perf_counter() < start + args.warmup + args.seconds:
            for name, conn in conns.items():
                t0 = time.perf_counter()
                status, body = await conn.request(
                    "POST", f"/fpga/{HTTP_BOARD}/run", body=RUN.encode(),
                    content_type="application/json",
                )  # fmt: skip
                if status != 202:
                    raise SystemExit(f"POST /fpga/{HTTP_BOARD}/run ({name}): {status} {body!r}")
                if t0 >= start + args.warmup:
                    latencies[name].append(time.perf_counter() - t0)
    finally:
        for conn in conns.values():
            await conn.close()
    return latencies


async def store_rows(redis_url: str, calls: int) -> dict[str, list[float]]:
    """Latencies (s) of ``Store.run`` on ``STORE_BOARD`` with each setting, one call at a
    time, the two taking turns, after a tenth as many unmeasured."""
    from fpgalab.service.settings import Settings
    from fpgalab.service.store import Actor, Store

    stores = {
        name: Store.from_url(redis_url, Settings(
            redis_url=redis_url, redis_wait_replicas=wait, max_queued_per_board=10**9,
            max_queued_per_caller=10**9,
        ))
        for name, wait in (("plain", 0), ("wait", 1))
    }  # fmt: skip
    actor = Actor("anonymous", admin=True)  # the open lab's caller, who holds the board
    latencies: dict[str, list[float]] = {name: [] for name in stores}
    try:
        for k in range(calls + calls // 10):
            for name, store in stores.items():
                t0 = time.perf_counter()
                await store.run(STORE_BOARD, actor, RUN)
                if k >= calls // 10:
                    latencies[name].append(time.perf_counter() - t0)
    finally:
        for store in stores.values():
            await store.close()
    return latencies


async def reserve(port: int, boards: Sequence[int]) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=10) as c:
        for board in boards:
            r = await c.post(f"/fpga/{board}/submit", files={"file": ("d.py", api.DESIGN)})
            r.raise_for_status()
        deadline = time.monotonic() + 30
        while not all(b["state"] == "reserved" for b in (await c.get("/fpga")).json()
                      if b["fpga_id"] in boards):  # fmt: skip
            if time.monotonic() > deadline:
                raise SystemExit("the bench's boards were not reserved within 30 s")
            await asyncio.sleep(0.05)


def all_good(boards: list[dict[str, Any]]) -> bool:
    return all(b["health"] == "good" for b in boards)


def summary(latencies: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "p50_ms": 1000 * percentile(ordered, 50),
        "p99_ms": 1000 * percentile(ordered, 99),
    }


def line(name: str, wait: dict[str, float], plain: dict[str, float]) -> str:
    return (
        f"{name:<22} wait for 1 replica: p50 {wait['p50_ms']:6.3f} ms  p99 "
        f"{wait['p99_ms']:6.3f} ms | no wait: p50 {plain['p50_ms']:6.3f} ms  p99 "
        f"{plain['p99_ms']:6.3f} ms | ratio p50 {wait['p50_ms'] / plain['p50_ms']:.2f}  "
        f"p99 {wait['p99_ms'] / plain['p99_ms']:.2f}  ({wait['n']:,} and {plain['n']:,} calls)"
    )


def main(args: argparse.Namespace) -> int:
    from fpgalab.service.redisproc import free_port

    # a SIGTERM unwinds like Ctrl-C, so that every child is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    print(
        f"fpgalab failover bench: a primary and one replica on loopback, 1 uvicorn worker "
        f"per API, {args.warmup:g} s warm-up + {args.seconds:g} s of HTTP calls, "
        f"{args.calls} calls per setting at the store, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cpus",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="fpgalab-failover-") as tmp:
        procs = Children(Path(tmp))
        try:
            ports = {name: free_port() for name in ("primary", "replica", "plain", "wait")}
            for name in ("primary", "replica"):
                start_redis(procs, Path(tmp), name, ports[name])
            replicate(ports["replica"], ports["primary"])
            url = f"redis://{HOST}:{ports['primary']}/0"
            procs.start("worker", "_worker", "--redis-url", url)
            for name, wait in (("plain", "0"), ("wait", "1")):
                procs.start(name, "_lab", "--port", str(ports[name]), "--redis-url", url,
                            "--wait", wait)  # fmt: skip
            for name in ("plain", "wait"):
                wait_http(procs, ports[name], "/fpga", ready=all_good)
            asyncio.run(reserve(ports["plain"], (HTTP_BOARD, STORE_BOARD)))
            http = asyncio.run(http_rows({k: ports[k] for k in ("plain", "wait")}, args))
            store = asyncio.run(store_rows(url, args.calls))
            procs.check()
        finally:
            procs.stop()
    print(line(f"POST /fpga/{HTTP_BOARD}/run", summary(http["wait"]), summary(http["plain"])))
    print(line("Store.run", summary(store["wait"]), summary(store["plain"])))
    print(f"{time.monotonic() - t0:.0f} s")
    return 0


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="main", choices=["main", "_lab", "_worker"])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds, HTTP")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument("--calls", type=int, default=2000, help="calls per setting at the store")
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--wait", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


ROLES: dict[str, Any] = {"_lab": role_lab, "_worker": api.role_worker}

if __name__ == "__main__":
    arguments = parse()
    if arguments.role in ROLES:
        ROLES[arguments.role](arguments)
    else:
        sys.exit(main(arguments))
