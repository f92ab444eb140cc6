"""The client side against the simulated lab, each figure beside a baseline measured in
the same run, with the ratio.

    .venv/bin/python benches/client.py [--reads 1000] [--keep DIR] [--json]

Starts the simulated lab as ``benches/sim_lab.py`` does (its own ``redis-server``,
``fpgalab api``, ``fpgalab worker`` for boards 0-9; ``--keep DIR`` reuses a data folder
so that the base SoC is not built again), reserves board 0 with ``accumulator.v``
through ``fpgalab.client.Client``, and measures:

- **waiting**: ``--reads`` single reads as as many run jobs, each waited for by the lab
  (``POST …/run?wait=``, the client's way), beside the same reads waited for by
  polling the job (as fast as the lab answers; then every 10 ms, a polite poller); the
  number of HTTP requests each way;
- **ops**: ``--reads`` mixed reads and writes as one ``ops`` job (``board.transact``)
  beside the same transactions as one job each (aims: the ``ops`` job at least 50x
  faster, under 50 ms);
- **one read as a client sees it**: ``board.read`` (one ``POST …/run?wait=``) p50/p99
  beside the job's time on the lab (``created_at`` → ``finished_at``; aim: at most x1.5);
- **start-up**: ``fpgalab boards`` (the console script, against the lab) and ``fpgalab
  --help`` beside ``python -c pass``, medians of interleaved runs (aim: under 300 ms more).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for path in (REPO, HERE):  # run as a script from a checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from sim_lab import Api, Lab, percentile  # noqa: E402

from fpgalab.client import Client, Read, Write  # noqa: E402

USER = 0x2000_0000
SRAM = 0x0100_0000
DESIGN = REPO / "docs" / "examples" / "accumulator.v"
#: The aims from the issue.
AIM_OPS_RATIO = 50.0
AIM_OPS_MS = 50.0
AIM_CLIENT_RATIO = 1.5
AIM_STARTUP_MS = 300.0
POLITE_POLL = 0.010


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _on_lab(job: Any) -> float:
    """A job's time on the lab: accepted (``created_at``) to finished."""
    assert job.finished_at is not None, job
    return (job.finished_at - job.created_at).total_seconds()


class Counting(httpx.HTTPTransport):
    """The client's transport, counting requests."""

    def __init__(self) -> None:
        super().__init__(retries=0)
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return super().handle_request(request)


def bench_waiting(url: str, board: Any, reads: int) -> dict[str, Any]:
    """``reads`` single reads, each one job: waited for with ``?wait=`` vs polled."""
    client = board.client
    fpga, sid = board.fpga_id, board.session_id
    headers = {"X-Session-ID": sid}
    body = {"op": 2, "address": USER, "length": 1}  # 2: read
    out: dict[str, Any] = {}

    transport = Counting()
    with Client(url, transport=transport) as counted:
        session = counted.attach(fpga, sid)
        started = time.perf_counter()
        for _ in range(reads):
            session.read(USER)
        out["wait_s"] = time.perf_counter() - started
        out["wait_requests"] = transport.requests - 2  # less the attach's own

    with httpx.Client(base_url=url, trust_env=False) as raw:
        for label, pause in (("poll", 0.0), ("poll10", POLITE_POLL)):
            requests = 0
            started = time.perf_counter()
            for _ in range(reads):
                job = raw.post(f"/fpga/{fpga}/run", json=body, headers=headers).json()
                assert "job_id" in job, job
                requests += 1
                while True:
                    status = raw.get(f"/fpga/{fpga}/jobs/{job['job_id']}").json()["status"]
                    requests += 1
                    if status in ("complete", "failed", "cancelled"):
                        break
                    if pause:
                        time.sleep(pause)
                raw.get(f"/fpga/{fpga}/jobs/{job['job_id']}/result", headers=headers)
                requests += 1
            out[f"{label}_s"] = time.perf_counter() - started
            out[f"{label}_requests"] = requests
    del client
    return out


def bench_ops(board: Any, count: int) -> dict[str, Any]:
    """``count`` mixed transactions: one ``ops`` job vs one job each."""
    ops: list[Read | Write] = []
    for i in range(count):
        address = SRAM + 4 * (i % 512)
        ops.append(Write(address, [i]) if i % 2 == 0 else Read(address - 4, 1))
    times = []
    for _ in range(5):
        started = time.perf_counter()
        result = board.transact(ops)
        times.append(time.perf_counter() - started)
        assert result.ok and len(result.data) == count // 2, result
    job = board.client.job(board.fpga_id, board.runs[-1])
    on_lab = _on_lab(job)
    started = time.perf_counter()
    for op in ops:
        board.transact([op])
    each = time.perf_counter() - started
    ops_s = statistics.median(times)
    return {"ops_s": ops_s, "ops_on_lab_s": on_lab, "each_s": each, "ratio": each / ops_s}


def bench_client_read(board: Any, reads: int) -> dict[str, Any]:
    """``board.read`` as the caller sees it vs the job's time on the lab."""
    seen: list[float] = []
    for _ in range(reads):
        started = time.perf_counter()
        board.read(USER)
        seen.append(time.perf_counter() - started)
    lab: list[float] = []
    for job_id in board.runs[-reads:]:
        job = board.client.job(board.fpga_id, job_id)
        lab.append(_on_lab(job))
    p50, p50_lab = statistics.median(seen), statistics.median(lab)
    return {
        "p50_s": p50,
        "p99_s": percentile(seen, 99),
        "lab_p50_s": p50_lab,
        "lab_p99_s": percentile(lab, 99),
        "ratio": p50 / p50_lab,
    }


def _time(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def bench_startup(url: str, runs: int = 15) -> dict[str, Any]:
    """The console script vs a bare interpreter, interleaved, medians."""
    script = shutil.which("fpgalab", path=str(Path(sys.executable).parent))
    if script is None:
        return {"error": f"no fpgalab script beside {sys.executable}"}
    env = {**os.environ, "FPGALAB_URL": url}
    env.pop("FPGALAB_API_KEY", None)
    rows: dict[str, list[float]] = {"pass": [], "boards": [], "help": []}
    for _ in range(runs):
        rows["pass"].append(_time([sys.executable, "-c", "pass"], env))
        rows["boards"].append(_time([script, "boards"], env))
        rows["help"].append(_time([script, "--help"], env))
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "pass_s": med["pass"],
        "boards_s": med["boards"],
        "help_s": med["help"],
        "boards_more_ms": _ms(med["boards"] - med["pass"]),
        "help_more_ms": _ms(med["help"] - med["pass"]),
    }


def report(r: dict[str, Any]) -> list[str]:
    w, o, c, s = r["waiting"], r["ops"], r["client_read"], r["startup"]
    n = r["reads"]
    lines = [
        "",
        f"{n:,} single reads, one job each (wall time, HTTP requests):",
        f"  ?wait=                {w['wait_s']:7.2f} s  {w['wait_requests']:6,} requests",
        f"  polling (no pause)    {w['poll_s']:7.2f} s  {w['poll_requests']:6,} requests"
        f"   wait/poll time x{w['wait_s'] / w['poll_s']:.2f}",
        f"  polling every 10 ms   {w['poll10_s']:7.2f} s  {w['poll10_requests']:6,} requests"
        f"   wait/poll time x{w['wait_s'] / w['poll10_s']:.2f}",
        "",
        f"{n:,} mixed reads and writes:",
        f"  one ops job           {_ms(o['ops_s']):9.1f} ms"
        f" (on the lab {_ms(o['ops_on_lab_s']):.1f} ms; aim < {AIM_OPS_MS:g} ms)",
        f"  one job each          {_ms(o['each_s']):9.1f} ms   ops job x{o['ratio']:.0f} faster"
        f" (aim >= {AIM_OPS_RATIO:g})",
        "",
        "one read (board.read: one POST ?wait=) vs the job's time on the lab:",
        f"  client p50/p99        {_ms(c['p50_s']):.2f} / {_ms(c['p99_s']):.2f} ms",
        f"  lab    p50/p99        {_ms(c['lab_p50_s']):.2f} / {_ms(c['lab_p99_s']):.2f} ms"
        f"   ratio x{c['ratio']:.2f} (aim <= {AIM_CLIENT_RATIO:g})",
        "",
    ]
    if "error" in s:
        lines.append(f"start-up: {s['error']}")
    else:
        lines += [
            "start-up (medians of interleaved runs):",
            f"  python -c pass        {_ms(s['pass_s']):7.1f} ms",
            f"  fpgalab boards        {_ms(s['boards_s']):7.1f} ms   +{s['boards_more_ms']:.0f} ms"
            f" (aim < +{AIM_STARTUP_MS:g})",
            f"  fpgalab --help        {_ms(s['help_s']):7.1f} ms   +{s['help_more_ms']:.0f} ms",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=1000, help="transactions per figure")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", type=Path, help="use (and keep) this folder, not a temp one")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    print(f"fpgalab client bench: python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    results: dict[str, Any] = {"reads": args.reads}
    with contextlib.ExitStack() as stack:
        if args.keep:
            root = args.keep
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fpgalab-cb-")))
        lab = Lab(root)
        stack.callback(lab.stop)
        lab.start()
        api = Api(lab.port)
        stack.callback(api.close)
        lab.wait_healthy(api)
        url = f"http://127.0.0.1:{lab.port}"
        print("lab up; reserving board 0 ...", flush=True)
        with Client(url, transport=httpx.HTTPTransport(retries=0)) as client:
            with client.reserve(0, DESIGN) as board:
                board.read(USER)  # the first run pays for nothing the others do not
                print("waiting vs polling ...", flush=True)
                results["waiting"] = bench_waiting(url, board, args.reads)
                print("ops ...", flush=True)
                results["ops"] = bench_ops(board, args.reads)
                print("one read ...", flush=True)
                results["client_read"] = bench_client_read(board, min(args.reads, 300))
            print("start-up ...", flush=True)
            results["startup"] = bench_startup(url)
        lab.check()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(report(results)))
    print(f"bench took {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
