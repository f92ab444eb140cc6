"""The ``fpgalab`` command: ``serve`` (the whole lab), ``api``, ``worker``, ``twin``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from pydantic import ValidationError

from fpgalab.service.datadir import private_dir
from fpgalab.service.procs import child_dies_with_parent
from fpgalab.service.settings import Settings
from fpgalab.service.states import MAX_BOARDS, NUM_BOARDS, SIM_PLATFORM

if TYPE_CHECKING:
    from fpgalab.service.store import Store

log = logging.getLogger("fpgalab")


def parse_boards(text: str) -> list[int]:
    """``"0-9"``, ``"3"`` or ``"0,2,5-7"`` as board ids, each checked to be below
    ``MAX_BOARDS``."""
    boards: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected ids like 0-9 or 0,2,5-7"
            ) from None
        if not 0 <= first <= last < MAX_BOARDS:
            raise argparse.ArgumentTypeError(f"{part!r}: board ids are 0-{MAX_BOARDS - 1}")
        boards.update(range(first, last + 1))
    return sorted(boards)


#: Connections a worker has beyond one per board (its heartbeat, housekeeping, finishes).
WORKER_SPARE_CONNECTIONS = 16


def parse_board_tags(text: str) -> dict[int, tuple[str, ...]]:
    """``"0-3=dsp,big;4=slow"`` as each board's tags (sorted); ValueError naming the
    part that is wrong."""
    from fpgalab.backends import name_problem

    tags: dict[int, set[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        ids, sep, names = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r}: expected board ids=tags, like 0-3=dsp,big")
        try:
            boards = parse_boards(ids)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None
        for name in (n.strip() for n in names.split(",")):
            if problem := name_problem(name):
                raise ValueError(f"{part!r}: a tag {problem}")
            for board in boards:
                tags.setdefault(board, set()).add(name)
    return {board: tuple(sorted(names)) for board, names in tags.items()}


def _inventory(settings: Settings, boards: list[int]) -> dict[int, tuple[str, tuple[str, ...]]]:
    """What the worker registers of each board: the lab file's platform and tags, or
    ``sim`` and ``FPGALAB_BOARD_TAGS``'s."""
    if settings.lab_file is not None:
        from fpgalab.hil.lab.labfile import LabFileError, load_lab

        try:
            lab = load_lab(settings.lab_file)
        except LabFileError as exc:
            log.error("%s", exc)
            raise SystemExit(2) from None
        return {b: (lab.platform, spec.tags if (spec := lab.boards.get(b)) else ()) for b in boards}
    try:
        tags = parse_board_tags(settings.board_tags)
    except ValueError as exc:
        log.error("FPGALAB_BOARD_TAGS (--tags): %s", exc)
        raise SystemExit(2) from None
    return {b: (SIM_PLATFORM, tags.get(b, ())) for b in boards}


def _settings(args: argparse.Namespace) -> Settings:
    """The settings of ``serve``, ``api`` or ``worker`` (flags over the environment), with
    the data folder made private to the lab's user before anything is written there."""
    overrides = {
        k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:  # a bad setting is a configuration error: status 2
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            log.error("FPGALAB_%s: %s", field.upper(), message)
        raise SystemExit(2) from None
    try:
        private_dir(settings.data_dir)
    except OSError as exc:
        raise SystemExit(f"fpgalab: the data folder {settings.data_dir}: {exc}") from None
    try:
        settings.redis_password()  # a password file that cannot be used stops us here
    except (OSError, ValueError) as exc:
        raise SystemExit(f"fpgalab: FPGALAB_REDIS_PASSWORD_FILE: {exc}") from None
    return settings


#: What ``serve`` keeps from its worker: the API keys, which a worker never needs.
_NOT_FOR_WORKERS = frozenset({"FPGALAB_API_KEYS", "FPGALAB_API_KEYS_FILE"})


def worker_env(redis_url: str) -> dict[str, str]:
    """The environment ``serve`` starts its worker with: its own, without the API keys
    (the worker handles what sandboxed code leaves behind), and the Redis URL, which may
    hold a password and so is kept off the command line that every local user can read."""
    drop = _NOT_FOR_WORKERS | {"FPGALAB_REDIS_URL"}
    # pydantic-settings reads variables whatever their case: drop them in any case
    env = {k: v for k, v in os.environ.items() if k.upper() not in drop}
    env["FPGALAB_REDIS_URL"] = redis_url
    return env


def backend_options(settings: Settings) -> dict[str, object]:
    """What every backend is made with: a data folder of its own, the build limits, and
    the lab file if there is one."""
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", settings.backend)
    options: dict[str, object] = {
        "data_dir": settings.data_dir / folder, "build_timeout": settings.build_timeout,
        "build_slots": settings.build_slots, "sandbox": settings.sandbox,
        "sandbox_uid": settings.sandbox_uid,
    }  # fmt: skip
    if settings.lab_file is not None:
        options["lab_file"] = settings.lab_file
    return options


def _boards(args: argparse.Namespace, settings: Settings) -> list[int]:
    """``--boards`` if given; else the lab file's boards; else all of them."""
    if args.boards is not None:
        return list(args.boards)
    if settings.lab_file is not None:
        from fpgalab.hil.lab.labfile import LabFileError, load_lab

        try:
            return load_lab(settings.lab_file).board_ids
        except LabFileError as exc:  # a configuration error, as a bad backend: status 2
            log.error("%s", exc)
            raise SystemExit(2) from None
    return list(range(NUM_BOARDS))


def cmd_worker(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from fpgalab.backends import UnknownBackend, get_backend
    from fpgalab.backends.base import BackendUnavailable
    from fpgalab.service.store import Store
    from fpgalab.service.worker import BLOCK_MS, BoardTaken, Worker

    settings = _settings(args)
    if settings.api_keys.strip():
        log.warning(
            "FPGALAB_API_KEYS is set, but a worker needs no API keys: unset it. While it is "
            "set, every key is readable in /proc/%d/environ by this worker's user",
            os.getpid(),
        )
    boards = _boards(args, settings)
    inventory = _inventory(settings, boards)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        try:  # this process's process_* and python_* metrics, in a thread of their own
            start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
        except OSError as exc:
            log.error("metrics port %d: %s", settings.worker_metrics_port, exc)
            return 2
        log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host,
                 settings.worker_metrics_port)  # fmt: skip
    try:
        backend = get_backend(settings.backend, **backend_options(settings))
    except (UnknownBackend, BackendUnavailable) as exc:
        log.error("%s", exc)
        return 2
    except TypeError as exc:  # e.g. --lab given to a backend that has no lab file
        log.error("backend %s cannot take these options: %s", settings.backend, exc)
        return 2

    async def main() -> int:
        # its queue reads block on purpose: their deadline is the block time and more
        url = settings.redis_url or "redis://127.0.0.1:6379/0"
        # each board's loop holds a connection in its blocking queue read: a worker of
        # many boards needs that many and more, whatever the API's bound is
        wanted = max(settings.redis_max_connections, len(boards) + WORKER_SPARE_CONNECTIONS)
        own = settings.model_copy(update={"redis_max_connections": wanted})
        store = Store.from_url(url, own, blocking=BLOCK_MS / 1000)
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        worker: Worker | None = None

        def stop() -> None:
            stopping.set()
            if worker is not None:
                worker.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        # A worker restarted after a crash finds its boards leased to its dead self until
        # those leases lapse: it waits that long before it gives up on them.
        patience = settings.worker_heartbeat_ttl + 1
        deadline = loop.time() + patience
        warned = False
        # A worker that cannot reach Redis as it starts (a lab host up before Redis, or
        # Redis restarting) waits for it: it must not leave its boards without a worker.
        redis_warned_at: float | None = None
        try:
            while True:
                worker = Worker(store, backend, boards, inventory=inventory)
                try:
                    await worker.run()
                    return 0
                except BoardTaken as exc:
                    if stopping.is_set() or loop.time() >= deadline:
                        log.error("%s", exc)
                        return 3
                    if not warned:
                        log.warning("%s; waiting up to %.0f s for them to lapse", exc, patience)
                        warned = True
                except RedisError as exc:
                    if stopping.is_set():
                        return 1
                    if redis_warned_at is None or loop.time() - redis_warned_at > 10:
                        log.warning("Redis does not answer (%s); the worker waits for it", exc)
                        redis_warned_at = loop.time()
                    # leases it may have taken before the outage are its own, under the
                    # id of this attempt: give them time to lapse once Redis is back
                    deadline = loop.time() + patience
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 0.5)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    finally:
        backend.close()


#: How often ``serve`` looks whether its boards are ready, until they are (seconds).
_READY_POLL = 0.2


def _url(settings: Settings) -> str:
    host = settings.host
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


async def _announce_ready(store: Store, boards: Sequence[int], url: str) -> None:
    """Log one line once every board of ``boards`` is ready (``board_ready``): the whole
    lab is up, and a job submitted now starts at once."""
    from redis.exceptions import RedisError

    while True:
        with contextlib.suppress(RedisError, OSError):
            if len(await store.ready_boards(boards)) == len(boards):
                n = len(boards)
                log.info("lab ready: %d board%s on %s", n, "s" * (n != 1), url)
                return
        await asyncio.sleep(_READY_POLL)


def _uvicorn(settings: Settings, announce: Sequence[int] = ()) -> int:
    """Serve the API until a signal; with ``announce`` (``serve``'s boards), log once
    when those boards are ready."""
    import uvicorn

    from fpgalab.service import server
    from fpgalab.service.app import create_app

    app = create_app(settings)

    class Server(uvicorn.Server):
        announcer: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once it has stopped, which would kill
            # `fpgalab serve` before it stops its worker and Redis: stop cleanly instead
            self._captured_signals.clear()

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if announce and self.started:  # the API answers; the store is open
                store = app.state.store
                self.announcer = asyncio.create_task(
                    _announce_ready(store, announce, _url(settings))
                )

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self.announcer is not None:
                self.announcer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.announcer
            await super().shutdown(sockets)

    config = server.config(app, settings, log_level="info", access_log=False)
    running = Server(config)
    running.run()
    return 0 if running.started else 1


def cmd_api(args: argparse.Namespace) -> int:
    return _uvicorn(_settings(args))


def cmd_serve(args: argparse.Namespace) -> int:
    from fpgalab.backends import UnknownBackend, check_backend
    from fpgalab.service.redisproc import PrivateRedis, RedisStartError

    settings = _settings(args)
    try:
        check_backend(settings.backend)  # before anything is started
    except UnknownBackend as exc:
        log.error("%s", exc)
        return 2
    served = _boards(args, settings)  # a bad lab file stops us here, before Redis starts
    _inventory(settings, served)  # and bad tags
    redis: PrivateRedis | None = None
    if settings.redis_url is None:
        redis = PrivateRedis(settings.data_dir / "redis", settings.redis_maxmemory)
        try:
            redis.start()
        except RedisStartError as exc:
            log.error("%s", exc)
            return 2
        settings = settings.model_copy(update={"redis_url": redis.url})
        log.info("private redis-server on %s, data in %s", redis.url, redis.data_dir)
    assert settings.redis_url is not None
    boards = ",".join(map(str, served))
    lab = ["--lab", str(settings.lab_file)] if settings.lab_file is not None else []
    port = settings.worker_metrics_port
    metrics = ["--metrics-port", str(port)] if port else []
    tags = ["--tags", settings.board_tags] if settings.board_tags else []
    worker = subprocess.Popen(
        [sys.executable, "-m", "fpgalab.service.cli", "worker", "--boards", boards,
         "--backend", settings.backend, *lab, *metrics, *tags],
        env=worker_env(settings.redis_url), preexec_fn=child_dies_with_parent,
    )  # fmt: skip
    worker_failed = threading.Event()

    def watch_worker() -> None:
        if worker.wait() != 0:
            worker_failed.set()
            log.error("the worker exited with code %s; stopping the lab", worker.returncode)
            signal.raise_signal(signal.SIGTERM)

    threading.Thread(target=watch_worker, daemon=True).start()
    try:
        code = _uvicorn(settings, announce=served)
    finally:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if redis is not None:
            redis.stop()
    return 1 if worker_failed.is_set() else code


def cmd_twin(args: argparse.Namespace) -> int:
    """Run twins until SIGTERM/SIGINT; their lab file is written once they listen."""
    from fpgalab.sim.twins.twin import TwinLab

    settings = Settings()
    data_dir = private_dir(args.data_dir or settings.data_dir)
    lab = TwinLab(args.boards, data_dir, sandbox=settings.sandbox,
                  sandbox_uid=settings.sandbox_uid)  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        for info in lab.start():
            log.info("twin %d: uart %s, xvc port %d", info.index, info.uart_url, info.xvc_port)
        args.lab_file.write_text(lab.lab_toml())
        log.info("lab file for these twins: %s (fpgalab worker --backend hardware --lab %s)",
                 args.lab_file, args.lab_file)  # fmt: skip
        stop.wait()
    finally:
        lab.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpgalab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--redis-url", help="shared Redis (FPGALAB_REDIS_URL)")
        p.add_argument("--backend", help="sim (default), hardware, or module:Class")

    def lab(p: argparse.ArgumentParser) -> None:
        p.add_argument("--lab", dest="lab_file", type=Path,
                       help="the lab file of the hardware backend (FPGALAB_LAB_FILE)")  # fmt: skip
        p.add_argument("--boards", type=parse_boards,
                       help="e.g. 0-9 or 0,2 (default: the lab file's boards, or 0-9)")  # fmt: skip
        p.add_argument("--tags", dest="board_tags", metavar="SPEC",
                       help="simulated boards' tags, e.g. '0-3=dsp,big;4=slow' "
                       "(FPGALAB_BOARD_TAGS; a lab file gives real boards theirs)")  # fmt: skip

    def http(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port to listen on (default 8000)")

    serve = sub.add_parser("serve", help="API + worker (+ a private Redis): the whole lab")
    common(serve)
    http(serve)
    lab(serve)
    serve.add_argument("--worker-metrics-port", type=int, metavar="PORT",
                       help="its worker's metrics port (FPGALAB_WORKER_METRICS_PORT)")  # fmt: skip
    serve.set_defaults(func=cmd_serve)

    api = sub.add_parser("api", help="the REST API alone (one replica)")
    common(api)
    http(api)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="a worker for some boards")
    common(worker)
    lab(worker)
    worker.add_argument("--metrics-port", dest="worker_metrics_port", type=int, metavar="PORT",
                        help="serve this worker's process metrics on this port, at /metrics "
                        "(FPGALAB_WORKER_METRICS_PORT; default: none)")  # fmt: skip
    worker.add_argument("--metrics-host", dest="worker_metrics_host", metavar="ADDRESS",
                        help="the address they listen on (default 127.0.0.1)")  # fmt: skip
    worker.set_defaults(func=cmd_worker)

    twin = sub.add_parser("twin", help="simulated boards that the hardware backend drives")
    twin.add_argument("--boards", type=parse_boards, default=list(range(NUM_BOARDS)))
    twin.add_argument("--lab-file", type=Path, default=Path("twins.toml"),
                      help="where to write the lab file that points at the twins")  # fmt: skip
    twin.add_argument("--data-dir", type=Path, help="the lab's data folder (FPGALAB_DATA_DIR)")
    twin.set_defaults(func=cmd_twin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
