"""Hostile designs through the simulated backend: each fails its own build with a clear
one-line error, learns nothing it should not, and leaves the lab serving (a normal
design builds and runs on a board right after).

The hostile builds get their own data folder (a secret file and another "build" in it,
planted by the test) and tight limits; the normal build uses the session's cache. The
tests need the build sandbox (bubblewrap); without it they skip, except in CI.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from fpgalab.backends.base import BackendUnavailable, Design, DesignError, Op, Transaction
from fpgalab.backends.sim import SimBackend
from fpgalab.hil.build import sandbox as sandbox_module
from fpgalab.hil.build.pipeline import ELABORATION_LIMITS
from fpgalab.hil.build.sandbox import Sandbox
from fpgalab.service.settings import Settings
from fpgalab.sim.verilator import Builder
from tests.designs import PORTS
from tests.helpers import REPO, Log

TIMEOUT = 6.0
MAX_OUTPUT = 1 << 20
USER = 0x2000_0000
DESIGN_ID = 0xC0FFEE01
SECRET = "s3cr3t-" + uuid.uuid4().hex


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The hostile lab's data folder, with an API keys file and another user's build in it."""
    root = tmp_path / "lab"
    (root / "builds" / ("0" * 64) / "src").mkdir(parents=True)
    (root / "builds" / ("0" * 64) / "src" / "theirs.py").write_text(f"# {SECRET}\n")
    (root / "api-keys").write_text(f"alice={SECRET}:admin\n")
    return root


@pytest.fixture
def hostile(data_dir: Path, tmp_path: Path, sandbox: Sandbox) -> Iterator[SimBackend]:
    """A simulated lab for hostile designs: short build timeout, 1 MiB output cap."""
    backend = SimBackend(data_dir, build_timeout=TIMEOUT, run_dir=tmp_path / "boards")
    backend.builder = Builder(
        data_dir, timeout=TIMEOUT, max_output=MAX_OUTPUT, sandbox=sandbox,
        elaboration_limits=replace(ELABORATION_LIMITS, cpu=int(TIMEOUT) + 5),
    )  # fmt: skip
    yield backend
    backend.close()


def submit(lab: SimBackend, name: str, source: str) -> tuple[str, Log]:
    """Build ``source``; the build must fail as the design's fault, with a one-line error."""
    log = Log()
    with pytest.raises(DesignError) as failed:
        lab.build(Design(name, source.encode()), log)
    error = str(failed.value)
    assert error and "\n" not in error
    return error, log


def left_running(folder: Path) -> list[int]:
    """Processes whose working folder is inside ``folder``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(folder)):
                found.append(int(pid))
    return found


@pytest.fixture
def lab_still_serves(sim: SimBackend, hostile: SimBackend, data_dir: Path) -> Iterator[None]:
    """After the test: nothing of the hostile build runs or lingers, and the lab builds a
    normal design and runs it on a board."""
    yield
    assert left_running(data_dir) == []
    work = data_dir / "work"
    assert not work.exists() or not any(work.iterdir())
    source = (REPO / "docs" / "examples" / "accumulator.v").read_bytes()
    built = sim.build(Design("accumulator.v", source), Log())
    sim.program(0, built, Log())
    reply = sim.transact(0, Transaction(Op.READ, USER + 16, length=1))
    assert reply.ok and reply.data == [DESIGN_ID]


pytestmark = [pytest.mark.sim, pytest.mark.usefixtures("lab_still_serves")]


# Files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("project", "writer.py:1: OSError: [Errno 30] Read-only file system"),
        ("data", "writer.py:1: FileNotFoundError"),
        ("tmp", "writer.py:2: RuntimeError: the write went through"),
    ],
)
def test_writing_outside_its_folder_fails(
    hostile: SimBackend, data_dir: Path, where: str, expected: str
) -> None:
    """Writes to the project or the lab's data fail; one to /tmp lands in the sandbox's own
    /tmp, and the host's never sees the file."""
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    target = {
        "project": REPO / "hil" / f"{name}.py",  # bound read-only: it imports from there
        "data": data_dir / "builds" / f"{name}.txt",
        "tmp": Path("/tmp") / f"{name}.txt",
    }[where]
    source = (
        f"open({str(target)!r}, 'w').write('owned')\nraise RuntimeError('the write went through')\n"
    )
    error, _ = submit(hostile, "writer.py", source)
    assert error.startswith(expected)
    assert not target.exists()


@pytest.mark.parametrize(
    "what",
    ["api-keys", "builds/" + "0" * 64 + "/src/theirs.py", "environment"],
)
def test_reading_secrets_fails(
    hostile: SimBackend, data_dir: Path, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys file, another user's build and the worker's environment stay unseen: the
    design's attempt to show them fails, and the secret appears nowhere."""
    monkeypatch.setenv("FPGALAB_API_KEYS", f"alice={SECRET}")  # in the worker's environment
    if what == "environment":
        source = (
            "import os\n"
            "seen = [dict(os.environ)]\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n"
            "        seen.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except OSError:\n"
            "        pass\n"
            "raise RuntimeError(repr(seen))\n"
        )
    else:
        source = f"raise RuntimeError(open({str(data_dir / what)!r}).read())\n"
    error, log = submit(hostile, "thief.py", source)
    expected = "RuntimeError" if what == "environment" else "FileNotFoundError"
    assert error.startswith("thief.py:") and expected in error
    assert SECRET not in error and SECRET not in log.text()


def test_verilog_include_of_a_host_file_fails(hostile: SimBackend) -> None:
    """`include "/etc/passwd"` fails to find the file; none of it reaches the error or log."""
    source = '`include "/etc/passwd"\n' + PORTS + "endmodule\n"
    error, log = submit(hostile, "include.v", source)
    assert "/etc/passwd" in error
    for line in Path("/etc/passwd").read_text().splitlines()[:3]:
        assert line not in error and line not in log.text()


def test_a_designs_output_never_crashes_the_elaboration(sim: SimBackend) -> None:
    """A design printing an OSC sequence (a window title), which crashed LiteX's colorama
    wrapper, builds: its output goes to the log as it was printed."""
    source = (REPO / "docs" / "examples" / "accumulator.py").read_text()
    log = Log()
    built = sim.build(Design("title.py", ('print("\\x1b]0;t\\x07")\n' + source).encode()), log)
    assert built.key and "\x1b]0;t\x07" in log.text()


# Network -----------------------------------------------------------------------------------------


def test_connecting_to_a_loopback_listener_fails(hostile: SimBackend) -> None:
    """The design has its own network: a listener on the host's 127.0.0.1 gets no connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        error, _ = submit(hostile, "caller.py", source)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert error.startswith("caller.py:2: ConnectionRefusedError")


# Resources ---------------------------------------------------------------------------------------


def test_a_fork_bomb_is_contained(hostile: SimBackend) -> None:
    """Forking without end meets the process cap, then the build's timeout; all of it dies."""
    source = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    )
    error, _ = submit(hostile, "bomb.py", source)
    assert error == f"elaboration took longer than {TIMEOUT:.0f} s"


def test_allocating_without_end_fails(hostile: SimBackend) -> None:
    """Memory past the elaboration's address-space limit is refused: MemoryError."""
    source = "hoard = []\nwhile True:\n    hoard.append(bytearray(16 << 20))\n"
    error, _ = submit(hostile, "hog.py", source)
    assert error.startswith("hog.py:3: MemoryError")


def test_looping_forever_times_out(hostile: SimBackend) -> None:
    """A design that never returns is stopped at the build's timeout."""
    error, _ = submit(hostile, "spin.py", "while True:\n    pass\n")
    assert error == f"elaboration took longer than {TIMEOUT:.0f} s"


def test_printing_without_end_is_stopped(hostile: SimBackend) -> None:
    """A design printing gigabytes is killed past the output cap; its log stays bounded."""
    source = "while True:\n    print('x' * 1000)\n"
    error, log = submit(hostile, "chatty.py", source)
    assert error == "elaboration printed more than 1 MiB of output and was stopped"
    assert sum(len(line) + 1 for line in log) < 2 * MAX_OUTPUT


# Settings ----------------------------------------------------------------------------------------


def test_a_bad_sandbox_setting_fails_builds_clearly(data_dir: Path, tmp_path: Path) -> None:
    """An unknown sandbox mode is refused by the lab's settings at start; given to a backend
    directly, it fails each build as the lab's fault, naming the setting."""
    with pytest.raises(ValidationError, match="sandbox"):
        Settings(sandbox="nsjail")  # type: ignore[arg-type]
    lab = SimBackend(data_dir, build_timeout=TIMEOUT, run_dir=tmp_path / "boards",
                     sandbox="nsjail")  # fmt: skip
    try:
        with pytest.raises(
            BackendUnavailable, match=r"^FPGALAB_SANDBOX='nsjail': use bwrap or none$"
        ):
            lab.build(Design("spin.py", b"while True:\n    pass\n"), Log())
    finally:
        lab.close()


def test_a_missing_bwrap_fails_builds_clearly(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without bwrap a build fails saying what to install, or how to go without."""

    def fake_tools() -> dict[str, str | None]:
        """Test double of ``hil.build.sandbox._tools``: a machine without bubblewrap."""
        return {"bwrap": None, "setpriv": "/usr/bin/setpriv", "prlimit": "/usr/bin/prlimit"}

    monkeypatch.setattr(sandbox_module, "_tools", fake_tools)
    sandbox_module._probe.cache_clear()
    lab = SimBackend(data_dir, build_timeout=TIMEOUT, run_dir=tmp_path / "boards")
    try:
        with pytest.raises(BackendUnavailable) as failed:
            lab.build(Design("spin.py", b"while True:\n    pass\n"), Log())
    finally:
        lab.close()
        sandbox_module._probe.cache_clear()
    assert str(failed.value) == (
        "build sandbox unavailable: bwrap not found: install bubblewrap (apt-get install "
        "bubblewrap), or set FPGALAB_SANDBOX=none to build unsandboxed"
    )
