"""What traces cost (issue 16), in one run:

- simulated boards, rounds alternated between two backends on one machine: the SoC
  without the scope (``scope_depth = 0``), the SoC with it compiled in but not armed, and
  the same board traced (``transact_traced``: arm, run, stop, read back, VCD): a single
  read's p50 and bulk words/s of each, and the ratios against the board without it;
- VCD bytes per traced word (1,000 one-word reads of the user region, traced);
- the read-back of a full capture over UARTBone: the bytes the hardware backend's plan
  puts on the wire (its frames, and the bus-error counter read after each), their time
  at 1 Mbaud (the framing ceiling: a board at 1 Mbaud cannot read it back faster), the
  same for the bare capture words, and with ``--twin`` the time measured on a twin (the
  UARTBone gateware in Verilator behind TCP: no UART pacing, so it shows the host's and
  the simulator's share, not the wire's).

    python benches/trace.py [--rounds 5] [--twin]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fpgalab.backends.base import Design, Op, TraceRequest, Transaction
from fpgalab.backends.sim import SimBackend
from fpgalab.hil import trace as scope
from fpgalab.hil.gateware.config import HW_CONFIG, SIM_CONFIG
from fpgalab.hil.lab import uartbone
from fpgalab.hil.lab.uartbone import Read, Write

USER = 0x2000_0000
BULK = 4096
#: A memory of 4,096 words filling the user region's start: bulk reads reach the design.
RAM = b"""
from litex.soc.interconnect import wishbone
from migen import If, Memory, Module

class Design(Module):
    def __init__(self):
        self.bus = bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        mem = Memory(32, 4096)
        port = mem.get_port(write_capable=True)
        self.specials += mem, port
        self.comb += [port.adr.eq(bus.adr[:12]), port.dat_w.eq(bus.dat_w), bus.dat_r.eq(port.dat_r)]
        self.sync += [
            bus.ack.eq(0),
            If(bus.cyc & bus.stb & ~bus.ack, bus.ack.eq(1)),
        ]
        self.comb += port.we.eq(bus.cyc & bus.stb & bus.we & ~bus.ack)
"""


def _quiet(line: str) -> None:
    pass


def _p50_us(samples: list[float]) -> float:
    return round(1e6 * statistics.median(samples), 1)


def bench_sim(root: Path, rounds: int) -> dict[str, Any]:
    with_scope = SimBackend(root / "with", run_dir=root / "with-boards")
    without = SimBackend(root / "without", run_dir=root / "without-boards")
    without.builder.soc = dataclasses.replace(SIM_CONFIG, scope_depth=0)
    modes = {"without_scope": without, "scope_not_armed": with_scope, "traced": with_scope}
    reads: dict[str, list[float]] = {name: [] for name in modes}
    bulk: dict[str, list[float]] = {name: [] for name in modes}
    words = tuple(range(BULK))
    single = [Transaction(Op.READ, USER)]
    whole = [Transaction(Op.READ, USER, length=BULK)]
    ask = TraceRequest()
    vcd_per_word: float | None = None
    full_capture = None
    try:
        for sim in (with_scope, without):
            sim.program(0, sim.build(Design("ram.py", RAM), _quiet), _quiet)
            assert sim.transact(0, Transaction(Op.WRITE, USER, words)).ok
        for _ in range(rounds):
            for name, sim in modes.items():
                traced = name == "traced"
                for _ in range(50 if traced else 500):
                    started = time.perf_counter()
                    if traced:
                        run = sim.transact_traced(0, single, ask)
                        assert run.waveform is not None, run.error
                    else:
                        assert sim.transact_many(0, single)[0].ok
                    reads[name].append(time.perf_counter() - started)
                for _ in range(5):
                    started = time.perf_counter()
                    if traced:
                        run = sim.transact_traced(0, whole, ask)
                        results, full_capture = run.results, run.waveform
                    else:
                        results = sim.transact_many(0, whole)
                    bulk[name].append(BULK / (time.perf_counter() - started))
                    assert results[0].ok and tuple(results[0].data) == words
        ops = [Transaction(Op.READ, USER + 4 * (i % BULK)) for i in range(1000)]
        run = with_scope.transact_traced(0, ops, ask)
        assert run.waveform is not None and not run.waveform.full, run.error
        vcd_per_word = len(run.waveform.data) / len(ops)
    finally:
        for sim in (with_scope, without):
            sim.close()
    out: dict[str, Any] = {}
    for name in modes:
        out[name] = {
            "single_read_p50_us": _p50_us(reads[name]),
            "bulk_read_words_per_s": round(statistics.median(bulk[name])),
        }
    base = out["without_scope"]
    for name in ("scope_not_armed", "traced"):
        out[name]["ratio_single_read_p50"] = round(
            out[name]["single_read_p50_us"] / base["single_read_p50_us"], 3
        )
        out[name]["ratio_bulk_words_per_s"] = round(
            out[name]["bulk_read_words_per_s"] / base["bulk_read_words_per_s"], 3
        )
    assert full_capture is not None
    out["traced_bulk_capture"] = {"samples": full_capture.samples, "full": full_capture.full,
                                  "vcd_bytes": len(full_capture.data)}  # fmt: skip
    out["vcd_bytes_per_traced_word"] = round(vcd_per_word, 1)
    return out


def _hw_layout(memory_map: dict[str, Any] | None = None) -> scope.ScopeLayout:
    """The boards' scope as the base SoC has it (from a map, or as the config builds it)."""
    if memory_map is None:  # the boards' SoC, elaborated here (the sim bridge: same scope)
        from fpgalab.hil.gateware.soc import LabSoC, VerilogPlatform, csr_json

        soc = LabSoC(VerilogPlatform(), dataclasses.replace(HW_CONFIG, bridge="sim"))
        soc.finalize()
        memory_map = csr_json(soc)
    layout = scope.scope_layout(memory_map)
    assert layout is not None
    return layout


def wire(layout: scope.ScopeLayout, baudrate: int = HW_CONFIG.uart_baudrate) -> dict[str, Any]:
    """The bytes a full capture's read-back puts on a UART, and their time at ``baudrate``."""
    level = layout.depth  # a full capture
    plan = scope.readout(layout, level)
    ops: list[Read | Write] = []
    for access in plan:  # as HardwareBackend.transact_many sends them
        ops += [Read(access.address, access.length), Read(0, 1)]  # + ctrl_bus_errors
    sent = sum(len(e.payload) for e in uartbone.plan(ops))
    back = 4 * sum(e.reply_words for e in uartbone.plan(ops))
    words = sum(a.length for a in plan)
    bare = sum(len(e.payload) + 4 * e.reply_words
               for e in uartbone.plan([Read(a.address, a.length) for a in plan]))  # fmt: skip
    return {
        "samples": level, "words": words, "bytes_sent": sent, "bytes_received": back,
        "ceiling_s_at_baud": round(uartbone.wire_time(sent + back, baudrate), 4),
        "bare_words_ceiling_s": round(uartbone.wire_time(bare, baudrate), 4),
        "baudrate": baudrate,
    }  # fmt: skip


def bench_twin(root: Path, rounds: int) -> dict[str, Any]:
    """A full capture's read-back through the hardware backend on a twin of board 0."""
    from fpgalab.backends.hardware import HardwareBackend
    from fpgalab.sim.twins.twin import TwinLab

    root.mkdir(parents=True, exist_ok=True)
    twins = TwinLab([0], root, run_dir=root / "twins")
    twins.start()
    lab_file = root / "twins.toml"
    lab_file.write_text(twins.lab_toml())
    hw = HardwareBackend(lab_file, data_dir=root / "hardware")
    try:
        base = hw.builder.base(_quiet)
        twins.models.build(None, None, _quiet, ident=base.ident)
        hw.reset(0, _quiet)
        layout = _hw_layout(hw.memory_map(0))
        run = lambda txns: hw.transact_many(0, txns)  # noqa: E731
        taken = []
        samples = 0
        for _ in range(rounds):
            run([Transaction(a.op, a.address, a.data, a.length) for a in scope.arm(layout)])
            for _ in range(layout.depth // 2):  # the empty slot: each access an error
                run([Transaction(Op.READ, USER)])
            stop = run([Transaction(a.op, a.address, a.data, a.length)
                        for a in scope.stop(layout)])  # fmt: skip
            level = stop[-1].data[-1]
            plan = [Transaction(a.op, a.address, a.data, a.length)
                    for a in scope.readout(layout, level)]  # fmt: skip
            started = time.perf_counter()
            words = [w for r in run(plan) for w in r.data]
            taken.append(time.perf_counter() - started)
            samples = len(scope.decode(layout, words).samples)
        return {"samples": samples, "readback_s_median": round(statistics.median(taken), 4),
                "wire": wire(layout)}  # fmt: skip
    finally:
        hw.close()
        twins.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benches/trace.py")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--twin", action="store_true", help="also read back on a twin (slow)")
    parser.add_argument("--root", type=Path, help="data folder (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fpgalab-trace-") as tmp:
        root = args.root or Path(tmp)
        results: dict[str, Any] = {"sim": bench_sim(root / "sim", args.rounds)}
        print(json.dumps(results["sim"]), file=sys.stderr, flush=True)  # kept if what follows fails
        if args.twin:
            results["uartbone_twin"] = bench_twin(root / "twin", 3)
        else:
            results["uartbone_wire"] = wire(_hw_layout())
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
