"""The design-file contract, checked without LiteX (and without running the file):
which languages, which names, which ports. ``hil.gateware.design`` turns a file into gateware.

- Python (``.py``): defines ``Design``, a Migen ``Module`` whose ``bus`` is a
  32-bit ``litex.soc.interconnect.wishbone.Interface`` slave in the ``sys`` domain.
- Verilog (``.v``, ``.sv``): module ``user_design`` with ports ``clk rst
  wb_adr[29:0] wb_dat_w[31:0] wb_dat_r[31:0] wb_sel[3:0] wb_cyc wb_stb wb_we
  wb_ack`` and, optionally, ``wb_err``.
- Probes, the signals a design shows the scope besides its bus: a Python ``Design``'s
  ``probes`` (a dict, name → signal), a Verilog ``user_design``'s output ports
  ``probe_<name>``; ``probes_problem`` holds the rules for both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from fpgalab.hil.gateware.config import MAX_PROBE_BITS, MAX_PROBES, PROBE_NAME, SCOPE_BUS

PYTHON_SUFFIXES = (".py",)
VERILOG_SUFFIXES = (".v", ".sv")
DESIGN_SUFFIXES = PYTHON_SUFFIXES + VERILOG_SUFFIXES
#: A design's file name, which job records, logs and pages show: no markup, no escape
#: sequences, no spaces, no path; the suffix (any case) is one of ``DESIGN_SUFFIXES``.
MAX_FILENAME = 100
FILENAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._+-]{{0,{MAX_FILENAME - 1}}}")
FILENAME_RULE = (
    f"1 to {MAX_FILENAME} characters of A-Z a-z 0-9 . _ + -, starting with a letter or "
    "digit and ending in " + ", ".join(DESIGN_SUFFIXES)
)
VERILOG_TOP = "user_design"
VERILOG_PORTS = ("clk", "rst", "wb_adr", "wb_dat_w", "wb_dat_r", "wb_sel", "wb_cyc", "wb_stb",
                 "wb_we", "wb_ack")  # fmt: skip


class DesignLoadError(Exception):
    """The design is not usable; the message says why, in the user's terms."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        #: Longer output for the build log (a traceback), if any.
        self.details = details


#: A Verilog output port with this prefix is a probe (the rest of its name is the probe's).
PROBE_PREFIX = "probe_"
PROBE_RULE = (
    f"at most {MAX_PROBES} probes of at most {MAX_PROBE_BITS} bits in all, each named "
    f"{PROBE_NAME} and none named {', '.join(SCOPE_BUS)} (the bus's own signals)"
)


def probes_problem(probes: Sequence[tuple[str, int]]) -> str | None:
    """Why ``probes`` (name, width) are not a design's probes (``PROBE_RULE``), or None."""
    if len(probes) > MAX_PROBES:
        return f"{len(probes)} probes: a design may have at most {MAX_PROBES}"
    seen: set[str] = set()
    for name, width in probes:
        if not isinstance(name, str) or not re.fullmatch(PROBE_NAME, name):
            return f"probe name {name!a} is not {PROBE_NAME} (a-z, 0-9, _, up to 32)"
        if name in SCOPE_BUS:
            return f"probe name {name!r} is taken by the bus signal of that name"
        if name in seen:
            return f"probe {name!r} is named twice"
        seen.add(name)
        if width < 1:
            return f"probe {name!r} has no bits"
    total = sum(width for _, width in probes)
    if total > MAX_PROBE_BITS:
        return f"the probes have {total} bits in all: at most {MAX_PROBE_BITS}"
    return None


def filename_problem(filename: str) -> str | None:
    """Why ``filename`` is not a design's file name (``FILENAME_RULE``), or None."""
    if not filename:
        return "the file has no name"
    if len(filename) > MAX_FILENAME:
        return f"the name is {len(filename)} characters long"
    if not FILENAME.fullmatch(filename):
        bad = next((i for i, c in enumerate(filename) if not FILENAME.fullmatch("a" + c)), None)
        if bad is None:
            return f"the name starts with {filename[0]!a}"
        return f"character {filename[bad]!a} at position {bad + 1} is not allowed"
    if not filename.lower().endswith(DESIGN_SUFFIXES):
        suffix = Path(filename).suffix
        return f"{filename} has " + (f"the suffix {suffix}" if suffix else "no suffix")
    return None


def language_of(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix in PYTHON_SUFFIXES:
        return "python"
    if suffix in VERILOG_SUFFIXES:
        return "verilog"
    allowed = ", ".join(PYTHON_SUFFIXES + VERILOG_SUFFIXES)
    raise DesignLoadError(f"{filename}: unsupported file type {suffix or '(none)'}: use {allowed}")


def decode_source(filename: str, source: bytes) -> str:
    try:
        return source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DesignLoadError(f"{filename}: not UTF-8 text (byte {exc.start})") from None


_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_MODULE = re.compile(r"\b(?:module|macromodule)\s+(\\?[A-Za-z_][\w$]*)")


def verilog_module_body(text: str, name: str) -> str | None:
    """The text of module ``name`` (comments removed), or None if it is not defined."""
    bare = _COMMENTS.sub(" ", text)
    for match in _MODULE.finditer(bare):
        if match.group(1) == name:
            end = re.search(r"\bendmodule\b", bare[match.end() :])
            stop = match.end() + end.start() if end else len(bare)
            return bare[match.start() : stop]
    return None


def check_verilog(filename: str, text: str) -> bool:
    """Check that ``user_design`` is there with its ports; return whether it has ``wb_err``.
    Verilator checks the rest (syntax, widths), and its messages reach the user."""
    body = verilog_module_body(text, VERILOG_TOP)
    if body is None:
        found = sorted({m.group(1) for m in _MODULE.finditer(_COMMENTS.sub(" ", text))})
        also = f" (it defines: {', '.join(found)})" if found else ""
        raise DesignLoadError(f"{filename}: no module `{VERILOG_TOP}`{also}")
    missing = [p for p in VERILOG_PORTS if not re.search(rf"\b{p}\b", body)]
    if missing:
        raise DesignLoadError(
            f"{filename}: module `{VERILOG_TOP}` lacks port(s) {', '.join(missing)}"
        )
    return re.search(r"\bwb_err\b", body) is not None


_DECLARATION = re.compile(
    r"\b(input|output|inout)\b((?:\s*\b(?:wire|reg|logic|signed|unsigned|var)\b)*)\s*"
    r"(\[[^\]]*\])?([^;()]*?)(?=\b(?:input|output|inout)\b|[;)]|$)",
    re.S,
)
#: A width in plain numbers; a bound longer than this is no width a probe can have (and
#: Python refuses to read an integer of thousands of digits).
_RANGE = re.compile(r"\[\s*(\d{1,6})\s*:\s*(\d{1,6})\s*\]")
#: What of the file a message may repeat as it is; anything else is shown escaped and cut.
_PLAIN = re.compile(r"[\w$\[\]:+\-* ]{1,64}")


def _shown(text: str) -> str:
    """The user's text for a message: as written if plain, else escaped and cut."""
    return text if _PLAIN.fullmatch(text) else ascii(text[:40])


def verilog_probes(filename: str, text: str) -> dict[str, int]:
    """``user_design``'s probes: its ports ``probe_<name>``, name → width (in the order
    declared). A probe must be an output whose width is plain numbers (``[7:0]``), so
    that it is known before Verilator runs."""
    body = verilog_module_body(text, VERILOG_TOP) or ""
    probes: dict[str, int] = {}
    for match in _DECLARATION.finditer(body):
        direction, _, bounds, names = match.groups()
        for raw in names.split(","):
            port = raw.strip().split("=")[0].strip()
            if not port.startswith(PROBE_PREFIX):
                continue
            if direction != "output":
                raise DesignLoadError(f"{filename}: probe port {_shown(port)} must be an output")
            if bounds is None:
                width = 1
            elif fixed := _RANGE.fullmatch(bounds.strip()):
                width = abs(int(fixed[1]) - int(fixed[2])) + 1
            else:
                raise DesignLoadError(
                    f"{filename}: probe port {_shown(port)} has the width "
                    f"{_shown(bounds.strip())}: "
                    "give a probe's width in numbers, as in [7:0]"
                )
            probes[port[len(PROBE_PREFIX) :]] = width
    if problem := probes_problem(list(probes.items())):
        raise DesignLoadError(f"{filename}: {problem}")
    return probes


def check(filename: str, source: bytes) -> str:
    """What can be known about a design file without running it; returns its language."""
    language = language_of(filename)
    text = decode_source(filename, source)
    if language == "verilog":
        check_verilog(filename, text)
        verilog_probes(filename, text)
    return language
