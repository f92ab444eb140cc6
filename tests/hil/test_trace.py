"""The scope's host side (``hil.trace``): layouts from memory maps (hostile ones refused),
the plans of accesses, decoding, and VCDs read back with pyvcd's parser."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
from vcd.reader import TokenKind, tokenize

from fpgalab.hil.gateware.bus import Op
from fpgalab.hil.trace import (
    READ_WORDS,
    Access,
    Capture,
    Probe,
    Sample,
    ScopeLayout,
    TraceError,
    arm,
    decode,
    readout,
    scope_layout,
    stop,
    to_vcd,
)

BUS = "cyc:1,stb:1,we:1,adr:22,sel:4,dat_w:32,dat_r:32,ack:1,err:1"
BASE = 0x0200_0000


def memory_map(signals: str = BUS + ",count:8,state:2", depth: int = 64) -> dict[str, Any]:
    """A memory map as the SoC writes it (``csr_json``), with a scope."""
    return {
        "csr_bases": {"ctrl": 0, "scope": 0x1000},
        "csr_registers": {
            "ctrl_scratch": {"addr": 4, "size": 1, "type": "rw"},
            "scope_control": {"addr": 0x1000, "size": 1, "type": "rw"},
            "scope_qualify": {"addr": 0x1004, "size": 1, "type": "rw"},
            "scope_status": {"addr": 0x1008, "size": 1, "type": "ro"},
        },
        "constants": {
            "config_clock_frequency": 50_000_000,
            "scope_depth": depth,
            "scope_time_bits": 32,
            "scope_signals": signals,
        },
        "memories": {"scope": {"base": BASE, "size": 0x1_0000, "type": "io"}},
    }


@pytest.fixture
def layout() -> ScopeLayout:
    result = scope_layout(memory_map())
    assert result is not None
    return result


def encode(
    layout: ScopeLayout, samples: list[tuple[int, ...]], status: int | None = None
) -> list[int]:
    """The words a readout reads for ``samples`` (raw cycle counter first): decode's inverse."""
    values = []
    for fields in samples:
        value, shift = 0, 0
        for field, width in zip(fields, [layout.time_bits] + [s.width for s in layout.signals],
                                strict=True):  # fmt: skip
            value |= field << shift
            shift += width
        values.append(value)
    words = [len(samples) if status is None else status]
    for k in range(layout.words):
        words += [(value >> (32 * k)) & 0xFFFF_FFFF for value in values]
    return words


# Layouts --------------------------------------------------------------------------------------


def test_layout_from_a_memory_map(layout: ScopeLayout) -> None:
    """The signals in stored order, the probes after the bus's, sizes and addresses."""
    assert layout.names[:9] == ("cyc", "stb", "we", "adr", "sel", "dat_w", "dat_r", "ack", "err")
    assert layout.probes == (Probe("count", 8), Probe("state", 2))
    assert (layout.depth, layout.clock_hz, layout.time_bits) == (64, 50_000_000, 32)
    assert layout.width == 32 + 95 + 10 and layout.words == 5
    assert (layout.control, layout.qualify, layout.status, layout.base) == (
        0x1000, 0x1004, 0x1008, BASE)  # fmt: skip


@pytest.mark.parametrize("mem_map", [None, {}, {"constants": {}}, {"constants": "x"}, []])
def test_no_scope_in_the_map(mem_map: Any) -> None:
    """A build without a scope (or no map at all) has no layout, and that is no error."""
    assert scope_layout(mem_map) is None


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(mem_map: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = mem_map
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("constants.scope_signals", 7), "not a list of signals"),
        (_set("constants.scope_signals", BASE * "x"), "not a list of signals"),
        (_set("constants.scope_signals", BUS + ",\x1b[31mred:1"), "malformed entry"),
        (_set("constants.scope_signals", BUS + ",Count:1"), "malformed entry"),
        (_set("constants.scope_signals", BUS + ",x:1:2"), "malformed entry"),
        (_set("constants.scope_signals", BUS.replace("cyc:1,stb:1", "stb:1,cyc:1")),
         "start with the bus"),
        (_set("constants.scope_signals", "cyc:1"), "start with the bus"),
        (_set("constants.scope_signals", BUS.replace("dat_w:32", "dat_w:31")), "dat_w"),
        (_set("constants.scope_signals", BUS.replace("adr:22", "adr:31")), "adr"),
        (_set("constants.scope_signals", BUS + ",a:1,a:1"), "named twice"),
        (_set("constants.scope_signals", BUS + ",ack:1"), "taken by the bus"),
        (_set("constants.scope_signals", BUS + ",a:0"), "no bits"),
        (_set("constants.scope_signals", BUS + ",a:60,b:5"), "65 bits"),
        (_set("constants.scope_signals", BUS + "".join(f",p{i}:1" for i in range(17))),
         "17 probes"),
        (_set("constants.scope_depth", 48), "power of two"),
        (_set("constants.scope_depth", 1 << 20), "scope_depth"),
        (_set("constants.scope_depth", True), "scope_depth"),
        (_set("constants.scope_depth", "64"), "scope_depth"),
        (_set("constants.scope_depth", KeyError), "scope_depth"),
        (_set("constants.scope_time_bits", 0), "scope_time_bits"),
        (_set("constants.scope_time_bits", 1000), "scope_time_bits"),
        (_set("constants.config_clock_frequency", 0), "clock"),
        (_set("csr_registers.scope_control", KeyError), "scope_control"),
        (_set("csr_registers.scope_status.size", 2), "scope_status"),
        (_set("csr_registers.scope_qualify.addr", -4), "scope_qualify"),
        (_set("csr_registers.scope_qualify.addr", 1 << 32), "scope_qualify"),
        (_set("csr_registers.scope_qualify.addr", 0x1002), "word-aligned"),
        (_set("csr_registers.scope_qualify.addr", 4.0), "scope_qualify"),
        (_set("csr_registers", None), "no CSRs"),
        (_set("memories.scope", KeyError), "no scope region"),
        (_set("memories.scope.size", 0x100), "smaller than its samples"),
        (_set("memories.scope.base", 0xFFFF_FF00), "runs past the 32-bit bus"),
        (_set("memories.scope.base", 2), "not word-aligned"),
    ],
)  # fmt: skip
def test_hostile_maps_are_refused(change: Callable[[dict[str, Any]], None], message: str) -> None:
    """A map that claims a scope that does not add up (written by sandboxed code) is a
    TraceError naming what is wrong, never a crash or a plan to touch the wrong place."""
    mem_map = copy.deepcopy(memory_map())
    change(mem_map)
    with pytest.raises(TraceError, match=message):
        scope_layout(mem_map)


# Plans ----------------------------------------------------------------------------------------


def test_arm_chooses_what_stores_samples(layout: ScopeLayout) -> None:
    """All signals: bus activity and every probe; bus signals only: the bus; a probe only:
    that probe's changes. The qualifier is written before the arm."""
    assert arm(layout, None) == [Access(Op.WRITE, 0x1004, (0b111,)), Access(Op.WRITE, 0x1000, (1,))]
    assert arm(layout, ["adr", "dat_r"])[0].data == (0b001,)
    assert arm(layout, ["state"])[0].data == (0b100,)
    assert arm(layout, ["count", "cyc", "count"])[0].data == (0b011,)


def test_arm_names_unknown_signals_and_the_known_ones(layout: ScopeLayout) -> None:
    """An unknown signal is a TraceError that lists what the build has."""
    with pytest.raises(TraceError, match=r"unknown signal\(s\) 'nope': this build's scope has "
                                         r"cyc, stb, .*, err, count, state"):  # fmt: skip
        arm(layout, ["cyc", "nope"])
    with pytest.raises(TraceError, match="no signals"):
        arm(layout, [])


def test_stop_ends_with_the_status_read(layout: ScopeLayout) -> None:
    """Stop writes 0 to control, then reads the status that readout takes."""
    assert stop(layout) == [Access(Op.WRITE, 0x1000, (0,)), Access(Op.READ, 0x1008)]


def test_readout_reads_each_word_of_the_samples_stored(layout: ScopeLayout) -> None:
    """The status again, then word k of samples 0..n-1 from base + 4 * k * depth, in reads of
    at most READ_WORDS; nothing but the status when nothing was stored."""
    assert readout(layout, 0) == [Access(Op.READ, 0x1008)]
    plan = readout(layout, 3 | 1 << 31)  # the overflow bit is not part of the count
    assert plan[1:] == [Access(Op.READ, BASE + 4 * 64 * k, length=3) for k in range(5)]
    wide = memory_map(depth=1024)
    wide["memories"]["scope"]["size"] = 1 << 20
    big = scope_layout(wide)
    assert big is not None
    plan = readout(big, 600)
    assert [a.length for a in plan[1:4]] == [READ_WORDS, READ_WORDS, 600 - 2 * READ_WORDS]
    assert sum(a.length for a in plan) == 1 + 5 * 600
    assert plan[4].address == BASE + 4 * 1024


def test_readout_refuses_a_level_past_the_depth(layout: ScopeLayout) -> None:
    """A status claiming more samples than the scope holds is a garbled reply."""
    with pytest.raises(TraceError, match="65 samples, more than the 64"):
        readout(layout, 65)


# Decoding and VCD ------------------------------------------------------------------------------


def test_decode_splits_samples_and_unwraps_the_counter(layout: ScopeLayout) -> None:
    """Each sample's fields come back in order; the 32-bit counter's wrap is undone."""
    bus = (1, 1, 1, 0x3F_FFFF, 0xF, 0xDEAD_BEEF, 0x1234_5678, 1, 0)
    raw = [(0, *bus, 255, 3), (0xFFFF_FFFE, *bus, 7, 1), (5, *bus, 0, 0)]
    capture = decode(layout, encode(layout, raw))
    assert capture == Capture(
        (Sample(0, (*bus, 255, 3)), Sample(0xFFFF_FFFE, (*bus, 7, 1)),
         Sample(0x1_0000_0005, (*bus, 0, 0))),
        full=False,
    )  # fmt: skip
    assert decode(layout, encode(layout, raw[:1], status=1 | 1 << 31)).full


@pytest.mark.parametrize("cut", [1, -1])
def test_decode_refuses_words_that_do_not_add_up(layout: ScopeLayout, cut: int) -> None:
    """More or fewer words than the status's count of samples takes: TraceError."""
    words = encode(layout, [(0, *([0] * 11))] * 2)
    words = words[:-1] if cut < 0 else [*words, 0]
    with pytest.raises(TraceError, match="readout has"):
        decode(layout, words)
    with pytest.raises(TraceError, match="read nothing"):
        decode(layout, [])


def parse(vcd: bytes) -> tuple[str, dict[str, tuple[str, int]], list[tuple[int, str, int]]]:
    """pyvcd's tokenizer over ``vcd``: timescale, vars (scope, width) and changes."""
    scopes: list[str] = []
    variables: dict[str, tuple[str, int]] = {}
    ids: dict[str, str] = {}
    changes: list[tuple[int, str, int]] = []
    timescale, time = "", 0
    for token in tokenize(io.BytesIO(vcd)):
        if token.kind is TokenKind.TIMESCALE:
            timescale = f"{int(token.timescale.magnitude)} {token.timescale.unit.value}"
        elif token.kind is TokenKind.SCOPE:
            scopes.append(token.scope.ident)
        elif token.kind is TokenKind.UPSCOPE:
            scopes.pop()
        elif token.kind is TokenKind.VAR:
            variables[token.var.reference] = (".".join(scopes), token.var.size)
            ids[token.var.id_code] = token.var.reference
        elif token.kind is TokenKind.CHANGE_TIME:
            time = token.time_change
        elif token.kind in (TokenKind.CHANGE_SCALAR, TokenKind.CHANGE_VECTOR):
            changes.append((time, ids[token.data.id_code], int(token.data.value)))
    return timescale, variables, changes


def test_vcd_round_trip_through_a_parser(layout: ScopeLayout) -> None:
    """The VCD parses: 1 ps resolution, bus signals under ``bus`` and probes under
    ``design`` with their widths, each value at its cycle's time (20 ns at 50 MHz)."""
    idle = (0, 0, 0, 0, 0, 0, 0, 0, 0)
    write = (1, 1, 1, 5, 0xF, 0xCAFE, 0, 1, 0)
    samples = [(0, *idle, 1, 0), (7, *write, 2, 0), (8, *idle, 2, 3)]
    capture = decode(layout, encode(layout, samples))
    timescale, variables, changes = parse(to_vcd(layout, capture))
    assert timescale == "1 ps"
    assert variables["adr"] == ("bus", 22) and variables["count"] == ("design", 8)
    assert len(variables) == 11
    assert (140_000, "dat_w", 0xCAFE) in changes and (140_000, "adr", 5) in changes
    assert (160_000, "state", 3) in changes
    assert (0, "count", 1) in changes and (140_000, "count", 2) in changes


def test_vcd_holds_only_the_chosen_signals(layout: ScopeLayout) -> None:
    """Chosen signals only; an unknown one is a TraceError."""
    capture = decode(layout, encode(layout, [(0, *([1] * 11))]))
    _, variables, changes = parse(to_vcd(layout, capture, ["state", "we"]))
    assert set(variables) == {"state", "we"}
    assert {name for _, name, _ in changes} == {"state", "we"}
    with pytest.raises(TraceError, match="unknown signal"):
        to_vcd(layout, capture, ["clk"])
