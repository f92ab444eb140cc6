"""The hardware backend against a twin, each figure beside the simulated backend on the
same board model and beside UARTBone's theoretical ceiling, in the same run.

    .venv/bin/python benches/hw_lab.py [--reads 300] [--cache DIR]

Builds (or finds in ``--cache``) the base SoC's bitstream and a user design, timing
each build and its peak memory (the tools' RSS, from ``getrusage``); starts one twin and
a ``HardwareBackend`` on it (openFPGALoader over XVC, UARTBone over TCP), and a
``SimBackend`` board; then measures:

- the load of a bitstream (openFPGALoader + the identifier check);
- one single-word read, p50/p99, through each backend;
- bulk words/s of a write and a read of the whole SRAM through each backend;
- the wire-time ceiling of UARTBone at 115,200 and 1,000,000 baud for the same sizes.

The twin's clock runs as fast as Python feeds it a byte per cycle, so the twin is not
a stand-in for a real link's speed; the ceilings are.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fpgalab.backends.base import Design, Op, Transaction  # noqa: E402
from fpgalab.backends.hardware import HardwareBackend  # noqa: E402
from fpgalab.backends.sim import SimBackend  # noqa: E402
from fpgalab.hil.gateware.config import SCRATCH  # noqa: E402
from fpgalab.hil.lab.labfile import parse_lab  # noqa: E402
from fpgalab.hil.lab.uartbone import ceiling  # noqa: E402
from fpgalab.sim.twins.twin import TwinLab  # noqa: E402

SRAM = 0x0100_0000


def quiet(line: str) -> None:
    pass


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def peak_child_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def single_reads(backend: Any, n: int) -> list[float]:
    txn = Transaction(Op.READ, SCRATCH, length=1)
    samples = []
    for _ in range(n):
        took, result = timed(lambda: backend.transact(0, txn))
        assert result.ok, result
        samples.append(took * 1e3)
    return samples


def bulk(backend: Any, words: int) -> tuple[float, float]:
    data = tuple(range(words))
    w, result = timed(lambda: backend.transact(0, Transaction(Op.WRITE, SRAM, data)))
    assert result.ok, result
    r, result = timed(lambda: backend.transact(0, Transaction(Op.READ, SRAM, length=words)))
    assert result.ok and tuple(result.data) == data
    return words / w, words / r


def pct(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--cache", type=Path, help="a data folder to reuse (default: fresh)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fpgalab-hw-bench-") as tmp:
        data = args.cache or Path(tmp) / "data"
        twins = TwinLab([0], data, run_dir=Path(tmp) / "twins")
        twins.start()
        lab = parse_lab(twins.lab_toml(), "twins.toml")
        hw = HardwareBackend(lab=lab, data_dir=data / "hardware")
        sim = SimBackend(data / "sim", run_dir=Path(tmp) / "sim-boards")
        try:
            print("builds (bitstream, open ECP5 toolchain):")
            took, base = timed(lambda: hw.builder.base(quiet))
            print(f"  base SoC        {took:7.2f} s  {'cached' if base.cached else 'built'}  "
                  f"tools' peak RSS {peak_child_mib():.0f} MiB")  # fmt: skip
            took, _ = timed(lambda: hw.builder.base(quiet))
            print(f"  base SoC again  {took:7.2f} s  cached")
            source = (REPO / "docs" / "examples" / "accumulator.py").read_bytes()
            took, build = timed(lambda: hw.build(Design("accumulator.py", source), quiet))
            print(f"  base + user     {took:7.2f} s  {'cached' if build.cached else 'built'}  "
                  f"tools' peak RSS {peak_child_mib():.0f} MiB")  # fmt: skip
            took, _ = timed(lambda: hw.build(Design("accumulator.py", source), quiet))
            print(f"  base + user     {took:7.2f} s  cached")

            took, report = timed(lambda: hw.health(0))  # loads the base SoC into the twin
            assert report.ok, report.detail
            print(f"first health check (load of the base SoC, twin model build) {took:.2f} s")
            took, _ = timed(lambda: hw.program(0, build, quiet))
            print(f"load of a design (openFPGALoader over XVC + identifier check) {took:.2f} s")
            hw.reset(0, quiet)
            took, _ = timed(lambda: hw.reset(0, quiet))
            print(f"reset (load of the cached base SoC) {took:.2f} s")
            assert sim.health(0).ok

            hw_reads, sim_reads = single_reads(hw, args.reads), single_reads(sim, args.reads)
            print(f"\none read ({args.reads} samples), ms:    p50      p99")
            print(f"  hardware backend, twin   {statistics.median(hw_reads):7.3f}  "
                  f"{pct(hw_reads, 0.99):7.3f}")  # fmt: skip
            print(f"  sim backend              {statistics.median(sim_reads):7.3f}  "
                  f"{pct(sim_reads, 0.99):7.3f}   ratio hw/sim "
                  f"{statistics.median(hw_reads) / statistics.median(sim_reads):.1f}")  # fmt: skip
            for baud in (115_200, 1_000_000):
                print(f"  UARTBone ceiling @ {baud:>9,} baud: {1e3 / ceiling(baud, 1, 'read'):.3f}")

            words = hw.builder.config.sram_size // 4
            hw_w, hw_r = bulk(hw, words)
            sim_w, sim_r = bulk(sim, words)
            print(f"\nbulk {words:,} words, words/s:     write      read")
            print(f"  hardware backend, twin   {hw_w:9,.0f} {hw_r:9,.0f}")
            print(f"  sim backend              {sim_w:9,.0f} {sim_r:9,.0f}   ratio hw/sim "
                  f"{hw_w / sim_w:.2f} / {hw_r / sim_r:.2f}")  # fmt: skip
            for baud in (115_200, 1_000_000):
                print(f"  UARTBone ceiling @ {baud:>9,} baud {ceiling(baud, words, 'write'):9,.0f} "
                      f"{ceiling(baud, words, 'read'):9,.0f}")  # fmt: skip
        finally:
            hw.close()
            sim.close()
            twins.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
