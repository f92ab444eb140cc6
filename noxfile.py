"""Sessions: ``tests``, ``twins``, ``lint`` and ``typing`` by default; ``slow``, ``hil``
and ``bench`` on demand."""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "twins", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
#: The project's packages, each a folder of the repository, installed as fpgalab.<name>.
PACKAGES = ("service", "backends", "sim", "hil")
LINT_PATHS = [*PACKAGES, "tests", "benches", "noxfile.py"]


def tests_impl(session: nox.Session, *pytest_args: str) -> None:
    session.install("-e", ".[lab,test]")
    session.run("pytest", *pytest_args, *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default test tiers, in parallel."""
    tests_impl(session, "-n", "2")


@nox.session(python=PYTHON)
def twins(session: nox.Session) -> None:
    """The end-to-end suite on the hardware backend, against twins (simulated boards
    behind openFPGALoader over XVC and UARTBone over TCP)."""
    tests_impl(session, "-n", "2", "--backend", "hardware", "tests/e2e")


@nox.session(python=PYTHON)
def slow(session: nox.Session) -> None:
    """The slow tier: full ECP5 bitstream builds with the open toolchain."""
    tests_impl(session, "--run-slow", "-m", "slow")


@nox.session(python=PYTHON)
def hil(session: nox.Session) -> None:
    """The end-to-end suite against a real lab: ``nox -s hil -- --lab lab.toml``."""
    if not any(arg == "--lab" or arg.startswith("--lab=") for arg in session.posargs):
        session.skip("no lab file: run `nox -s hil -- --lab lab.toml` (see docs/lab.md)")
    tests_impl(session, "--backend", "hardware", "tests/e2e")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    """mypy (strict) on fpgalab.service and fpgalab.backends. mypy resolves modules by
    folder, and the folders are mapped under ``fpgalab`` only when installed: it reads
    them through a tree of links named as they are imported."""
    session.install("-e", ".[lab,test]", "mypy")
    tree = Path(session.create_tmp()) / "mypy-tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "fpgalab").mkdir(parents=True)
    for package in PACKAGES:
        (tree / "fpgalab" / package).symlink_to(Path(package).resolve())
    (tree / "fpgalab" / "client").symlink_to(Path("service/client").resolve())
    (tree / "fpgalab" / "__init__.py").symlink_to(Path("service/client/_top/__init__.py").resolve())
    session.run("mypy", env={"MYPYPATH": str(tree)})


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """API latency/throughput beside a bare FastAPI endpoint, then the live views (events
    to 100 clients beside one, their CPU and memory, the live log beside XRANGE, a board
    snapshot beside GET /fpga), then a job accepted once a replica has it beside once the
    primary has it (FPGALAB_REDIS_WAIT_REPLICAS), then the simulated lab (builds, reads,
    bulk words/s, memory) beside its raw baselines, then the hardware backend against a
    twin beside the simulated backend and UARTBone's ceilings, then the build sandbox
    beside the same steps unsandboxed, then the client (waiting vs polling, one ops job
    vs a job each, a read as the client sees it vs on the lab, the command's start-up vs
    python's), the size of each install, pools at scale (1,000 boards beside 10:
    placements/s, submit to start, Redis work and memory per board and per job), and
    traces (the scope compiled in but off, and on, beside a board without it; VCD bytes
    per word; a capture's read-back on a twin beside UARTBone's ceiling at 1 Mbaud)."""
    session.install("-e", ".[lab,test]")
    session.run("python", "benches/api.py", *session.posargs)
    session.run("python", "benches/events.py")
    session.run("python", "benches/failover.py")
    session.run("python", "benches/sim_lab.py")
    session.run("python", "benches/client.py")
    session.run("python", "benches/install_size.py")
    session.run("python", "benches/hw_lab.py")
    session.run("python", "benches/sandbox.py")
    session.run("python", "benches/scale.py")
    session.run("python", "benches/trace.py", "--twin")


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """The simulated lab under many clients while simulators, the worker, Redis and the
    API are killed at random: 1 min without faults, then 10 with them (pass arguments
    after --, e.g. ``-- --minutes 2``). Fails if a job is lost or an answer is wrong."""
    session.install("-e", ".[lab,test]")
    session.run("python", "benches/soak.py", *session.posargs)
