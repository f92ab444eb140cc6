"""Build step 1, run as a sandboxed child (``python -m sim.elaborate request.json``):
load the user's design into the SoC and write its gateware sources and csr.json.

Two targets: the simulation (no ``platform`` in the request: Verilog and memory files
for Verilator), or a board (``platform``: ``{"name": ..., "device": ...}``, see
``hil.gateware.platforms``): LiteX's ``Builder`` writes the gateware folder (Verilog, memory
files, constraints, the yosys script and the build script) and runs no tool; the
parent runs them (``hil.build.ecp5``).

This is where a user's Python runs. The child sets its own resource limits before
it loads anything, reads the design from ``input`` (a folder it cannot write), works in
its own scratch folder and reports through ``result.json``: ``{"ok": true, ...}`` or
``{"ok": false, "error": one line}`` (exit status 2); any other failure is ours (exit
status 1, with a traceback in the output). It hands ``result.json`` and what it wrote
back over its result pipe (``hil.build.bundle``), which the parent reads as hostile input:
the design's code ran in this very process, and may have written anything there.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from fpgalab.hil.build import bundle
from fpgalab.hil.build.sandbox import apply_limits

DESIGN_ERROR = 2


def _failed(exc: Exception) -> dict[str, Any]:
    print(traceback.format_exc().rstrip(), flush=True)
    return {"ok": False, "error": f"the SoC with this design does not elaborate: "
                                  f"{type(exc).__name__}: {exc}".splitlines()[0]}  # fmt: skip


def elaborate(request: dict[str, Any], out: Path) -> dict[str, Any]:
    from fpgalab.hil.gateware.design import DesignLoadError, load
    from fpgalab.hil.gateware.soc import SoCConfig

    config = SoCConfig(**request["config"])
    design = None
    language = None
    name = request.get("design")
    if name:
        language = request["language"]
        print(f"elaborate: loading {name} ({language})", flush=True)
        try:
            design, language = load(name, (Path(request["input"]) / name).read_bytes())
        except DesignLoadError as exc:
            if exc.details:
                print(exc.details.rstrip(), flush=True)
            return {"ok": False, "error": str(exc)}

    print(f"elaborate: building the SoC ({request['ident']})", flush=True)
    if request.get("platform"):
        return _for_board(request, config, design, name if language == "verilog" else None, out)
    return _for_simulation(request, config, design, out)


def _for_simulation(request: dict[str, Any], config: Any, design: Any, out: Path) -> dict[str, Any]:
    from fpgalab.hil.gateware.soc import LabSoC, VerilogPlatform, csr_json

    try:
        platform = VerilogPlatform()
        soc = LabSoC(platform, config, design=design, ident=request["ident"])
        soc.finalize()
        conv = platform.get_verilog(soc, name=request["top"])
    except Exception as exc:
        if design is None:
            raise  # the base SoC does not elaborate: our bug
        return _failed(exc)

    (out / f"{request['top']}.v").write_text(conv.main_source)
    for filename, content in conv.data_files.items():
        (out / filename).write_text(content)
    mem_map = csr_json(soc)
    (out / "csr.json").write_text(json.dumps(mem_map, indent=2, sort_keys=True))
    print(f"elaborate: wrote {request['top']}.v ({len(conv.main_source) // 1024} KiB)", flush=True)
    _print_regions(mem_map)
    return {"ok": True, "data_files": sorted(conv.data_files)}


def _for_board(
    request: dict[str, Any], config: Any, design: Any, verilog: str | None, out: Path
) -> dict[str, Any]:
    """LiteX's Builder for the board, gateware only: sources, constraints and scripts."""
    from litex.soc.integration.builder import Builder

    from fpgalab.hil.gateware.platforms import get_platform, make_crg, make_platform
    from fpgalab.hil.gateware.soc import LabSoC

    board = get_platform(request["platform"]["name"])
    gateware = out / "gateware"
    gateware.mkdir(parents=True, exist_ok=True)
    try:
        platform = make_platform(board, request["platform"]["device"])
        if verilog is not None:
            # Next to LiteX's own files: the tools see nothing outside this folder.
            shutil.copyfile(Path(request["input"]) / verilog, gateware / verilog)
            platform.add_source(str((gateware / verilog).resolve()))
        soc = LabSoC(platform, config, design=design, ident=request["ident"],
                     crg=make_crg(platform, board))  # fmt: skip
        builder = Builder(
            soc, output_dir=str(out.resolve()), gateware_dir=str(gateware.resolve()),
            compile_software=False, compile_gateware=False,
            csr_json=str((out / "csr.json").resolve()),
        )  # fmt: skip
        # timingstrict: no --timing-allow-fail in the build script (LiteX's default).
        builder.build(build_name=request["top"], timingstrict=True)
    except Exception as exc:
        if design is None:
            raise
        return _failed(exc)

    mem_map = json.loads((out / "csr.json").read_text())
    files = sorted(p.name for p in gateware.iterdir() if p.is_file())
    print(f"elaborate: wrote the gateware for {board.name} ({', '.join(files)})", flush=True)
    _print_regions(mem_map)
    return {"ok": True, "gateware": "gateware", "files": files}


def _print_regions(mem_map: dict[str, Any]) -> None:
    for region, info in sorted(mem_map["memories"].items(), key=lambda kv: kv[1]["base"]):
        print(f"elaborate:   {region:<6} {info['base']:#010x}  {info['size']:#x} bytes", flush=True)


def _keep_output_as_written() -> None:
    """LiteX calls ``colorama.init()`` as it is imported: off Windows that wraps stdout to
    strip escape sequences, and crashes on an OSC one (a window title) that a design
    prints. A design's output must never crash the lab's code: stdout stays unwrapped
    (the lab treats what a build prints as untrusted text anyway)."""
    try:
        import colorama
    except ImportError:
        return
    colorama.init = lambda *args, **kwargs: None


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    apply_limits(request["limits"])
    _keep_output_as_written()
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s: %(message)s")
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    result = elaborate(request, out)
    # The result goes from memory: a design may have filled the scratch folder.
    outcome = {"result.json": json.dumps(result).encode()}
    bundle.send(out, _outputs(request, result), outcome)
    return 0 if result["ok"] else DESIGN_ERROR


def _outputs(request: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """What goes back to the parent besides the result: on success, what the build needs."""
    if not result["ok"]:
        return []
    if request.get("platform"):
        return ["csr.json", *(f"{result['gateware']}/{f}" for f in result["files"])]
    return [f"{request['top']}.v", "csr.json", *result["data_files"]]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
