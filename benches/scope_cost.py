"""What the scope (``hil.gateware.scope``) costs when it is compiled in but not armed.

``python benches/scope_cost.py sim``: the base SoC with and without the scope on two
simulated boards of one backend, measured in alternating rounds: a single read's p50 and
bulk words/s, and the ratios (with / without).

``python benches/scope_cost.py ecp5 [--depth N ...] [--probed]``: the base SoC's bitstream
for the ULX3S (LFE5U-25F) without the scope and with it at each depth: LUTs, flip-flops,
DP16KD block RAMs and fmax from nextpnr's report (slow: a bitstream each); ``--probed``
adds a design with the most probe bits a design may have (64) at each depth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fpgalab.backends.base import Op, Transaction
from fpgalab.backends.sim import SimBackend
from fpgalab.hil.gateware.config import HW_CONFIG, SIM_CONFIG

SRAM = 0x0100_0000
SCRATCH = 0x4
#: Four 16-bit counters as probes: 64 bits, the most a design may show the scope.
PROBED = b"""
from litex.soc.interconnect import wishbone
from migen import If, Module, Signal

class Design(Module):
    def __init__(self):
        self.bus = bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        counters = [Signal(16) for _ in range(4)]
        self.probes = {f"c{i}": c for i, c in enumerate(counters)}
        self.sync += [c.eq(c + i + 1) for i, c in enumerate(counters)]
        self.sync += bus.ack.eq(bus.cyc & bus.stb & ~bus.ack)
        self.comb += bus.dat_r.eq(counters[0])
"""


def _quiet(line: str) -> None:
    pass


def bench_sim(root: Path, rounds: int) -> dict[str, Any]:
    with_scope = SimBackend(root / "with", run_dir=root / "with-boards")
    without = SimBackend(root / "without", run_dir=root / "without-boards")
    without.builder.soc = dataclasses.replace(SIM_CONFIG, scope_depth=0)
    backends = {"with_scope": with_scope, "without_scope": without}
    reads: dict[str, list[float]] = {name: [] for name in backends}
    bulk: dict[str, list[float]] = {name: [] for name in backends}
    words = tuple(random.getrandbits(32) for _ in range(65536))
    try:
        for sim in backends.values():
            sim.reset(0, _quiet)
            assert sim.transact(0, Transaction(Op.WRITE, SRAM, words)).ok
        for _ in range(rounds):
            for name, sim in backends.items():
                for _ in range(500):
                    started = time.perf_counter()
                    sim.transact(0, Transaction(Op.READ, SCRATCH))
                    reads[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                result = sim.transact(0, Transaction(Op.READ, SRAM, length=len(words)))
                bulk[name].append(len(words) / (time.perf_counter() - started))
                assert result.ok and tuple(result.data) == words
    finally:
        for sim in backends.values():
            sim.close()
    out: dict[str, Any] = {}
    for name in backends:
        out[name] = {
            "single_read_p50_us": round(1e6 * statistics.median(reads[name]), 1),
            "bulk_read_words_per_s": round(statistics.median(bulk[name])),
        }
    out["ratio_single_read_p50"] = round(
        out["with_scope"]["single_read_p50_us"] / out["without_scope"]["single_read_p50_us"], 3
    )
    out["ratio_bulk_words_per_s"] = round(
        out["with_scope"]["bulk_read_words_per_s"] / out["without_scope"]["bulk_read_words_per_s"],
        3,
    )
    return out


def bench_ecp5(root: Path, depths: list[int], probed: bool) -> dict[str, Any]:
    from fpgalab.hil.build.ecp5 import BitstreamBuilder

    out: dict[str, Any] = {}
    for depth in [0, *depths]:
        config = dataclasses.replace(HW_CONFIG, scope_depth=depth)
        builder = BitstreamBuilder(root / f"depth-{depth}", config=config)
        builds = {"base": lambda log, b=builder: b.base(log)}
        if probed:
            builds["probed"] = lambda log, b=builder: b.build("probed.py", PROBED, log)
        for name, build in builds.items():
            lines: list[str] = []
            started = time.perf_counter()
            build(lines.append)
            took = time.perf_counter() - started
            report = [line for line in lines if line.startswith("hw: ") and "LUTs" in line]
            out[f"{name}_scope_depth_{depth}"] = {"report": report, "build_s": round(took, 1)}
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benches/scope_cost.py")
    parser.add_argument("what", choices=("sim", "ecp5"))
    parser.add_argument("--root", type=Path, help="data folder (default: a fresh temporary one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--depth", type=int, action="append", help="ecp5: scope depths to build")
    parser.add_argument("--probed", action="store_true", help="ecp5: also a design with probes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fpgalab-scope-") as tmp:
        root = args.root or Path(tmp)
        if args.what == "sim":
            results = bench_sim(root, args.rounds)
        else:
            results = bench_ecp5(root, args.depth or [HW_CONFIG.scope_depth], args.probed)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
