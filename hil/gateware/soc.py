"""The lab's SoC, defined once for both backends: a CPU-less LiteX ``SoCMini`` with an
identifier, ``ctrl`` (reset, scratch, bus-error count), an SRAM, and the ``user``
Wishbone region a user's design is mapped into. The host reaches the bus through a
bridge chosen at construction: ``sim`` (an external Wishbone port plus a burst
master, driven by cocotb), ``uartbone`` on real boards, or ``stream`` in their twins
(the same UARTBone gateware, its UART replaced by a byte stream).

Memory map (byte addresses; ``docs/memory-map.md`` has the detail)::

    0x0000_0000  csr    64 KiB   ctrl, identifier (LiteX CSR bus, 32-bit CSRs)
    0x0100_0000  sram   256 KiB  (SoCConfig.sram_size)
    0x0200_0000  scope  ≤ 128 KiB the scope's samples, read-only (hil.gateware.scope)
    0x2000_0000  user   16 MiB   the user's design; word k at user_base + 4*k
"""

from __future__ import annotations

import json
from typing import Any

from litex.build.generic_platform import GenericPlatform, Pins, Subsignal
from litex.gen import LiteXModule
from litex.soc.cores import uart
from litex.soc.integration import export
from litex.soc.integration.soc import SoCRegion
from litex.soc.integration.soc_core import SoCMini
from litex.soc.interconnect import stream, wishbone
from migen import ClockDomain, ClockDomainsRenamer, Module, Signal

from fpgalab.hil.gateware.burst import INPUTS as BURST_INPUTS
from fpgalab.hil.gateware.burst import BurstMaster
from fpgalab.hil.gateware.config import MEM_MAP, SCOPE_TIME_BITS, SIM_CONFIG, SoCConfig
from fpgalab.hil.gateware.scope import Scope, region_size

__all__ = ["MEM_MAP", "SIM_CONFIG", "LabSoC", "SoCConfig", "VerilogPlatform", "csr_json"]

# Platform -----------------------------------------------------------------------------------------


class VerilogPlatform(GenericPlatform):
    """A platform that only emits Verilog: a clock and reset pin, nothing else."""

    default_clk_name = "clk"

    def __init__(self) -> None:
        io = [("clk", 0, Pins(1)), ("rst", 0, Pins(1))]
        super().__init__("sim", io, name="fpgalab_sim")

    def build(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("use hil.soc.to_verilog(); a simulation needs only the Verilog")


# Building blocks ----------------------------------------------------------------------------------


class _CRG(Module):
    """``sys`` straight from the clock and reset pins, and also reset by ``ctrl``'s SoC
    reset (``self.rst``); ``host``, on the same clock, only by the pin: the host's
    bridge must outlive a SoC reset it asked for itself."""

    def __init__(self, clk: Signal, rst: Signal) -> None:
        self.rst = Signal()
        self.clock_domains.cd_sys = ClockDomain()
        self.clock_domains.cd_host = ClockDomain()
        self.comb += [
            self.cd_sys.clk.eq(clk),
            self.cd_sys.rst.eq(rst | self.rst),
            self.cd_host.clk.eq(clk),
            self.cd_host.rst.eq(rst),
        ]


class EmptySlot(LiteXModule):
    """The user region with no design in it: every access ends in a bus error at once."""

    def __init__(self) -> None:
        self.bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        self.sync += self.bus.err.eq(self.bus.cyc & self.bus.stb & ~self.bus.err)


class UserSlot(LiteXModule):
    """Maps the region onto the design's bus: the design sees word offsets from 0."""

    def __init__(self, design_bus: wishbone.Interface, size: int) -> None:
        self.bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        words = size // 4
        self.comb += [
            design_bus.adr.eq(self.bus.adr & (words - 1)),
            design_bus.dat_w.eq(self.bus.dat_w),
            design_bus.sel.eq(self.bus.sel),
            design_bus.cyc.eq(self.bus.cyc),
            design_bus.stb.eq(self.bus.stb),
            design_bus.we.eq(self.bus.we),
            design_bus.cti.eq(self.bus.cti),
            design_bus.bte.eq(self.bus.bte),
            self.bus.dat_r.eq(design_bus.dat_r),
            self.bus.ack.eq(design_bus.ack),
            self.bus.err.eq(design_bus.err),
        ]


class StreamPHY(LiteXModule):
    """A UART PHY without the UART: ``rx_*`` (host to SoC) and ``tx_*`` (SoC to host)
    are valid/ready byte streams on the pads, one byte per clock at most."""

    PORTS = {"rx_data": 8, "rx_valid": 1, "rx_ready": 1, "tx_data": 8, "tx_valid": 1,
             "tx_ready": 1, "rx_idle": 1}  # fmt: skip

    def __init__(self, pads: Any) -> None:
        self.source = stream.Endpoint([("data", 8)])  # what the host sent
        self.sink = stream.Endpoint([("data", 8)])  # what the SoC answers
        self.comb += [
            self.source.valid.eq(pads.rx_valid),
            self.source.data.eq(pads.rx_data),
            pads.rx_ready.eq(self.source.ready),
            pads.tx_valid.eq(self.sink.valid),
            pads.tx_data.eq(self.sink.data),
            self.sink.ready.eq(pads.tx_ready),
        ]


# The SoC ------------------------------------------------------------------------------------------


class LabSoC(SoCMini):
    mem_map = dict(MEM_MAP)

    def __init__(
        self,
        platform: GenericPlatform,
        config: SoCConfig = SIM_CONFIG,
        design: Module | None = None,
        ident: str = "fpgalab base SoC",
        crg: Module | None = None,
    ) -> None:
        """``design`` goes into the ``user`` slot (None: the empty slot). ``crg`` makes
        the ``sys`` domain (default: straight from the platform's ``clk`` and ``rst``
        pins, as in simulation); with the ``sim`` bridge it must also make ``host``."""
        SoCMini.__init__(
            self, platform, clk_freq=config.sys_clk_freq,
            ident=ident, ident_version=False,
            bus_timeout=config.bus_timeout,
            with_ctrl=True,
        )  # fmt: skip

        # Clocking ---------------------------------------------------------------------------------
        self.crg = (
            crg if crg is not None else _CRG(platform.request("clk"), platform.request("rst"))
        )

        # SRAM -------------------------------------------------------------------------------------
        self.add_ram("sram", origin=self.mem_map["sram"], size=config.sram_size)

        # User region ------------------------------------------------------------------------------
        if design is None:
            self.user = EmptySlot()
        else:
            self.user_design = design
            self.user = UserSlot(design.bus, config.user_size)
        region = SoCRegion(origin=self.mem_map["user"], size=config.user_size, cached=False)
        self.bus.add_slave("user", self.user.bus, region)

        # Scope ------------------------------------------------------------------------------------
        if config.scope_depth:
            self._add_scope(config, getattr(design, "probes", None) or {})

        # Host bridge ------------------------------------------------------------------------------
        self.burst: BurstMaster | None = None
        if config.bridge == "sim":
            self._add_sim_bridge(platform, config)
        elif config.bridge == "uartbone":
            self._add_uartbone(uart.UARTPHY(platform.request("serial"), config.sys_clk_freq,
                                            config.uart_baudrate), config)  # fmt: skip
        elif config.bridge == "stream":
            platform.add_extension([("serial", 0, *(
                Subsignal(name, Pins(width)) for name, width in StreamPHY.PORTS.items()
            ))])  # fmt: skip
            pads = platform.request("serial")
            bone = self._add_uartbone(StreamPHY(pads), config)
            # Tells the twin's simulator that every byte it fed has been consumed.
            self.comb += pads.rx_idle.eq(~self.uartbone_fifo.source.valid & bone.sink.ready)
        else:
            raise ValueError(f"unknown bridge {config.bridge!r}: choose sim, uartbone or stream")

    def _add_scope(self, config: SoCConfig, probes: dict[str, Any]) -> None:
        """The scope on the user slot's bus and the design's probes (checked at load:
        ``hil.gateware.design.check_probes``); its layout goes into the memory map as
        constants, which is all a host learns of it (``hil.trace.scope_layout``)."""
        self.scope = Scope(self.user.bus, config.user_size, probes, config.scope_depth)
        size = region_size(self.scope.width, config.scope_depth)
        region = SoCRegion(origin=self.mem_map["scope"], size=size, cached=False)
        self.bus.add_slave("scope", self.scope.bus, region)
        self.add_constant("SCOPE_DEPTH", config.scope_depth)
        self.add_constant("SCOPE_TIME_BITS", SCOPE_TIME_BITS)
        self.add_constant("SCOPE_SIGNALS", ",".join(f"{n}:{w}" for n, w in self.scope.layout))

    def _add_uartbone(self, phy: Module, config: SoCConfig) -> uart.Stream2Wishbone:
        """LiteX's UARTBone, with a receive FIFO between the PHY and the bridge: the PHY
        has no buffer of its own, so bytes arriving while the bridge waits on a slow
        slave (up to the bus timeout) would be lost and the framing with them. The FIFO
        holds a whole write frame; the host sends one frame per round trip."""
        fifo = stream.SyncFIFO([("data", 8)], config.uart_rx_fifo, buffered=True)
        bone = uart.Stream2Wishbone(clk_freq=config.sys_clk_freq,
                                    address_width=self.bus.address_width)  # fmt: skip
        self.comb += [
            phy.source.connect(fifo.sink),
            fifo.source.connect(bone.sink),
            bone.source.connect(phy.sink),
        ]
        self.add_module(name="uartbone_phy", module=phy)
        self.add_module(name="uartbone_fifo", module=fifo)
        self.add_module(name="uartbone", module=bone)
        self.bus.add_master(name="uartbone", master=bone.wishbone)
        return bone

    def _add_sim_bridge(self, platform: GenericPlatform, config: SoCConfig) -> None:
        # A plain external master port (``wb_*``), for a per-cycle cocotb master...
        port = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        platform.add_extension(port.get_ios("wb"))
        self.comb += port.connect_to_pads(platform.request("wb"), mode="slave")
        self.bus.add_master("host", port)
        # ... and the burst master (``burst_*``) that moves bulk data without Python per cycle.
        self.burst = ClockDomainsRenamer("host")(BurstMaster(config.burst_depth))
        ports = self.burst.port_signals()
        platform.add_extension(
            [("burst", 0, *(Subsignal(n, Pins(len(s))) for n, s in ports.items()))]
        )
        pads = platform.request("burst")
        for name, sig in ports.items():
            if name in BURST_INPUTS:
                self.comb += sig.eq(getattr(pads, name))
            else:
                self.comb += getattr(pads, name).eq(sig)
        self.bus.add_master("burst", self.burst.bus)
        # The bus timeout answers for a silent slave; both hosts need to know it did.
        self.bus_timeout_pad = Signal()
        platform.add_extension([("bus_timeout", 0, Pins(1))])
        self.comb += platform.request("bus_timeout").eq(self.bus_timeout_pad)

    def finalize(self) -> None:
        if self.finalized:
            return
        super().finalize()
        timeout = getattr(self.bus._interconnect, "timeout", None)
        if self.burst is not None:
            error = timeout.error if timeout is not None else 0
            self.comb += [self.burst.timeout.eq(error), self.bus_timeout_pad.eq(error)]


# Outputs ------------------------------------------------------------------------------------------


def csr_json(soc: LabSoC) -> dict[str, Any]:
    """The memory map of a finalized SoC, as LiteX's ``csr.json``."""
    text = export.get_csr_json(
        csr_regions=soc.csr_regions, constants=soc.constants, mem_regions=soc.mem_regions
    )
    result: dict[str, Any] = json.loads(text)
    return result
