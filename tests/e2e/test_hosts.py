"""Many lab hosts, shown: Redis and the API in one network namespace, two workers in two
others, each on the simulated backend with boards of its own and reaching Redis only
over a veth pair of its own (the test run makes them; the addresses exist only inside
them). One host is taken away mid-build — its processes killed, its link down — and
the lab goes on: its job fails as lost, its boards leave service, the other host's
boards serve, and pool jobs go to them.

Needs root (network namespaces) and the simulation toolchain; runs once, in the
simulated tier (``--backend sim``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import REPO, free_port

DESIGN = (REPO / "docs" / "examples" / "accumulator.py").read_bytes()
USER = 0x2000_0000
#: The hosts: their boards, and the /24 of the veth pair that joins each to the api host.
HOSTS = {"h1": ("0-1", 1), "h2": ("2-3", 2)}
NET = "10.213"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class Lab:
    """Network namespaces ``api``, ``h1``, ``h2`` made for one test, and the processes run
    in them; the test (in its own namespace) reaches the API over a pair of its own."""

    def __init__(self, folder: Path) -> None:
        tag = f"fl{os.getpid() % 100000}"
        self.folder = folder
        self.ns = {name: f"{tag}{name}" for name in ("api", "h1", "h2")}
        # veth ends: api side a<n>, other side b<n>; n 0 joins the test's namespace
        self.pairs = {name: (f"{tag}a{n}", f"{tag}b{n}") for name, n in
                      (("test", 0), ("h1", 1), ("h2", 2))}  # fmt: skip
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis_port = free_port()
        self.api_port = free_port()

    def up(self) -> Lab:
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for n, (host, (a, b)) in enumerate(self.pairs.items()):
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", self.ns["api"])
            sh("ip", "-n", self.ns["api"], "addr", "add", f"{NET}.{n}.1/24", "dev", a)
            sh("ip", "-n", self.ns["api"], "link", "set", a, "up")
            if host == "test":
                sh("ip", "addr", "add", f"{NET}.{n}.2/24", "dev", b)
                sh("ip", "link", "set", b, "up")
            else:
                sh("ip", "link", "set", b, "netns", self.ns[host])
                sh("ip", "-n", self.ns[host], "addr", "add", f"{NET}.{n}.2/24", "dev", b)
                sh("ip", "-n", self.ns[host], "link", "set", b, "up")
        return self

    def down(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        for ns in self.ns.values():
            with contextlib.suppress(subprocess.CalledProcessError):
                sh("ip", "netns", "del", ns)  # its veth ends go with it, and their peers
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("ip", "link", "del", self.pairs["test"][1])

    def start(self, name: str, host: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[host], *argv], stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, cwd=self.folder,
        )  # fmt: skip
        log.close()

    def kill(self, name: str) -> None:
        """The process and everything it started (simulators, builds), at once."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def cut(self, host: str) -> None:
        """Take a host away: its processes killed, its link down."""
        self.kill(f"worker-{host}")
        sh("ip", "-n", self.ns["api"], "link", "set", self.pairs[host][0], "down")

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-4000:]

    @property
    def url(self) -> str:
        return f"http://{NET}.0.1:{self.api_port}"


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FPGALAB_", "PYTEST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


@pytest.fixture
def hosts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    if request.config.getoption("--backend") != "sim" or request.config.getoption("--lab"):
        pytest.skip("the hosts test runs once, in the simulated tier")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI runs as root with iproute2: network namespaces are needed")
        pytest.skip("needs root and iproute2 (network namespaces)")
    request.getfixturevalue("sim_cache")  # the toolchain is there (skips, or fails in CI)
    lab = Lab(tmp_path)
    try:
        lab.up()
    except subprocess.CalledProcessError as exc:
        lab.down()
        raise RuntimeError(f"network namespaces: {exc.stderr.decode(errors='replace')}") from exc
    fpgalab = [sys.executable, "-m", "fpgalab.service.cli"]
    try:
        lab.start("redis", "api", ["redis-server", "--port", str(lab.redis_port), "--bind",
                  "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no",
                  "--dir", str(tmp_path)], environment())  # fmt: skip
        lab.start("api", "api", [*fpgalab, "api", "--host", f"{NET}.0.1", "--port",
                  str(lab.api_port)],
                  environment(FPGALAB_REDIS_URL=f"redis://127.0.0.1:{lab.redis_port}/0",
                              FPGALAB_DATA_DIR=str(tmp_path / "api")))  # fmt: skip
        for host, (boards, n) in HOSTS.items():
            lab.start(f"worker-{host}", host,
                      [*fpgalab, "worker", "--boards", boards, "--tags", f"{boards}={host}",
                       "--backend", "sim"],
                      environment(FPGALAB_REDIS_URL=f"redis://{NET}.{n}.1:{lab.redis_port}/0",
                                  FPGALAB_DATA_DIR=str(tmp_path / host),
                                  FPGALAB_WORKER_HEARTBEAT_TTL="2",
                                  FPGALAB_HOUSEKEEPING_INTERVAL="0.2"))  # fmt: skip
        yield lab
    finally:
        lab.down()


def until(what: str, check: Any, lab: Lab, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if found := check():
                return found
        for name, proc in lab.procs.items():
            assert proc.poll() is None, f"{name} exited:\n{lab.log(name)}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s\n" + "\n".join(
            f"--- {name}\n{lab.log(name)}" for name in lab.procs
        )
        time.sleep(0.2)


@pytest.fixture
def http(hosts: Lab) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hosts.url, timeout=30, trust_env=False) as client:
        yield client


def test_a_lab_on_two_hosts_loses_one_and_goes_on(hosts: Lab, http: httpx.Client) -> None:
    """Boards 0-1 on host h1, 2-3 on h2, each host reaching Redis over its own link. A
    build on h2 is running when h2 goes away: the build fails as lost, its board goes to
    error and h2's other board out of service (health unknown, no worker); h1's boards go on
    serving, a pool job for any board is placed on one of them and runs, and one that
    only h2's boards meet waits rather than going anywhere else."""

    def boards() -> dict[int, dict[str, Any]]:
        return {b["fpga_id"]: b for b in http.get("/fpga").json()}

    def all_up() -> bool:
        rows = boards()
        return sorted(rows) == [0, 1, 2, 3] and all(
            b["health"] == "good" and b["worker"] for b in rows.values()
        )

    until("four boards up on two hosts", all_up, hosts, timeout=240)
    rows = boards()
    assert {b: rows[b]["tags"] for b in rows} == {0: ["h1"], 1: ["h1"], 2: ["h2"], 3: ["h2"]}
    assert rows[0]["worker"] != rows[2]["worker"]

    design = {"file": ("accumulator.py", DESIGN)}
    doomed = http.post("/submit", files=design, data={"tags": "h2"}).json()
    assert doomed["fpga_id"] in (2, 3), doomed  # a free h2 board, taken at random
    hit, spared = doomed["fpga_id"], 5 - doomed["fpga_id"]
    until("its build running on h2",
          lambda: http.get(f"/jobs/{doomed['job_id']}").json()["status"] == "running",
          hosts)  # fmt: skip
    hosts.cut("h2")

    lost = until("the build failed as lost", lambda: (job := http.get(
        f"/jobs/{doomed['job_id']}").json())["status"] == "failed" and job, hosts)  # fmt: skip
    assert "was lost while running this job" in lost["error"]

    def h2_out() -> bool:
        rows = boards()
        return (
            (rows[hit]["state"], rows[hit]["health"], rows[spared]["health"])
            == ("error", "unknown", "unknown")
            and rows[hit]["worker"] is None
            and rows[spared]["worker"] is None
        )

    until("h2's boards out of service", h2_out, hosts)
    assert "no live worker" in boards()[spared]["health_reason"]

    anywhere = http.post("/submit", files=design).json()
    assert anywhere["fpga_id"] in (0, 1), anywhere
    fpga = anywhere["fpga_id"]
    until("its build done on h1",
          lambda: http.get(f"/jobs/{anywhere['job_id']}").json()["status"] == "complete",
          hosts, timeout=120)  # fmt: skip
    run = http.post(f"/fpga/{fpga}/run", params={"wait": 20},
                    json={"op": 1, "address": USER, "data": [5, 7]}).json()  # fmt: skip
    assert run["status"] == "complete", run
    read = http.post(f"/fpga/{fpga}/run", params={"wait": 20},
                     json={"op": 2, "address": USER, "length": 3}).json()  # fmt: skip
    assert read["result"]["data"] == [5, 7, 12], read
    stranded = http.post("/submit", files=design, data={"tags": "h2"}).json()
    assert stranded["fpga_id"] is None and stranded["queue_position"] == 0
    time.sleep(1)
    assert http.get(f"/jobs/{stranded['job_id']}").json()["fpga_id"] is None
