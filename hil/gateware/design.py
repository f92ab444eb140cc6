"""Turning a design file into the module the SoC's ``user`` slot holds (see
``hil.gateware.designfile`` for the contract). Loading a Python design runs the user's code:
do it only in a sandboxed process (``hil.build.elaborate``).
"""

from __future__ import annotations

import traceback
import types

from litex.soc.interconnect import wishbone
from migen import ClockSignal, Instance, Module, ResetSignal, Signal
from migen.fhdl.structure import _Value

from fpgalab.hil.gateware.designfile import (
    PROBE_PREFIX,
    VERILOG_TOP,
    DesignLoadError,
    check_verilog,
    decode_source,
    language_of,
    probes_problem,
    verilog_probes,
)

__all__ = ["DesignLoadError", "VerilogDesign", "check_bus", "check_probes", "load",
           "load_python"]  # fmt: skip


def _user_traceback(exc: BaseException, filename: str) -> tuple[str, str]:
    """The traceback from the user's file on, and a one-line ``file:line: Error: msg``."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [i for i, f in enumerate(frames) if f.filename == filename]
    start = ours[0] if ours else 0
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames[start:])
    lines += traceback.format_exception_only(type(exc), exc)
    if isinstance(exc, SyntaxError):
        where = f"{filename}:{exc.lineno}: " if exc.filename == filename else ""
        return "".join(lines), f"{where}{type(exc).__name__}: {exc.msg}"
    where = f"{filename}:{frames[ours[-1]].lineno}: " if ours else ""
    return "".join(lines), f"{where}{type(exc).__name__}: {exc}"


def load_python(filename: str, text: str) -> Module:
    """Run the user's file and instantiate its ``Design``; check its bus."""
    module = types.ModuleType("user_design")
    module.__file__ = filename
    try:
        exec(compile(text, filename, "exec"), module.__dict__)
    except Exception as exc:
        details, summary = _user_traceback(exc, filename)
        raise DesignLoadError(summary, details) from None

    cls = module.__dict__.get("Design")
    if cls is None:
        raise DesignLoadError(f"{filename}: defines no `Design` (a Migen Module class)")
    if isinstance(cls, Module):
        design = cls  # an instance will do too
    elif isinstance(cls, type) and issubclass(cls, Module):
        try:
            design = cls()
        except Exception as exc:
            details, summary = _user_traceback(exc, filename)
            raise DesignLoadError(summary, details) from None
    elif isinstance(cls, type):
        raise DesignLoadError(f"{filename}: `Design` must subclass migen.Module")
    else:
        raise DesignLoadError(
            f"{filename}: `Design` must be a migen.Module class, not a {type(cls).__name__}"
        )
    check_bus(filename, design)
    check_probes(filename, design)
    return design


def check_bus(filename: str, design: Module) -> None:
    bus = getattr(design, "bus", None)
    if bus is None:
        raise DesignLoadError(f"{filename}: Design has no attribute `bus` (a wishbone.Interface)")
    if not isinstance(bus, wishbone.Interface):
        raise DesignLoadError(
            f"{filename}: Design.bus must be a litex.soc.interconnect.wishbone.Interface, "
            f"not a {type(bus).__name__}"
        )
    if bus.data_width != 32:
        raise DesignLoadError(f"{filename}: Design.bus must be 32-bit, not {bus.data_width}-bit")
    if bus.addressing != "word":
        raise DesignLoadError(f"{filename}: Design.bus must use word addressing (the default)")


def check_probes(filename: str, design: Module) -> None:
    """A design's ``probes``, if it has any: a dict of name → Migen signal (or any value:
    ``Cat``, a slice) under ``designfile.PROBE_RULE``."""
    probes = getattr(design, "probes", None)
    if probes is None:
        return
    if not isinstance(probes, dict):
        raise DesignLoadError(
            f"{filename}: Design.probes must be a dict of name -> signal, "
            f"not a {type(probes).__name__}"
        )
    for name, value in probes.items():
        if not isinstance(value, _Value):
            raise DesignLoadError(
                f"{filename}: Design.probes[{name!a}] must be a Migen signal, "
                f"not a {type(value).__name__}"
            )
    if problem := probes_problem([(name, len(value)) for name, value in probes.items()]):
        raise DesignLoadError(f"{filename}: Design.probes: {problem}")


class VerilogDesign(Module):
    """The slot's side of a Verilog ``user_design``: an instance wired to ``bus``, and
    its ``probe_<name>`` outputs to ``probes``."""

    def __init__(self, has_err: bool, probes: dict[str, int] | None = None) -> None:
        self.bus = bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        ports: dict[str, object] = dict(
            i_clk=ClockSignal("sys"), i_rst=ResetSignal("sys"),
            i_wb_adr=bus.adr, i_wb_dat_w=bus.dat_w, o_wb_dat_r=bus.dat_r, i_wb_sel=bus.sel,
            i_wb_cyc=bus.cyc, i_wb_stb=bus.stb, i_wb_we=bus.we, o_wb_ack=bus.ack,
        )  # fmt: skip
        if has_err:
            ports["o_wb_err"] = bus.err
        else:
            self.comb += bus.err.eq(0)
        self.probes = {name: Signal(width, name=f"probe_{name}")
                       for name, width in (probes or {}).items()}  # fmt: skip
        for name, signal in self.probes.items():
            ports[f"o_{PROBE_PREFIX}{name}"] = signal
        self.specials += Instance(VERILOG_TOP, name="user_design_i", **ports)


def load(filename: str, source: bytes) -> tuple[Module, str]:
    """Make the slot's module for a design file; returns (module, language)."""
    language = language_of(filename)
    text = decode_source(filename, source)
    if language == "python":
        return load_python(filename, text), language
    return VerilogDesign(check_verilog(filename, text), verilog_probes(filename, text)), language
