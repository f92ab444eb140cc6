"""Benchmarks of the simulated lab below the API: builds, round trips, bulk words/s,
memory; each beside its baseline. ``python benches/sim_backend.py [--boards N] [--json]``.

Runs in a fresh temporary data folder (cold cache, cold ccache) unless ``--root``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fpgalab.backends.base import Design, Op, Transaction
from fpgalab.backends.sim import SimBackend
from fpgalab.hil import procs
from fpgalab.sim.board import to_bytes
from fpgalab.sim.protocol import (
    Command,
    Status,
)
from fpgalab.sim.toolchain import find
from fpgalab.sim.verilator import TOP

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples"
SRAM = 0x0100_0000
SCRATCH = 0x4


def _quiet(line: str) -> None:
    pass


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_us": round(1e6 * statistics.median(samples), 1),
        "p99_us": round(1e6 * samples[int(0.99 * (len(samples) - 1))], 1),
    }


def bench_builds(sim: SimBackend, root: Path) -> dict[str, Any]:
    """Build times; the raw Verilator compile (no ccache, no cache) is the baseline."""
    out: dict[str, Any] = {}
    source = (EXAMPLES / "accumulator.py").read_bytes()
    # Cold: an empty build cache and an empty ccache.
    out["cold_base_soc_s"], base = _timed(sim.builder.base, _quiet)
    out["new_design_warm_ccache_s"], _ = _timed(sim.build, Design("accumulator.py", source), _quiet)
    out["cached_same_design_s"], _ = _timed(sim.build, Design("again.py", source), _quiet)
    changed = source.replace(b"0xC0FFEE01", b"0xC0FFEE02")
    out["changed_design_warm_ccache_s"], _ = _timed(
        sim.build, Design("changed.py", changed), _quiet
    )
    verilog = (EXAMPLES / "accumulator.v").read_bytes()
    out["verilog_design_warm_ccache_s"], _ = _timed(
        sim.build, Design("accumulator.v", verilog), _quiet
    )
    out["raw_verilator_compile_s"] = raw_verilator(base.folder, root / "raw")
    return {k: round(v, 3) for k, v in out.items()}


def raw_verilator(src_folder: Path, build_dir: Path) -> float:
    """cocotb's runner on the base SoC's Verilog, no ccache: the baseline compile."""
    tools = find()
    request = {
        "top": TOP, "src": str(build_dir / "src"), "build_dir": str(build_dir / "model"),
        "sources": [str(src_folder / "src" / f"{TOP}.v")], "limits": {},
    }  # fmt: skip
    (build_dir / "src").mkdir(parents=True)
    (build_dir / "req.json").write_text(json.dumps(request))
    env = procs.clean_env({"MAKEFLAGS": f"PYTHON3={tools.python}"}, path=tools.build_path())
    done = procs.run(
        [tools.python, "-m", "fpgalab.sim.verilate", str(build_dir / "req.json")],
        cwd=build_dir, env=env, timeout=600, log=_quiet,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError("\n".join(done.tail))
    return done.seconds


def bench_bus(sim: SimBackend, board: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sim.reset(board, _quiet)
    raw = sim.board(board)
    samples = [_timed(raw.request, Command.READ, SCRATCH, 1)[0] for _ in range(2000)]
    out["raw_socket_read"] = _percentiles(samples)
    samples = [
        _timed(sim.transact, board, Transaction(Op.READ, SCRATCH, length=1))[0] for _ in range(2000)
    ]
    out["backend_transact_read"] = _percentiles(samples)
    samples = [_timed(raw.request, Command.RAW_READ, SCRATCH, 1)[0] for _ in range(500)]
    out["raw_cocotb_per_clock_read"] = _percentiles(samples)

    words = tuple(random.getrandbits(32) for _ in range(65536))
    took, result = _timed(sim.transact, board, Transaction(Op.WRITE, SRAM, words))
    assert result.ok, result.error
    out["bulk_write_65536_words_per_s"] = round(65536 / took)
    took, result = _timed(sim.transact, board, Transaction(Op.READ, SRAM, length=65536))
    assert result.ok and tuple(result.data) == words, "bulk read-back mismatch"
    out["bulk_read_65536_words_per_s"] = round(65536 / took)
    n = 16384
    took, reply = _timed(raw.request, Command.RAW_WRITE, SRAM, n, to_bytes(words[:n]))
    assert reply.status is Status.OK
    out["raw_cocotb_write_words_per_s"] = round(n / took)
    took, reply = _timed(raw.request, Command.RAW_READ, SRAM, n)
    assert reply.status is Status.OK and tuple(reply.data) == words[:n]
    out["raw_cocotb_read_words_per_s"] = round(n / took)
    return out


def bench_memory(sim: SimBackend, boards: int) -> dict[str, Any]:
    for board in range(boards):
        sim.reset(board, _quiet)
    time.sleep(1.0)
    rss = [sim.board(b).rss_bytes() or 0 for b in range(boards)]
    ticks_before = [_cpu_ticks(sim.board(b).pid) for b in range(boards)]
    time.sleep(2.0)
    ticks = sum(
        _cpu_ticks(sim.board(b).pid) - t for b, t in zip(range(boards), ticks_before, strict=True)
    )
    return {
        "boards": boards,
        "idle_board_rss_mib": round(statistics.median(rss) / 2**20, 1),
        "all_boards_rss_mib": round(sum(rss) / 2**20, 1),
        "idle_cpu_percent_all_boards": round(ticks / os.sysconf("SC_CLK_TCK") / 2.0 * 100, 2),
    }


def _cpu_ticks(pid: int | None) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benches/sim_backend.py")
    parser.add_argument("--root", type=Path, help="data folder (default: a fresh temporary one)")
    parser.add_argument("--boards", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fpgalab-bench-") as tmp:
        root = args.root or Path(tmp)
        sim = SimBackend(root / "sim", run_dir=root / "boards")
        try:
            results = {
                "builds": bench_builds(sim, root),
                "bus": bench_bus(sim, 0),
                "memory": bench_memory(sim, args.boards),
            }
        finally:
            sim.close()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for section, values in results.items():
            print(f"[{section}]")
            for key, value in values.items():
                print(f"  {key:<36} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
