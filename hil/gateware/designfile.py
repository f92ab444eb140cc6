"""The design-file contract, checked without LiteX (and without running the file):
which languages, which names, which ports. ``hil.gateware.design`` turns a file into gateware.

- Python (``.py``): defines ``Design``, a Migen ``Module`` whose ``bus`` is a
  32-bit ``litex.soc.interconnect.wishbone.Interface`` slave in the ``sys`` domain.
- Verilog (``.v``, ``.sv``): module ``user_design`` with ports ``clk rst
  wb_adr[29:0] wb_dat_w[31:0] wb_dat_r[31:0] wb_sel[3:0] wb_cyc wb_stb wb_we
  wb_ack`` and, optionally, ``wb_err``.
"""

from __future__ import annotations

import re
from pathlib import Path

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


def check(filename: str, source: bytes) -> str:
    """What can be known about a design file without running it; returns its language."""
    language = language_of(filename)
    text = decode_source(filename, source)
    if language == "verilog":
        check_verilog(filename, text)
    return language
