"""Verilator models of the SoC (with or without a user's design), built through the
shared pipeline (``hil.build.pipeline``: key, cache, elaboration) and kept in its
content-addressed cache. This adds the compile: the elaborated Verilog into a Verilator
model with cocotb's runner (``sim.verilate``, a sandboxed child that sees the build's
sources read-only and writes only the model's folder and the compiler cache).

Under ``root``, besides the pipeline's folders::

    builds/<key>/src/      Verilog, memory files, csr.json, the design file
    builds/<key>/model/    the Verilator model (the simulator binary is model/lab_soc)
    ccache/                the C++ compiler cache
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from fpgalab.hil import procs
from fpgalab.hil.build import bundle
from fpgalab.hil.build.cache import build_info
from fpgalab.hil.build.cgroups import TreeLimits
from fpgalab.hil.build.errors import ToolchainError, overflow_message, stopped, with_bound
from fpgalab.hil.build.pipeline import (
    CHILD_PACKAGES,
    SOURCES,
    TOP,
    Build,
    ImageBuilder,
    strip_dates,
)
from fpgalab.hil.build.sandbox import Confinement, Limits, bounded, describe_bounds
from fpgalab.hil.gateware.config import SIM_CONFIG, SoCConfig
from fpgalab.sim.toolchain import SIM, Toolchain, ToolchainMissing, find

#: The compile runs Verilator, make -j2 and g++ (cc1plus: ~330 MB) on the generated Verilog.
COMPILE_LIMITS = Limits(address_space=1280 << 20, file_size=1 << 30, open_files=1024,
                        processes=64)  # fmt: skip
#: Its whole process tree: two compilers at once, Verilator, make.
COMPILE_TREE = TreeLimits(memory=1536 << 20, processes=COMPILE_LIMITS.processes + 8, cpus=2.0)
#: Its private /tmp (g++'s temporary files; memory-backed).
COMPILE_SCRATCH = 256 << 20
#: What a simulation elaboration may hand back (``hil.build.bundle``): its result, the
#: SoC's Verilog, the memory map and LiteX's memory initialisation files.
OUTPUTS = re.compile(rf"result\.json|csr\.json|{TOP}\.v|[A-Za-z0-9_][A-Za-z0-9_.-]*\.init")


@dataclass(frozen=True)
class Model:
    """A built, cached Verilator model of the SoC."""

    key: str
    folder: Path
    ident: str
    language: str | None
    cached: bool = False

    @property
    def executable(self) -> Path:
        return self.folder / "model" / TOP

    @property
    def toplevel(self) -> str:
        return TOP

    def csr(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.folder / "src" / "csr.json").read_text())
        return result


def strip_verilog(text: str, src: Path) -> str:
    """Drop LiteX's date stamps, and make ``$readmemh`` paths absolute (they resolve
    against the simulator's working folder otherwise)."""
    text = strip_dates(text)
    return re.sub(r'\$readmem([hb])\("([^"/]+)"', lambda m: f'$readmem{m[1]}("{src / m[2]}"', text)


class Builder(ImageBuilder[Model]):
    """Builds and caches Verilator models of the SoC ``soc``."""

    prefix: ClassVar[str] = "sim"
    memory_per_build: ClassVar[int] = COMPILE_TREE.memory or 0

    def __init__(
        self, root: Path, soc: SoCConfig = SIM_CONFIG, *, limits: Limits | None = None,
        **options: Any,
    ) -> None:  # fmt: skip
        """``limits``: the compile's (default ``COMPILE_LIMITS`` with the build's timeout
        + 5 CPU seconds); ``options``: the pipeline's (``ImageBuilder``)."""
        super().__init__(root, **options)
        self.soc = soc
        self.ccache = self.root / "ccache"
        self.limits = limits or replace(COMPILE_LIMITS, cpu=self.cpu_seconds)

    def toolchain(self) -> Toolchain:
        try:
            return find()
        except ToolchainMissing as exc:
            raise ToolchainError(f"simulation toolchain unavailable: {exc}") from exc

    # The pipeline's questions ------------------------------------------------------------------

    def sources(self) -> tuple[Path, ...]:
        return (*SOURCES, SIM / "verilate.py", SIM / "verilator.py")

    def material(self) -> dict[str, Any]:
        return {"soc": self.soc.to_json(), "tools": self.toolchain().versions}

    def default_ident(self, key: str, user: bool) -> str:
        return f"fpgalab sim {'design ' + key[:12] if user else 'base SoC'}"

    def lookup(self, key: str) -> Model | None:
        info = build_info(self.builds, key)
        if info is None or not (self.builds / key / "model" / TOP).exists():
            return None
        return Model(key, self.builds / key, info["ident"], info.get("language"), cached=True)

    # The steps ----------------------------------------------------------------------------------

    def make(self, build: Build) -> Model:
        tools = self.toolchain()
        model = Model(build.key, build.folder, build.ident, build.language)
        src = build.folder / "src"
        what = f"{build.filename} as {build.ident!r}" if build.user else "the base SoC"
        build.log(f"sim: building {what} (key {build.key[:12]})")

        build.log(f"sim: step 1/2: elaborate the SoC with LiteX ({self.describe_elaboration()})")
        files = build.elaborate({"config": self.soc.to_json()}, OUTPUTS, tools.python)
        result = json.loads(files["result.json"])
        data_files = result.get("data_files")
        if not isinstance(data_files, list) or not all(
            isinstance(name, str) and name.endswith(".init") and name in files
            for name in data_files
        ):
            raise build.fail("the elaboration handed back a result that does not add up")
        outputs = {name: files[name] for name in data_files}
        verilog = files[f"{TOP}.v"].decode("utf-8", "replace")
        outputs[f"{TOP}.v"] = strip_verilog(verilog, src).encode()
        outputs["csr.json"] = files["csr.json"]
        bundle.write_into(src, outputs)

        build.log(f"sim: step 2/2: compile the model with Verilator {tools.versions['verilator']} "
                  f"({describe_bounds(COMPILE_TREE)})")  # fmt: skip
        self.compile(build, model, tools)

        info = {
            "key": build.key, "ident": build.ident, "language": build.language,
            "filename": build.filename, "seconds": round(build.seconds(), 2),
            "versions": tools.versions, "soc": self.soc.to_json(), "created": time.time(),
        }  # fmt: skip
        (build.folder / "build.json").write_text(json.dumps(info, indent=2))
        self.sandbox.reclaim(build.folder)  # a finished build is read-only, the worker's
        build.log(f"sim: model built in {build.seconds():.1f} s")
        return model

    def compile(self, build: Build, model: Model, tools: Toolchain) -> None:
        """Step 2: Verilator. It writes only the model's folder (and the compiler cache);
        what it leaves there is taken back before anything runs it."""
        src = build.folder / "src"
        sources = [str(src / f"{TOP}.v")]
        if build.language == "verilog" and build.design_name is not None:
            sources.append(str(src / build.design_name))
        compiled = build.folder / "model"
        compiled.mkdir()
        request = {"top": TOP, "src": str(src), "sources": sources,
                   "build_dir": str(compiled), "limits": self.limits.to_json()}  # fmt: skip
        (src / "verilate.json").write_text(json.dumps(request))
        errors: list[str] = []

        def tee(line: str) -> None:
            if line.startswith("%Error") and len(errors) < 20:
                errors.append(line)
            build.log(line)

        env = procs.clean_env(tools.build_env(self.ccache, self.root), path=tools.build_path())
        env.update(HOME=str(compiled), TMPDIR=str(self.sandbox.workdir(compiled)))
        self.ccache.mkdir(parents=True, exist_ok=True)
        jail = Confinement(writable=(compiled, self.ccache),
                           readable=(*CHILD_PACKAGES, SIM, src),
                           processes=self.limits.processes, tmp_size=COMPILE_SCRATCH)  # fmt: skip
        argv = [tools.python, "-m", "fpgalab.sim.verilate", str(src / "verilate.json")]
        with bounded("compile", COMPILE_TREE) as group:
            done = procs.run(
                self.confined(argv, compiled, jail, group), cwd=compiled, env=env,
                timeout=build.left(), log=tee, max_output=self.max_output, group=group,
            )  # fmt: skip
        self.sandbox.reclaim(compiled)
        if done.timed_out:
            raise build.fail(f"the Verilator build took longer than {self.timeout:.0f} s")
        if done.overflowed:
            raise build.fail(overflow_message("the Verilator build", self.max_output))
        if done.returncode == 0 and model.executable.is_file():
            return
        if errors:
            raise build.fail(with_bound(errors[0].replace(f"{src}/", ""), done))
        raise build.fail(stopped("the Verilator compile", done))
