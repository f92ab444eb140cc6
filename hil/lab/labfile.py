"""The lab file: which boards a hardware worker drives, and how to reach each one.

A TOML file (``docs/lab.md`` documents every field)::

    [lab]
    platform = "radiona_ulx3s"     # a LiteX platform (hil.platforms); the boards' pool
    device = "LFE5U-25F"
    baudrate = 1000000             # UARTBone's rate, built into the gateware
    tags = ["rack-a"]              # every board's tags (pools), optional

    [[board]]
    id = 0
    tags = ["usb-hub-1"]           # this board's own, added to the lab's, optional
    bridge = { kind = "uart", port = "/dev/serial/by-id/usb-FTDI_..._D00123-if00-port0" }
    program = { board = "ulx3s", ftdi_serial = "D00123" }
    power_cycle = ["uhubctl", "-l", "1-1", "-p", "2", "-a", "cycle"]

Data only: the backend (``backends.hardware``) acts on it. A bad file is refused with
a message naming the file, the board and the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The boards a lab has when nothing says otherwise: ids 0-9 (the prototype's ten).
NUM_BOARDS = 10
#: Board ids are below this, in every lab (a lab file's, ``--boards``).
MAX_BOARDS = 10_000
#: A platform's or a tag's name (pools select boards by them): lower case, digits,
#: ``_ . -``, up to 32 characters, starting with a letter or a digit.
NAME_RULE = "1 to 32 of a-z 0-9 _ . - (starting with a letter or a digit)"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a platform or a tag (``NAME_RULE``), or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return f"{name!r} is not {NAME_RULE}"
    return None


#: Marks where the bitstream's path goes in a programming command.
BITSTREAM = "{bitstream}"

DEFAULT_PLATFORM = "radiona_ulx3s"
DEFAULT_DEVICE = "LFE5U-25F"
DEFAULT_BAUDRATE = 1_000_000
#: Seconds a bridge operation may take beyond the wire time of its bytes.
DEFAULT_BRIDGE_TIMEOUT = 1.0
DEFAULT_PROGRAM_TIMEOUT = 120.0
#: openFPGALoader's options that write (or erase, or protect) a board's configuration
#: flash, which survives a power cycle and would run a tenant's design at every boot:
#: the lab loads SRAM only.
FLASH_OPTIONS = ("-f", "--write-flash", "--external-flash", "--bulk-erase", "--flash-sector",
                 "--protect-flash", "--unprotect-flash", "--skip-load-bridge")  # fmt: skip
DEFAULT_ETHERBONE_PORT = 1234
#: Words per Etherbone record; the board's Etherbone ``buffer_depth`` must be at least this.
DEFAULT_ETHERBONE_WORDS = 255


class LabFileError(ValueError):
    """The lab file is unusable; the message names the file, the board and the field."""


@dataclass(frozen=True)
class UartBridge:
    """UARTBone over a serial port: a device path or a pyserial URL (``socket://``...)."""

    port: str
    baudrate: int
    timeout: float = DEFAULT_BRIDGE_TIMEOUT

    def describe(self) -> str:
        return f"uart {self.port} @ {self.baudrate} baud"


@dataclass(frozen=True)
class EtherboneBridge:
    host: str
    port: int = DEFAULT_ETHERBONE_PORT
    timeout: float = DEFAULT_BRIDGE_TIMEOUT
    max_words: int = DEFAULT_ETHERBONE_WORDS

    def describe(self) -> str:
        return f"etherbone {self.host}:{self.port}"


Bridge = UartBridge | EtherboneBridge


@dataclass(frozen=True)
class Programmer:
    """A command that loads a bitstream into the FPGA's SRAM; ``{bitstream}`` in it is
    replaced by the file's path."""

    command: tuple[str, ...]
    timeout: float = DEFAULT_PROGRAM_TIMEOUT

    def argv(self, bitstream: Path) -> list[str]:
        return [arg.replace(BITSTREAM, str(bitstream)) for arg in self.command]


@dataclass(frozen=True)
class BoardSpec:
    id: int
    bridge: Bridge
    program: Programmer
    #: A command that power-cycles the board (a USB hub port, a relay), if there is one.
    power_cycle: tuple[str, ...] | None = None
    #: Its tags (the lab's and its own, sorted): what pools select boards by.
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lab:
    platform: str
    device: str
    baudrate: int
    boards: Mapping[int, BoardSpec]
    source: str = "lab file"

    @property
    def board_ids(self) -> list[int]:
        return sorted(self.boards)


# Parsing ------------------------------------------------------------------------------------------


class _Fields:
    """One TOML table being read: typed getters, and a check that nothing is left over."""

    def __init__(self, table: Any, where: str) -> None:
        if not isinstance(table, dict):
            raise LabFileError(f"{where}: expected a table, got {type(table).__name__}")
        self.table = table
        self.where = where
        self.used: set[str] = set()

    def _get(self, name: str, kinds: tuple[type, ...], what: str, default: Any) -> Any:
        self.used.add(name)
        if name not in self.table:
            if default is _REQUIRED:
                raise LabFileError(f"{self.where}: {name}: missing (expected {what})")
            return default
        value = self.table[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise LabFileError(f"{self.where}: {name}: expected {what}, got {value!r}")
        return value

    def text(self, name: str, default: Any = None) -> Any:
        value = self._get(name, (str,), "a string", default)
        if isinstance(value, str) and not value.strip():
            raise LabFileError(f"{self.where}: {name}: must not be empty")
        return value

    def integer(self, name: str, default: Any = None, low: int = 1, high: int = 1 << 32) -> Any:
        value = self._get(name, (int,), "an integer", default)
        if isinstance(value, int) and not low <= value <= high:
            raise LabFileError(f"{self.where}: {name}: {value} is out of range {low}-{high}")
        return value

    def seconds(self, name: str, default: float) -> float:
        value = self._get(name, (int, float), "a number of seconds", default)
        if not 0 < value <= 3600:
            raise LabFileError(f"{self.where}: {name}: {value} is not between 0 and 3600 s")
        return float(value)

    def command(self, name: str, default: Any = None) -> Any:
        value = self._get(name, (list,), "a list of strings (a command)", default)
        if value is not None and (not value or not all(isinstance(a, str) and a for a in value)):
            raise LabFileError(
                f"{self.where}: {name}: expected a non-empty list of non-empty strings"
            )
        return tuple(value) if value is not None else None

    def names(self, name: str) -> tuple[str, ...]:
        """A list of platform/tag names (``NAME_RULE``), none by default."""
        value = self._get(name, (list,), "a list of tags", [])
        for one in value:
            if problem := name_problem(one):
                raise LabFileError(f"{self.where}: {name}: {problem}")
        return tuple(value)

    def table_(self, name: str) -> _Fields:
        self.used.add(name)
        if name not in self.table:
            raise LabFileError(f"{self.where}: {name}: missing")
        return _Fields(self.table[name], f"{self.where}: {name}")

    def done(self) -> None:
        extra = sorted(set(self.table) - self.used)
        if extra:
            known = ", ".join(sorted(self.used))
            raise LabFileError(f"{self.where}: unknown field {extra[0]!r} (known: {known})")


_REQUIRED = object()


def _bridge(fields: _Fields, baudrate: int) -> Bridge:
    kind = fields.text("kind", _REQUIRED)
    timeout = fields.seconds("timeout", DEFAULT_BRIDGE_TIMEOUT)
    if kind == "uart":
        port = fields.text("port", _REQUIRED)
        rate = fields.integer("baudrate", baudrate)
        if rate != baudrate:
            raise LabFileError(
                f"{fields.where}: baudrate: {rate} differs from the lab's {baudrate}, which "
                "is built into the gateware; set [lab] baudrate instead"
            )
        fields.done()
        return UartBridge(port=port, baudrate=baudrate, timeout=timeout)
    if kind == "etherbone":
        host = fields.text("host", _REQUIRED)
        port = fields.integer("port", DEFAULT_ETHERBONE_PORT, high=65535)
        words = fields.integer("max_words", DEFAULT_ETHERBONE_WORDS, high=255)
        fields.done()
        return EtherboneBridge(host=host, port=port, timeout=timeout, max_words=words)
    raise LabFileError(f"{fields.where}: kind: {kind!r} is not a bridge: use uart or etherbone")


def _programmer(fields: _Fields) -> Programmer:
    """Either a ``command`` of our own, or openFPGALoader's options."""
    timeout = fields.seconds("timeout", DEFAULT_PROGRAM_TIMEOUT)
    command = fields.command("command")
    if command is not None:
        fields.done()
        if not any(BITSTREAM in arg for arg in command):
            raise LabFileError(f"{fields.where}: command: must contain {BITSTREAM}")
        if Path(command[0]).name == "openFPGALoader":
            _sram_only(command[1:], f"{fields.where}: command")
        return Programmer(command=command, timeout=timeout)
    tool = fields.text("tool", "openFPGALoader")
    board, cable = fields.text("board"), fields.text("cable")
    serial, ip = fields.text("ftdi_serial"), fields.text("ip")
    port = fields.integer("port", None, high=65535)
    args = fields.command("args") or ()
    fields.done()
    _sram_only(args, f"{fields.where}: args")
    if (board is None) == (cable is None):
        raise LabFileError(
            f'{fields.where}: give exactly one of board (e.g. "ulx3s") or cable '
            '(e.g. "xvc-client"), or a command'
        )
    # --write-sram is openFPGALoader's default: said anyway, as the lab's rule
    argv = [tool, *(["-b", board] if board else ["-c", cable]), "--write-sram"]
    if serial:
        argv += ["--ftdi-serial", serial]
    if ip:
        argv += ["--ip", ip]
    if port is not None:
        argv += ["--port", str(port)]
    return Programmer(command=(*argv, *args, BITSTREAM), timeout=timeout)


def _sram_only(args: tuple[str, ...], where: str) -> None:
    """Refuse openFPGALoader arguments that would touch the configuration flash."""
    for arg in args:
        option = arg.split("=", 1)[0]
        cluster = re.fullmatch(r"-[A-Za-z]+", arg) is not None and "f" in arg
        if option in FLASH_OPTIONS or cluster:
            raise LabFileError(
                f"{where}: {arg!r} would write the board's configuration flash, which keeps a "
                "design across power cycles: the lab loads SRAM only"
            )


def parse_lab(text: str, source: str = "lab file") -> Lab:
    """The lab described by TOML ``text``; raises LabFileError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LabFileError(f"{source}: not valid TOML: {exc}") from None
    top = _Fields(data, source)
    lab = top.table_("lab") if "lab" in data else _Fields({}, f"{source}: [lab]")
    platform = lab.text("platform", DEFAULT_PLATFORM)
    if problem := name_problem(platform):
        raise LabFileError(f"{lab.where}: platform: {problem}")
    device = lab.text("device", DEFAULT_DEVICE)
    baudrate = lab.integer("baudrate", DEFAULT_BAUDRATE, low=9600, high=12_000_000)
    lab_tags = lab.names("tags")
    lab.done()
    rows = top._get("board", (list,), "an array of [[board]] tables", _REQUIRED)
    top.done()
    boards: dict[int, BoardSpec] = {}
    for n, row in enumerate(rows):
        fields = _Fields(row, f"{source}: board #{n + 1}")
        board = fields.integer("id", _REQUIRED, low=0, high=MAX_BOARDS - 1)
        fields.where = f"{source}: board {board}"
        if board in boards:
            raise LabFileError(f"{fields.where}: id: board {board} is described twice")
        spec = BoardSpec(
            id=board,
            bridge=_bridge(fields.table_("bridge"), baudrate),
            program=_programmer(fields.table_("program")),
            power_cycle=fields.command("power_cycle"),
            tags=tuple(sorted({*lab_tags, *fields.names("tags")})),
        )
        fields.done()
        boards[board] = spec
    if not boards:
        raise LabFileError(f"{source}: no [[board]] in the lab")
    return Lab(platform=platform, device=device, baudrate=baudrate, boards=boards, source=source)


def load_lab(path: Path | str) -> Lab:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LabFileError(f"{path}: cannot read the lab file: {exc}") from None
    return parse_lab(text, str(path))
