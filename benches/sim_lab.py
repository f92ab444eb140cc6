"""The simulated lab through its REST API, each figure beside a baseline measured in
the same run, with the ratio.

    .venv/bin/python benches/sim_lab.py [--reads 300] [--json]

Starts its own ``redis-server`` (free port, temporary folder, AOF on as in ``fpgalab
serve``), ``fpgalab api`` (uvicorn, one process) and ``fpgalab worker`` for all ten
boards with the sim backend, its data folder (build cache, ccache, boards) in the
same temporary folder: a cold lab. Then, over loopback HTTP:

- builds: submit -> ``reserved`` wall time for a design built cold (empty ccache), the
  same design again (build cache hit) and a changed design (warm ccache), beside the
  raw Verilator compile of the same Verilog (cocotb's runner, fresh folder, no ccache);
- one read: POST run -> poll -> GET result, p50/p99, beside the board's raw socket
  round trip and the backend's ``transact`` (``benches.sim_backend``, its own simulator);
- bulk: words/s of a 65,536-word write and read to SRAM through the API, beside the
  backend's ``transact`` of the same size and the per-clock cocotb master;
- memory: RSS of the simulators (one idle board, all ten), the worker, the API, Redis;
  and the CPU the ten idle simulators use.

Every process it starts is stopped before it exits (simulators included).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from fpgalab.sim.board import comm, descendants  # noqa: E402

HOST = "127.0.0.1"
EXAMPLES = REPO / "docs" / "examples"
SCRATCH = 0x0000_0004
SRAM = 0x0100_0000
USER = 0x2000_0000
BULK = 65536
BOUNDARY = "fpgalabsimbenchboundary"
#: The aims from the issue.
AIM_CACHED_S = 1.5
AIM_COLD_S = 12.0
AIM_READ_P50_MS = 10.0
AIM_BULK_WORDS_S = 100_000


# -- HTTP: one keep-alive connection, stdlib only (cheaper than the servers) ----------------


class Api:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)
        #: The build job of the last ``reserve``: (board, job id).
        self.last_build: tuple[int, str] = (0, "")

    def close(self) -> None:
        self.conn.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type} if content_type else {}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()  # reconnects on the next request
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(
        self, method: str, path: str, expect: int = 200, body: Any = None, raw: bytes | None = None
    ) -> Any:
        payload = (
            raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        )
        status, data = self.request(method, path, payload, "application/json" if payload else "")
        if status != expect:
            raise RuntimeError(f"{method} {path}: {status} {data[:500]!r}")
        return json.loads(data) if data else None

    def submit(self, board: int, filename: str, source: bytes) -> str:
        body = (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + source
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        status, data = self.request(
            "POST", f"/fpga/{board}/submit", body, f"multipart/form-data; boundary={BOUNDARY}"
        )
        if status != 202:
            raise RuntimeError(f"submit to board {board}: {status} {data[:500]!r}")
        return str(json.loads(data)["job_id"])

    def wait(
        self, path: str, done: Callable[[dict[str, Any]], bool], timeout: float, poll: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            record = self.json("GET", path)
            if done(record):
                return record  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise RuntimeError(f"GET {path}: still {record} after {timeout} s")
            if poll:
                time.sleep(poll)

    def job(self, board: int, job_id: str, timeout: float = 60, poll: float = 0.0) -> Any:
        return self.wait(
            f"/fpga/{board}/jobs/{job_id}",
            lambda j: j["status"] in ("complete", "failed", "cancelled"),
            timeout,
            poll,
        )

    def logs(self, board: int, job_id: str) -> str:
        _, data = self.request("GET", f"/fpga/{board}/jobs/{job_id}/logs")
        return data.decode(errors="replace")

    def reserve(self, board: int, filename: str, source: bytes, timeout: float = 300) -> float:
        """Submit and wait until the board is reserved; the wall time in seconds."""
        started = time.perf_counter()
        job_id = self.submit(board, filename, source)
        self.last_build = (board, job_id)
        state = self.wait(
            f"/fpga/{board}", lambda b: b["state"] in ("reserved", "error"), timeout, 0.005
        )["state"]
        took = time.perf_counter() - started
        if state != "reserved":
            raise RuntimeError(f"board {board}: {state}:\n{self.logs(board, job_id)[-3000:]}")
        return took

    def build_seconds(self) -> float:
        """How long the last reserve's build step took, as its job's log says."""
        text = self.logs(*self.last_build)
        found = re.search(r"fpgalab: build (?:cache hit|done) in ([\d.]+) s", text)
        if found is None:
            raise RuntimeError(f"no build time in the log:\n{text[-2000:]}")
        return float(found[1])

    def release(self, board: int) -> None:
        self.json("POST", f"/fpga/{board}/session/release", expect=202)
        self.wait(f"/fpga/{board}", lambda b: b["state"] == "idle", 60, 0.005)

    def run(self, board: int, body: dict[str, Any] | None = None, raw: bytes | None = None,
            poll: float = 0.0) -> tuple[dict[str, Any], bytes]:  # fmt: skip
        """POST a run, poll the job until it has finished, GET its result (raw JSON)."""
        job_id = self.json("POST", f"/fpga/{board}/run", expect=202, body=body, raw=raw)["job_id"]
        job = self.job(board, job_id, poll=poll)
        status, result = self.request("GET", f"/fpga/{board}/jobs/{job_id}/result")
        if status != 200:
            raise RuntimeError(f"result of {job_id}: {status} {result[:300]!r}")
        return job, result


# -- processes ---------------------------------------------------------------------------------


class Lab:
    """redis-server, ``fpgalab api`` and ``fpgalab worker`` (sim backend, boards 0-9)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis: Any = None
        self.port = 0
        self.simulators: set[int] = set()

    def start(self) -> None:
        from fpgalab.service.redisproc import PrivateRedis, free_port

        self.redis = PrivateRedis(self.root / "redis")
        self.redis.start()
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FPGALAB_")}
        env.update(FPGALAB_DATA_DIR=str(self.data), FPGALAB_API_KEYS="", PYTHONPATH=str(REPO))
        common = ["--redis-url", self.redis.url]
        self._spawn("worker", env, "worker", "--boards", "0-9", "--backend", "sim", *common)
        self._spawn("api", env, "api", "--port", str(self.port), *common)

    def _spawn(self, name: str, env: dict[str, str], *args: str) -> None:
        from fpgalab.service.procs import child_dies_with_parent

        with (self.root / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "fpgalab.service.cli", *args], stdout=log,
                stderr=subprocess.STDOUT, env=env, cwd=REPO, preexec_fn=child_dies_with_parent,
            )  # fmt: skip

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"{name} exited ({proc.returncode}):\n{tail}")

    def wait_healthy(self, api: Api, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(OSError, http.client.HTTPException, RuntimeError):
                boards = api.json("GET", "/fpga")
                if all(b["health"] == "good" for b in boards):
                    self.simulators = set(self.simulator_pids())
                    return
            time.sleep(0.1)
        raise SystemExit(f"the lab was not healthy within {timeout} s")

    def simulator_pids(self) -> list[int]:
        """The worker's descendants that run a simulator (the model binary, ``lab_soc``;
        under the sandbox's bwrap processes, not the worker's children)."""
        return sorted(p for p in descendants(self.procs["worker"].pid) if comm(p) == "lab_soc")

    def stop(self) -> None:
        for name in ("api", "worker"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The worker stops its simulators; any it left behind are stopped here, by pid.
        for pid in self.simulators:
            if comm(pid) == "lab_soc":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.redis is not None:
            self.redis.stop()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- measurements ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def build_key(api: Api, board: int) -> str:
    ident = api.json("GET", f"/fpga/{board}/memory-map")["constants"]["config_identifier"]
    return str(ident).rsplit(" ", 1)[-1]


def bench_builds(api: Api, lab: Lab) -> dict[str, Any]:
    from benches.sim_backend import raw_verilator

    source = (EXAMPLES / "accumulator.py").read_bytes()
    # A design no cache has seen, and an empty ccache: nothing is reused but the base SoC.
    source += f"# bench {uuid.uuid4().hex}\n".encode()
    shutil.rmtree(lab.data / "sim" / "ccache", ignore_errors=True)
    out: dict[str, Any] = {"cold_s": api.reserve(0, "accumulator.py", source)}
    out["cold_build_s"] = api.build_seconds()
    key = build_key(api, 0)
    api.release(0)
    cached, cached_builds = [], []
    for i in range(5):  # the same design again, on one board then others
        cached.append(api.reserve(i % 3, "again.py", source))
        cached_builds.append(api.build_seconds())
        api.release(i % 3)
    out["cached_s"] = statistics.median(cached)
    out["cached_build_s"] = statistics.median(cached_builds)
    out["cached_all_s"] = [round(c, 3) for c in cached]
    changed = source.replace(b"0xC0FFEE01", b"0xC0FFEE02")
    out["changed_s"] = api.reserve(1, "changed.py", changed)
    out["changed_build_s"] = api.build_seconds()
    api.release(1)
    verilog = (EXAMPLES / "accumulator.v").read_bytes() + f"// {uuid.uuid4().hex}\n".encode()
    out["verilog_warm_s"] = api.reserve(2, "accumulator.v", verilog)
    out["verilog_warm_build_s"] = api.build_seconds()
    api.release(2)
    # The baseline: cocotb's runner on the cold design's Verilog, fresh folder, no ccache.
    [folder] = [p for p in (lab.data / "sim" / "builds").glob(f"{key}*") if p.is_dir()]
    out["raw_verilator_s"] = raw_verilator(folder, lab.root / "raw-verilator")
    return out


def bench_read(api: Api, reads: int, poll: float) -> dict[str, Any]:
    """Single reads through the API on a reserved board, with the job's own timestamps."""
    api.reserve(0, "accumulator.py", (EXAMPLES / "accumulator.py").read_bytes())
    body = json.dumps({"op": 2, "address": SCRATCH}).encode()
    for _ in range(20):  # warm-up: connections, code paths
        api.run(0, raw=body, poll=poll)
    total, queued, ran, posted = [], [], [], []
    for _ in range(reads):
        t0 = time.perf_counter()
        wall0 = time.time()
        job_id = api.json("POST", "/fpga/0/run", expect=202, raw=body)["job_id"]
        t1 = time.perf_counter()
        job = api.job(0, job_id, poll=poll)
        status, result = api.request("GET", f"/fpga/0/jobs/{job_id}/result")
        t2 = time.perf_counter()
        if status != 200 or json.loads(result)["data"] != [0x12345678]:
            raise RuntimeError(f"read {job_id}: {status} {result[:200]!r}")
        total.append(t2 - t0)
        posted.append(t1 - t0)
        created, started, finished = (
            _ts(job["created_at"]), _ts(job["started_at"]), _ts(job["finished_at"])
        )  # fmt: skip
        queued.append(started - max(created, wall0))
        ran.append(finished - started)
    return {
        "reads": reads,
        "poll_s": poll,
        "p50_ms": 1e3 * percentile(total, 50),
        "p99_ms": 1e3 * percentile(total, 99),
        "post_p50_ms": 1e3 * percentile(posted, 50),
        "queued_p50_ms": 1e3 * percentile(queued, 50),
        "taken_to_finished_p50_ms": 1e3 * percentile(ran, 50),
    }


def bench_bulk(api: Api, repeats: int = 3) -> dict[str, Any]:
    """A 65,536-word write and read to SRAM through the API (board 0, reserved)."""
    words = [random.getrandbits(32) for _ in range(BULK)]
    body = json.dumps({"op": 1, "address": SRAM, "data": words}).encode()
    read_body = json.dumps({"op": 2, "address": SRAM, "length": BULK}).encode()
    writes, reads, runs_w, runs_r = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        job, _ = api.run(0, raw=body, poll=0.002)
        writes.append(time.perf_counter() - t0)
        runs_w.append(_ts(job["finished_at"]) - _ts(job["started_at"]))
        if job["status"] != "complete":
            raise RuntimeError(f"bulk write: {job}")
        t0 = time.perf_counter()
        job, result = api.run(0, raw=read_body, poll=0.002)
        data = json.loads(result)["data"]
        reads.append(time.perf_counter() - t0)
        runs_r.append(_ts(job["finished_at"]) - _ts(job["started_at"]))
        if data != words:
            raise RuntimeError("bulk read-back through the API does not match")
    return {
        "write_words_per_s": BULK / statistics.median(writes),
        "read_words_per_s": BULK / statistics.median(reads),
        "write_job_words_per_s": BULK / statistics.median(runs_w),
        "read_job_words_per_s": BULK / statistics.median(runs_r),
    }


def bench_baselines(root: Path, data: Path) -> dict[str, Any]:
    """sim.bench's bus figures on a simulator of our own (same build cache, board 0)."""
    from benches.sim_backend import bench_bus
    from fpgalab.backends.sim import SimBackend

    sim = SimBackend(data / "sim", run_dir=root / "baseline-boards")
    try:
        return bench_bus(sim, 0)
    finally:
        sim.close()


def bench_memory(api: Api, lab: Lab) -> dict[str, Any]:
    boards = api.json("GET", "/fpga")
    if not all(b["state"] == "idle" for b in boards):
        raise RuntimeError(f"not all boards idle: {[b['state'] for b in boards]}")
    pids = lab.simulator_pids()
    lab.simulators |= set(pids)
    time.sleep(0.5)
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(2.0)
    idle_cpu = sum(cpu_seconds(pid) - t for pid, t in before.items()) / 2.0
    rss = [rss_bytes(pid) for pid in pids]
    return {
        "simulators": len(pids),
        "board_rss_mib": statistics.median(rss) / 2**20,
        "lab_rss_mib": sum(rss) / 2**20,
        "worker_rss_mib": rss_bytes(lab.procs["worker"].pid) / 2**20,
        "api_rss_mib": rss_bytes(lab.procs["api"].pid) / 2**20,
        "redis_rss_mib": rss_bytes(lab.redis.proc.pid) / 2**20,
        "idle_cpu_percent": 100 * idle_cpu,
    }


# -- report ------------------------------------------------------------------------------------


def report(r: dict[str, Any]) -> list[str]:
    b, rd, bulk, base, mem = r["builds"], r["read"], r["bulk"], r["baseline"], r["memory"]
    raw = b["raw_verilator_s"]
    raw_read = base["raw_socket_read"]
    transact_read = base["backend_transact_read"]

    def ratio(x: float, y: float) -> str:
        return f"x{x / y:.2f}"

    def aim(ok: bool) -> str:
        return "aim met" if ok else "AIM NOT MET"

    lines = [
        f"lab start: redis + api + worker, 10 boards healthy (base SoC built cold, 10 "
        f"simulators started) in {r['start_s']:.1f} s",
        "",
        "builds, submit -> reserved through the API   | raw Verilator compile of the same "
        "Verilog (no ccache) | ratio",
        f"  cold (new design, empty ccache) {b['cold_s']:6.2f} s   | {raw:6.2f} s "
        f"| {ratio(b['cold_s'], raw)}  ({aim(b['cold_s'] <= AIM_COLD_S)}: <= {AIM_COLD_S:g} s; "
        f"build step {b['cold_build_s']:.2f} s)",
        f"  cached (same design again)      {b['cached_s']:6.2f} s   | {raw:6.2f} s "
        f"| {ratio(b['cached_s'], raw)}  ({aim(b['cached_s'] <= AIM_CACHED_S)}: <= "
        f"{AIM_CACHED_S:g} s; build step {b['cached_build_s']:.2f} s; runs {b['cached_all_s']})",
        f"  changed design, warm ccache     {b['changed_s']:6.2f} s   | {raw:6.2f} s "
        f"| {ratio(b['changed_s'], raw)}  (build step {b['changed_build_s']:.2f} s)",
        f"  new Verilog design, warm ccache {b['verilog_warm_s']:6.2f} s   | {raw:6.2f} s "
        f"| {ratio(b['verilog_warm_s'], raw)}  (build step {b['verilog_warm_build_s']:.2f} s)",
        "",
        f"one read (POST run -> poll -> GET result), {rd['reads']} reads, polling "
        + (f"every {1e3 * rd['poll_s']:g} ms" if rd["poll_s"] else "back to back"),
        f"  through the API     p50 {rd['p50_ms']:7.2f} ms  p99 {rd['p99_ms']:7.2f} ms"
        f"  ({aim(rd['p50_ms'] <= AIM_READ_P50_MS)}: p50 <= {AIM_READ_P50_MS:g} ms)",
        f"  raw socket          p50 {raw_read['p50_us'] / 1e3:7.3f} ms  p99 "
        f"{raw_read['p99_us'] / 1e3:7.3f} ms  | ratio (p50) "
        f"{ratio(rd['p50_ms'], raw_read['p50_us'] / 1e3)}",
        f"  backend transact    p50 {transact_read['p50_us'] / 1e3:7.3f} ms  p99 "
        f"{transact_read['p99_us'] / 1e3:7.3f} ms  | ratio (p50) "
        f"{ratio(rd['p50_ms'], transact_read['p50_us'] / 1e3)}",
        f"  where it goes (p50): POST /run answered {rd['post_p50_ms']:.2f} ms; created -> taken "
        f"by the worker {rd['queued_p50_ms']:.2f} ms; taken -> finished "
        f"{rd['taken_to_finished_p50_ms']:.2f} ms; the rest is polling and GET result",
        "",
        f"bulk, {BULK:,} words to SRAM           | backend transact | per-clock cocotb | ratios",
    ]
    for op in ("write", "read"):
        api_rate = bulk[f"{op}_words_per_s"]
        backend = base[f"bulk_{op}_65536_words_per_s"]
        cocotb = base[f"raw_cocotb_{op}_words_per_s"]
        lines.append(
            f"  {op:<5} through the API {api_rate:>9,.0f} w/s | {backend:>9,.0f} w/s    | "
            f"{cocotb:>9,.0f} w/s     | {ratio(api_rate, backend)} of backend, "
            f"{ratio(api_rate, cocotb)} of cocotb  ({aim(api_rate >= AIM_BULK_WORDS_S)}: >= "
            f"{AIM_BULK_WORDS_S:,} w/s; the job alone {bulk[f'{op}_job_words_per_s']:,.0f} w/s)"
        )
    lines += [
        "",
        f"memory (RSS): one idle simulated board {mem['board_rss_mib']:.1f} MiB; all "
        f"{mem['simulators']} simulators {mem['lab_rss_mib']:.1f} MiB; worker "
        f"{mem['worker_rss_mib']:.1f} MiB; API {mem['api_rss_mib']:.1f} MiB; redis "
        f"{mem['redis_rss_mib']:.1f} MiB",
        f"idle CPU of the {mem['simulators']} simulators: "
        f"{mem['idle_cpu_percent']:.2f}% of one core (over 2 s)",
    ]
    return lines


@contextlib.contextmanager
def running_lab(root: Path) -> Iterator[tuple[Lab, Api, float]]:
    lab = Lab(root)
    api: Api | None = None
    try:
        started = time.perf_counter()
        lab.start()
        api = Api(lab.port)
        lab.wait_healthy(api)
        yield lab, api, time.perf_counter() - started
        lab.check()
    finally:
        if api is not None:
            api.close()
        lab.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=300, help="single reads timed")
    parser.add_argument("--poll", type=float, default=0.0, help="job poll interval (s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", type=Path, help="use (and keep) this folder, not a temp one")
    args = parser.parse_args(argv)
    # a SIGTERM unwinds like Ctrl-C, so that every child is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    print(
        f"fpgalab sim lab bench: python {sys.version.split()[0]}, {os.cpu_count()} cpus", flush=True
    )
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if args.keep:
            root = args.keep
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="fpgalab-simbench-"))
            )
        with running_lab(root) as (lab, api, start_s):
            results["start_s"] = start_s
            print(f"lab up in {start_s:.1f} s; builds ...", flush=True)
            results["builds"] = bench_builds(api, lab)
            print("reads ...", flush=True)
            results["read"] = bench_read(api, args.reads, args.poll)
            print("bulk ...", flush=True)
            results["bulk"] = bench_bulk(api)
            api.release(0)
            print("baselines (raw socket, backend, cocotb per clock) ...", flush=True)
            results["baseline"] = bench_baselines(root, lab.data)
            print("memory ...", flush=True)
            results["memory"] = bench_memory(api, lab)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(report(results)))
    print(f"bench took {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
