"""A bounded soak of the simulated lab: many clients doing the full cycle on all ten
boards while faults are injected at random; prints what happened to every job.

    .venv/bin/python benches/soak.py [--minutes 10] [--baseline-minutes 1]
                                     [--clients 12] [--seed 1]
                                     [--fault-every 20] [--rss-growth-mib 64]
                                     [--faults simulator,simulator,worker,redis,api]

Starts its own ``redis-server`` (AOF on), ``fpgalab api`` and ``fpgalab worker``
(sim backend, boards 0-9), as ``benches/sim_lab.py`` does. Each client loops: pick a
board, submit a design (``accumulator.py`` or ``.v``), wait for the build, run writes
and reads that check the design computes (A + B), release. The first
``--baseline-minutes`` run without faults (the baseline); then, for ``--minutes``,
every ``--fault-every`` seconds (± 50 %) one fault, chosen at random:

- ``simulator``: SIGKILL one board's simulator (a board process dies mid-whatever);
- ``worker``: SIGKILL the worker, start a new one (it adopts the dead one's jobs);
- ``redis``: restart Redis (SIGTERM, AOF on) while jobs are queued and running;
- ``api``: SIGKILL the API process and start it again on the same port.

At the end the clients stop submitting, every job the lab accepted (a ``202``) is
followed to its end, and the report prints: jobs done, jobs failed by cause, jobs
**lost** (accepted but never finished, or gone: must be 0), p50/p99 job latency
(accepted -> finished) per type beside the baseline's (and their ratio), wrong
answers (must be 0), and the RSS of each process at start and end, checked against
``--rss-growth-mib`` (exit status 1 if any job is lost, any answer is wrong or any
process grew beyond the bound).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_lab import EXAMPLES, REPO, Api, Lab, rss_bytes

from fpgalab.sim.board import comm

FINAL = ("complete", "failed", "cancelled")
#: Seconds the clients get to end their cycles once the soak stops, and the jobs still
#: unfinished then get to end: a cold build takes ~10 s, a worker's lease wait 16 s.
DRAIN_SECONDS = 120.0
USER = 0x2000_0000
DESIGNS = {name: (EXAMPLES / name).read_bytes() for name in ("accumulator.py", "accumulator.v")}


@dataclass
class Job:
    board: int
    job_id: str
    type: str
    accepted: float
    finished: float | None = None
    status: str | None = None
    error: str | None = None


@dataclass
class Ledger:
    """Every job the lab accepted, and what became of it (thread-safe)."""

    jobs: dict[str, Job] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self, board: int, job_id: str, kind: str) -> None:
        with self.lock:
            self.jobs[job_id] = Job(board, job_id, kind, time.monotonic())

    def ended(self, record: dict[str, Any]) -> None:
        with self.lock:
            job = self.jobs.get(record["job_id"])
            if job is not None and job.status is None:
                job.status, job.error, job.finished = (
                    record["status"], record.get("error"), time.monotonic()
                )  # fmt: skip


class Client(threading.Thread):
    """One user: the full cycle, again and again, riding out the lab's faults."""

    def __init__(self, n: int, port: int, ledger: Ledger, stop: threading.Event, seed: int):
        super().__init__(name=f"client-{n}", daemon=True)
        self.port, self.ledger, self.stop_event = port, ledger, stop
        self.random = random.Random(seed)
        self.cycles = 0

    def api(self) -> Api:
        return Api(self.port)

    def call(self, api: Api, method: str, path: str, body: Any = None,
             raw: bytes | None = None, ctype: str = "") -> tuple[int, Any]:  # fmt: skip
        """One request, retried while the API or Redis is away (until stopped)."""
        payload = raw if raw is not None else (json.dumps(body).encode() if body else None)
        for _ in range(600):
            try:
                status, data = api.request(method, path, payload, ctype or "application/json")
            except (OSError, http.client.HTTPException) as exc:
                status, data = 0, repr(exc).encode()
            if status not in (0, 502, 503):
                return status, json.loads(data) if data else None
            time.sleep(0.1)
        raise RuntimeError(f"{method} {path}: the API stayed away for a minute: {status} {data!r}")

    def finish(self, api: Api, board: int, job_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status, record = self.call(api, "GET", f"/fpga/{board}/jobs/{job_id}")
            if status == 200 and record["status"] in FINAL:
                self.ledger.ended(record)
                return record  # type: ignore[no-any-return]
            if status == 404 or time.monotonic() > deadline:
                return {"job_id": job_id, "status": "lost" if status == 404 else "stuck"}
            time.sleep(0.05)

    def run(self) -> None:
        api = self.api()
        while not self.stop_event.is_set():
            board = self.random.randrange(10)
            name = self.random.choice(list(DESIGNS))
            boundary = "soakboundary"
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                ).encode()
                + DESIGNS[name]
                + f"\r\n--{boundary}--\r\n".encode()
            )
            ctype = f"multipart/form-data; boundary={boundary}"
            status, reply = self.call(api, "POST", f"/fpga/{board}/submit", raw=body, ctype=ctype)
            if status != 202:
                code = (reply or {}).get("detail", {}).get("error")
                self.ledger.refused[f"submit {status} {code}"] += 1
                time.sleep(0.2)
                continue
            self.ledger.accepted(board, reply["job_id"], "build_and_program")
            built = self.finish(api, board, reply["job_id"])
            if built["status"] == "complete":
                self.use(api, board)
            self.reset(api, board)
            self.cycles += 1

    def use(self, api: Api, board: int) -> None:
        for _ in range(self.random.randint(1, 5)):
            a, b = self.random.getrandbits(20), self.random.getrandbits(20)
            for body in ({"op": 1, "address": USER, "data": [a, b]},
                         {"op": 2, "address": USER, "length": 3}):  # fmt: skip
                status, reply = self.call(api, "POST", f"/fpga/{board}/run", body=body)
                if status != 202:
                    self.ledger.refused[f"run {status} {reply['detail']['error']}"] += 1
                    return
                self.ledger.accepted(board, reply["job_id"], "run")
                job = self.finish(api, board, reply["job_id"])
                if job["status"] != "complete":
                    return
                if body["op"] == 2:
                    _, result = self.call(api, "GET", f"/fpga/{board}/jobs/{job['job_id']}/result")
                    if result["data"] != [a, b, a + b]:
                        self.ledger.wrong.append(f"board {board}: {result} for A={a} B={b}")

    def reset(self, api: Api, board: int) -> None:
        """Release (or reset a board left in error), and wait for its reset job."""
        for path in ("session/release", "reset"):
            status, reply = self.call(api, "POST", f"/fpga/{board}/{path}")
            if status == 202:
                self.ledger.accepted(board, reply["job_id"], "reset")
                self.finish(api, board, reply["job_id"])
                return


# -- faults -------------------------------------------------------------------------------------


class Faults:
    """Injected from the main thread: processes started with a parent-death signal die
    with the *thread* that started them (prctl), so no other thread may restart them."""

    def __init__(
        self, lab: SoakLab, every: float, stop: threading.Event, seed: int, kinds: list[str]
    ) -> None:
        self.lab, self.every, self.stop_event, self.kinds = lab, every, stop, kinds
        self.random = random.Random(seed)
        self.done: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()  # the report's RSS reads must not race a restart

    def run(self, until: float) -> None:
        while True:
            pause = self.every * self.random.uniform(0.5, 1.5)
            if time.monotonic() + pause >= until:
                time.sleep(max(0.0, until - time.monotonic()))
                return
            time.sleep(pause)
            kind = self.random.choice(self.kinds)
            with self.lock:
                try:
                    injected = getattr(self, kind)()
                except Exception as exc:  # reported, and the soak goes on
                    print(f"  fault {kind} could not be injected: {exc!r}", flush=True)
                    continue
                if injected:
                    self.done[kind] += 1
                    print(f"  [{time.strftime('%H:%M:%S')}] fault: {kind}", flush=True)

    def simulator(self) -> bool:
        pids = self.lab.simulator_pids()
        if not pids:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.random.choice(pids), signal.SIGKILL)
        return True

    def worker(self) -> bool:
        old = self.lab.procs["worker"]
        running = set(self.lab.simulator_pids())
        old.kill()
        old.wait()
        for pid in self.lab.simulators | running:
            if comm(pid) == "lab_soc":  # a SIGKILLed worker cannot stop its simulators
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.lab.respawn("worker")
        return True

    def redis(self) -> bool:
        self.lab.redis.stop()
        time.sleep(self.random.uniform(0.5, 3.0))
        self.lab.redis.start()
        return True

    def api(self) -> bool:
        old = self.lab.procs["api"]
        old.kill()
        old.wait()
        time.sleep(self.random.uniform(0.2, 1.0))
        self.lab.respawn("api")
        return True


class SoakLab(Lab):
    """``Lab`` that can start its worker and API again, and tracks every simulator."""

    def start(self) -> None:
        super().start()
        self.args = {name: proc.args for name, proc in self.procs.items()}

    def respawn(self, name: str) -> None:
        from fpgalab.service.procs import child_dies_with_parent

        env = {k: v for k, v in os.environ.items() if not k.startswith("FPGALAB_")}
        env.update(FPGALAB_DATA_DIR=str(self.data), FPGALAB_API_KEYS="", PYTHONPATH=str(REPO))
        with (self.root / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                self.args[name], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                preexec_fn=child_dies_with_parent,
            )  # fmt: skip

    def simulator_pids(self) -> list[int]:
        if self.procs["worker"].poll() is not None:
            return []
        pids = super().simulator_pids()
        self.simulators.update(pids)
        return pids

    def rss(self) -> dict[str, int]:
        sizes = {name: rss_bytes(proc.pid) for name, proc in self.procs.items()}
        if self.redis is not None and self.redis.proc is not None:
            sizes["redis"] = rss_bytes(self.redis.proc.pid)
        sims = [rss_bytes(pid) for pid in self.simulator_pids()]
        sizes["simulators (each, max)"] = max(sims, default=0)
        return sizes


def classify(error: str | None) -> str:
    patterns = [
        (r"was lost while running", "worker lost (SIGKILL)"),
        (r"simulator (crashed|exited|stopped answering)|no simulator is running", "board crashed"),
        (r"unknown after a failure|is (error|queued|reserved), not", "board state"),
        (r"[Rr]edis", "redis"),
    ]
    for pattern, cause in patterns:
        if error and re.search(pattern, error):
            return cause
    return f"other: {(error or '')[:80]}"


def latencies(jobs: list[Job]) -> tuple[int, float, float]:
    """(n, p50, p99) of accepted -> finished, in seconds, of the jobs that finished."""
    spans = sorted(j.finished - j.accepted for j in jobs if j.finished is not None)
    if not spans:
        return 0, 0.0, 0.0
    return len(spans), statistics.median(spans), spans[min(len(spans) - 1, int(0.99 * len(spans)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0, help="with faults")
    parser.add_argument("--baseline-minutes", type=float, default=1.0, help="without faults")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds, on average")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--faults", default="simulator,simulator,worker,redis,api",
        help="the faults to draw from (a kind named twice is drawn twice as often); "
        "without worker and api, their RSS at the end is that of the processes at the start",
    )  # fmt: skip
    parser.add_argument("--rss-growth-mib", type=float, default=64.0)
    args = parser.parse_args()
    unknown = set(args.faults.split(",")) - {"simulator", "worker", "redis", "api"}
    if unknown:
        parser.error(f"--faults: unknown kinds {sorted(unknown)}")

    with tempfile.TemporaryDirectory(prefix="fpgalab-soak-") as tmp:
        lab = SoakLab(Path(tmp))
        lab.start()
        try:
            return soak(lab, args)
        finally:
            lab.stop()
            for pid in lab.simulators:
                if comm(pid) == "lab_soc":
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def soak(lab: SoakLab, args: argparse.Namespace) -> int:
    api = Api(lab.port)
    print("starting the lab (base SoC build, ten simulators)...", flush=True)
    lab.wait_healthy(api)
    api.reserve(0, "accumulator.py", DESIGNS["accumulator.py"])  # warm the build cache
    api.reserve(1, "accumulator.v", DESIGNS["accumulator.v"])
    api.release(0)
    api.release(1)
    rss_start = lab.rss()
    ledger, stop = Ledger(), threading.Event()
    clients = [Client(n, lab.port, ledger, stop, args.seed * 1000 + n) for n in range(args.clients)]
    faults = Faults(lab, args.fault_every, stop, args.seed, args.faults.split(","))
    started = time.monotonic()
    print(f"soak: {args.clients} clients; {args.baseline_minutes:g} min without faults, "
          f"then {args.minutes:g} min with a fault every ~{args.fault_every:g} s",
          flush=True)  # fmt: skip
    for client in clients:
        client.start()
    stop.wait(args.baseline_minutes * 60)
    faulty = time.monotonic()  # jobs accepted from here on meet the faults
    faults.run(until=faulty + args.minutes * 60)
    stop.set()
    drain = time.monotonic() + DRAIN_SECONDS  # clients finish the cycle they are in
    for client in clients:
        client.join(timeout=max(0.0, drain - time.monotonic()))
    took = time.monotonic() - started

    # Every accepted job to its end (the clients followed theirs; look again at all).
    follower = Client(-1, lab.port, ledger, threading.Event(), 0)
    lost = []
    deadline = time.monotonic() + DRAIN_SECONDS  # a job not finished by then is stuck: lost
    for job in list(ledger.jobs.values()):
        if job.status is None:
            left = max(0.0, deadline - time.monotonic())
            record = follower.finish(follower.api(), job.board, job.job_id, timeout=left)
            if record["status"] not in FINAL:
                lost.append(f"{job.type} {job.job_id} on board {job.board}: {record['status']}")
    with faults.lock:
        rss_end = lab.rss()

    jobs = list(ledger.jobs.values())
    by_status = collections.Counter(job.status for job in jobs)
    causes = collections.Counter(classify(job.error) for job in jobs if job.status == "failed")
    calm = [j for j in jobs if j.accepted < faulty]
    calm_failed = collections.Counter(classify(j.error) for j in calm if j.status == "failed")
    print(f"\nsoak of {took / 60:.1f} min: {sum(c.cycles for c in clients)} full cycles by "
          f"{args.clients} clients; faults injected: {dict(faults.done)}")  # fmt: skip
    print(f"jobs accepted {len(jobs)}: complete {by_status['complete']}, failed "
          f"{by_status['failed']}, cancelled {by_status['cancelled']}")  # fmt: skip
    for cause, n in causes.most_common():
        print(f"  failed: {n:5d}  {cause}")
    print(f"  of which in the baseline (no faults yet): {len(calm)} accepted, failed "
          f"{sum(calm_failed.values())} {dict(calm_failed) or ''}")  # fmt: skip
    print(f"jobs lost: {len(lost)}")
    for line in lost[:20]:
        print(f"  {line}")
    print(f"wrong answers: {len(ledger.wrong)}")
    for line in ledger.wrong[:10]:
        print(f"  {line}")
    print(f"refused at the door (not jobs): {dict(ledger.refused.most_common(8))}")
    print("job latency, accepted -> finished (s): baseline n  p50  p99 | with faults n  p50  p99"
          " | p99 ratio")  # fmt: skip
    for kind in ("build_and_program", "run", "reset"):
        base = latencies([j for j in calm if j.type == kind])
        hit = latencies([j for j in jobs if j.type == kind and j.accepted >= faulty])
        ratio = f"x{hit[2] / base[2]:.2f}" if base[0] and hit[0] else "-"
        print(f"  {kind:<18} {base[0]:7d} {base[1]:7.3f} {base[2]:7.3f} | "
              f"{hit[0]:7d} {hit[1]:7.3f} {hit[2]:7.3f} | {ratio}")  # fmt: skip
    grew = []
    print(f"RSS, MiB:                    start      end   (bound: +{args.rss_growth_mib:g})")
    for name in rss_start:
        a, b = rss_start[name] / 2**20, rss_end.get(name, 0) / 2**20
        restarted = faults.done[name] if name in ("worker", "api", "redis") else 0
        note = " (restarted during the soak)" if restarted else ""
        print(f"  {name:<24} {a:8.1f} {b:8.1f}{note}")
        if b - a > args.rss_growth_mib:
            grew.append(name)
    failed = bool(lost or ledger.wrong or grew)
    print("\nverdict:", "FAIL" if failed else "ok",
          f"(lost {len(lost)}, wrong {len(ledger.wrong)}, grew {grew or 'none'})")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
