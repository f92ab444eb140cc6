"""The boards the lab builds bitstreams for, by name: which LiteX platform each is, which
FPGAs it comes with, and the clock-and-reset module (``make_crg``) that makes the SoC's
``sys`` domain straight from the board's oscillator (no PLL: ``sys_clk_freq`` must be the
oscillator's frequency).

The data here imports no LiteX (the worker reads it); ``make_platform`` and ``make_crg``
do, and run only where the SoC is elaborated (``hil.build.elaborate``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PLATFORMS",
    "BoardPlatform",
    "Device",
    "UnknownPlatformError",
    "get_platform",
    "make_crg",
    "make_platform",
]


class UnknownPlatformError(ValueError):
    """A platform or device name the lab does not know; the message lists the valid ones."""


@dataclass(frozen=True)
class Device:
    """An ECP5 part as nextpnr-ecp5 and the SoC's memory budget see it."""

    #: Lattice's name without speed grade and package, e.g. ``LFE5U-25F``.
    name: str
    #: nextpnr-ecp5's device option (``--25k``).
    nextpnr: str
    #: DP16KD block RAMs (18 Kbit each); 32-bit memories get 2 KiB from each.
    block_rams: int

    @property
    def ram_bytes(self) -> int:
        """The largest 32-bit wide memory (e.g. the SoC's SRAM) its block RAMs hold."""
        return self.block_rams * 2048


DEVICES = {
    d.name: d
    for d in (
        Device("LFE5U-25F", "25k", 56),
        Device("LFE5U-45F", "45k", 108),
        Device("LFE5U-85F", "85k", 208),
    )
}


@dataclass(frozen=True)
class BoardPlatform:
    """A board: its LiteX platform and the parts it is sold with."""

    name: str
    #: The ``litex_boards.platforms`` module defining ``Platform``.
    module: str
    devices: tuple[str, ...]
    #: nextpnr-ecp5's ``--package`` and ``--speed`` for every device of the board.
    package: str
    speed: str
    #: The oscillator's resource name and frequency (Hz).
    clock: str = "clk25"
    clock_hz: int = 25_000_000
    #: Whether ``Platform()`` takes ``device=`` (otherwise the board fixes its part).
    takes_device: bool = True
    #: Further ``Platform()`` keyword arguments.
    options: tuple[tuple[str, str], ...] = ()

    def device(self, name: str) -> Device:
        """The board's device ``name``; raises UnknownPlatformError listing the valid ones."""
        if name not in self.devices:
            raise UnknownPlatformError(
                f"platform {self.name} has no device {name!r}: choose {', '.join(self.devices)}"
            )
        return DEVICES[name]


#: Every platform the lab builds for, by name.
PLATFORMS = {
    p.name: p
    for p in (
        # ULX3S v2.0 (the v1.7 pinout differs only in pins the SoC does not use).
        BoardPlatform(
            "radiona_ulx3s", "litex_boards.platforms.radiona_ulx3s",
            devices=("LFE5U-25F", "LFE5U-45F", "LFE5U-85F"), package="CABGA381", speed="6",
            options=(("revision", "2.0"), ("toolchain", "trellis")),
        ),
        # Colorlight i5 v7.0: an LFE5U-25F on a SODIMM module; its UART is on the extension board.
        BoardPlatform(
            "colorlight_i5", "litex_boards.platforms.colorlight_i5",
            devices=("LFE5U-25F",), package="CABGA381", speed="6", takes_device=False,
            options=(("board", "i5"), ("revision", "7.0"), ("toolchain", "trellis")),
        ),
    )
}  # fmt: skip


def get_platform(name: str) -> BoardPlatform:
    """The platform ``name``; raises UnknownPlatformError listing the valid names."""
    try:
        return PLATFORMS[name]
    except KeyError:
        raise UnknownPlatformError(
            f"unknown platform {name!r}: choose {', '.join(sorted(PLATFORMS))}"
        ) from None


def make_platform(board: BoardPlatform, device: str) -> Any:
    """Construct the board's LiteX platform for ``device`` (imports LiteX)."""
    board.device(device)
    options: dict[str, str] = dict(board.options)
    if board.takes_device:
        options["device"] = device
    module = importlib.import_module(board.module)
    return module.Platform(**options)


def make_crg(platform: Any, board: BoardPlatform, hold: int = 15) -> Any:
    """A clock-and-reset module for ``LabSoC(..., crg=...)``: ``sys`` on the board's
    oscillator, held in reset for ``hold`` cycles after configuration and after each SoC
    reset (``crg.rst``, which LiteX wires to ``ctrl``'s reset). The reset comes from a
    flip-flop, so no logic sits between ``ctrl`` and every register's reset input."""
    from migen import ClockDomain, If, Module, Signal  # type: ignore[import-untyped]

    crg = Module()
    crg.rst = Signal()
    crg.clock_domains.cd_sys = ClockDomain("sys")
    crg.clock_domains.cd_por = ClockDomain("por", reset_less=True)
    # The platform constrains its oscillator's period itself (its do_finalize).
    clk = platform.request(board.clock)
    count = Signal(max=hold + 1, reset=hold)
    crg.comb += [crg.cd_sys.clk.eq(clk), crg.cd_por.clk.eq(clk), crg.cd_sys.rst.eq(count != 0)]
    crg.sync.por += If(crg.rst, count.eq(hold)).Elif(count != 0, count.eq(count - 1))
    return crg
