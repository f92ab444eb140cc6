"""Build step 1, run as a sandboxed child (``python -m sim.elaborate request.json``):
load the user's design into the SoC and write its Verilog, memory files and csr.json.

This is where a user's Python runs. The child sets its own resource limits before
it loads anything, works in its own folder, and reports through ``result.json``:
``{"ok": true, ...}`` or ``{"ok": false, "error": one line}`` (exit status 2); any
other failure is ours (exit status 1, with a traceback in the output).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from sim.sandbox import apply_limits

DESIGN_ERROR = 2


def _write_result(out: Path, result: dict[str, Any]) -> None:
    (out / "result.json").write_text(json.dumps(result))


def elaborate(request: dict[str, Any], out: Path) -> dict[str, Any]:
    from hil.design import DesignLoadError, load
    from hil.soc import LabSoC, SoCConfig, VerilogPlatform, csr_json

    config = SoCConfig(**request["config"])
    design = None
    name = request.get("design")
    if name:
        language = request["language"]
        print(f"elaborate: loading {name} ({language})", flush=True)
        try:
            design, language = load(name, Path(name).read_bytes())
        except DesignLoadError as exc:
            if exc.details:
                print(exc.details.rstrip(), flush=True)
            return {"ok": False, "error": str(exc)}

    print(f"elaborate: building the SoC ({request['ident']})", flush=True)
    try:
        platform = VerilogPlatform()
        soc = LabSoC(platform, config, design=design, ident=request["ident"])
        soc.finalize()
        conv = platform.get_verilog(soc, name=request["top"])
    except Exception as exc:
        if design is None:
            raise  # the base SoC does not elaborate: our bug
        print(traceback.format_exc().rstrip(), flush=True)
        return {"ok": False, "error": f"the SoC with this design does not elaborate: "
                                      f"{type(exc).__name__}: {exc}".splitlines()[0]}  # fmt: skip

    (out / f"{request['top']}.v").write_text(conv.main_source)
    for filename, content in conv.data_files.items():
        (out / filename).write_text(content)
    mem_map = csr_json(soc)
    (out / "csr.json").write_text(json.dumps(mem_map, indent=2, sort_keys=True))
    print(f"elaborate: wrote {request['top']}.v ({len(conv.main_source) // 1024} KiB)", flush=True)
    for region, info in sorted(mem_map["memories"].items(), key=lambda kv: kv[1]["base"]):
        print(f"elaborate:   {region:<6} {info['base']:#010x}  {info['size']:#x} bytes", flush=True)
    return {"ok": True, "data_files": sorted(conv.data_files)}


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    apply_limits(request["limits"])
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s: %(message)s")
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    result = elaborate(request, out)
    _write_result(out, result)
    return 0 if result["ok"] else DESIGN_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv))
