"""Wishbone reads and writes on a board you hold: ``read``, ``write``, ``run`` (several ops in
one job). Addresses are numbers (``0x40000000``, ``1024``) or names from the board's
memory map (a region such as ``user``, a CSR such as ``ctrl_scratch``, ``user+0x10``).
They act in the board's session: the one you hold now, or ``--session``."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from fpgalab.client._client import BoardSession
from fpgalab.client._models import Read, RunResult, Write
from fpgalab.client.commands._app import (
    Board,
    Json,
    Key,
    Lab,
    SessionId,
    Url,
    app,
    lab,
    usage,
)
from fpgalab.client.commands._watch import interrupted, watch

#: Words on one line of a dump.
PER_LINE = 4
#: What separates two ops on ``run``'s command line.
SEPARATOR = ","

Address = Annotated[
    str,
    typer.Argument(
        help="A byte address (0x40000000, 1024) or a name from the memory map "
        "(user, ctrl_scratch, user+0x10).",
        show_default=False,
    ),
]
Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Stop waiting after this many seconds (exit code 1).",
        min=0.1,
        show_default=False,
    ),
]


Trace = Annotated[
    bool,
    typer.Option(
        "--trace",
        help="Capture the run on the board's logic analyzer and save the waveform (VCD).",
    ),
]
Output = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Where --trace saves the waveform (default: fpga<N>-<job>.vcd here).",
        dir_okay=False,
        show_default=False,
    ),
]
Signals = Annotated[
    str | None,
    typer.Option(
        "--signals",
        metavar="NAMES",
        help="With --trace: the signals to show, comma-separated (default: all the "
        "analyzer captures: the bus and the design's probes).",
        show_default=False,
    ),
]


@dataclass(frozen=True)
class Tracing:
    """What --trace, --signals and -o asked for."""

    output: Path | None
    signals: tuple[str, ...] | None

    @classmethod
    def of(cls, trace: bool, output: Path | None, signals: str | None) -> Tracing | None:
        if not trace:
            if output is not None or signals is not None:
                raise usage("-o/--output and --signals go with --trace")
            return None
        names = tuple(n.strip() for n in signals.split(",") if n.strip()) if signals else None
        if signals is not None and not names:
            raise usage("--signals: name at least one signal (e.g. wb_adr,wb_dat_r)")
        return cls(output, names)


@dataclass(frozen=True)
class Spec:
    """An op as typed: its address not yet looked up in the memory map."""

    write: bool
    address: str | int
    length: int = 1
    data: tuple[int, ...] = ()

    def op(self, session: BoardSession) -> Read | Write:
        address = resolve(self.address, session)
        return Write(address, list(self.data)) if self.write else Read(address, self.length)


def number(text: str, what: str) -> int:
    """An integer as typed: decimal, or 0x hex (0o, 0b; underscores allowed)."""
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise usage(f"{what} {text!r} is not a number (e.g. 16, 0x10)") from None


def address_of(text: str) -> str | int:
    """A number, or a name (checked against the memory map later)."""
    if text[:1].isdigit():
        return number(text, "address")
    return text


def resolve(address: str | int, session: BoardSession) -> int:
    """A byte address: a number as is; ``name`` or ``name+offset`` from the memory map."""
    if isinstance(address, int):
        return address
    name, plus, offset = address.partition("+")
    try:
        base = session.memory_map().address(name.strip())
    except KeyError as exc:
        raise usage(str(exc.args[0])) from None
    return base + (number(offset, "offset") if plus else 0)


def parse_ops(tokens: Sequence[str]) -> list[Spec]:
    """``read ADDR [LENGTH]`` and ``write ADDR WORD...``, separated by ``,``."""
    groups: list[list[str]] = [[]]
    for token in tokens:
        for i, part in enumerate(token.split(SEPARATOR)):
            if i:
                groups.append([])
            if part.strip():
                groups[-1].append(part.strip())
    specs = []
    for group in groups:
        if not group:
            continue
        kind, args = group[0].lower(), group[1:]
        if kind in ("read", "r") and len(args) in (1, 2):
            length = number(args[1], "length") if len(args) == 2 else 1
            specs.append(Spec(False, address_of(args[0]), length))
        elif kind in ("write", "w") and len(args) >= 2:
            words = tuple(number(w, "word") for w in args[1:])
            specs.append(Spec(True, address_of(args[0]), data=words))
        else:
            raise usage(f"not an op: {' '.join(group)!r} (read ADDR [LENGTH], or write ADDR "
                        "WORD...; ops separated by ',')")  # fmt: skip
    return specs


def load_ops(path: str) -> list[Spec]:
    """Ops from a JSON file (``-``: stdin): a list of ``{"op": "read"|"write"|2|1,
    "address": ..., "length"|"data": ...}``, or the API's ``{"ops": [...]}``."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        raw = json.loads(text)
    except (OSError, ValueError) as exc:
        raise usage(f"--ops {path}: {exc}") from None
    if isinstance(raw, dict):
        raw = raw.get("ops")
    if not isinstance(raw, list):
        raise usage(f'--ops {path}: expected a JSON list of ops (or {{"ops": [...]}})')
    specs = []
    for i, one in enumerate(raw):
        try:
            kind = {1: "write", 2: "read"}.get(one["op"], one["op"])
            address = one["address"]
            if isinstance(address, str):
                address = address_of(address)
            if not isinstance(address, str | int):
                raise TypeError(f"address {address!r}")
            if kind == "read":
                specs.append(Spec(False, address, int(one.get("length", 1))))
            elif kind == "write":
                data = [one["data"]] if isinstance(one["data"], int) else one["data"]
                specs.append(Spec(True, address, data=tuple(int(w) for w in data)))
            else:
                raise ValueError(f"op {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise usage(f"--ops {path}: op {i}: {exc!r}") from None
    return specs


def dump(address: int, words: Sequence[int]) -> list[str]:
    """Words as lines of ``0xADDRESS: 0xWORD ...``."""
    lines = []
    for i in range(0, len(words), PER_LINE):
        chunk = " ".join(f"0x{w:08x}" for w in words[i : i + PER_LINE])
        lines.append(f"0x{address + 4 * i:08x}: {chunk}")
    return lines


def execute(
    here: Lab,
    board: int,
    specs: list[Spec],
    session_id: str | None,
    timeout: float | None,
    tracing: Tracing | None = None,
) -> tuple[str, list[Read | Write], RunResult]:
    """Run ``specs`` in one job in the board's session; the job id, the ops, the result."""
    client = here.client
    held = client.attach(board, session_id)
    ops = [spec.op(held) for spec in specs]
    accepted = client.run(
        board, ops[0] if len(ops) == 1 else ops, session_id=held.session_id,
        trace=tracing is not None, signals=tracing.signals if tracing else None,
    )  # fmt: skip
    sid = held.session_id
    try:
        watch(here, board, accepted.job_id, sid, logs=False, timeout=timeout)
    except KeyboardInterrupt:
        raise typer.Exit(interrupted(here, board, accepted.job_id, sid, "run")) from None
    return accepted.job_id, ops, client.result(board, accepted.job_id, session_id=sid)


def save_trace(
    here: Lab, board: int, job_id: str, result: RunResult, tracing: Tracing | None
) -> dict[str, object] | None:
    """A traced run's waveform, saved where -o says; what to report of it (None: not
    traced). A run that made none exits 1 once its data is out, saying why."""
    if tracing is None:
        return None
    info = result.trace
    if info is None or not info.ok:
        why = info.error if info is not None and info.error else "the lab made no waveform"
        here.out.error(f"no waveform: {why}")
        return {"ok": False, "error": why}
    # the job id is the lab's word: only its safe characters name a file here
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", job_id)[:64]
    path = tracing.output or Path(f"fpga{board}-{safe}.vcd")
    data = here.client.waveform(board, job_id)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise usage(f"-o {path}: {exc.strerror or exc}") from None
    if not here.out.json:
        full = "; the analyzer filled up: it shows the run's start" if info.full else ""
        here.out.note(f"waveform: {info.samples} samples, {len(data):,} bytes → {path}{full}")
    return {"ok": True, "path": str(path), "samples": info.samples, "bytes": len(data),
            "full": info.full, "signals": list(info.signals)}  # fmt: skip


def failed(saved: dict[str, object] | None) -> None:
    """Exit 1 if a trace was asked for and none was made (the data is out by now)."""
    if saved is not None and not saved["ok"]:
        raise typer.Exit(1)


@app.command()
def read(
    ctx: typer.Context,
    address: Address,
    board: Board,
    length: Annotated[int, typer.Argument(help="Words to read.", min=1)] = 1,
    session_id: SessionId = None,
    timeout: Timeout = None,
    trace: Trace = False,
    output: Output = None,
    signals: Signals = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Read LENGTH 32-bit words from ADDRESS on the board you hold."""
    here = lab(ctx, url, key, as_json)
    tracing = Tracing.of(trace, output, signals)
    job_id, ops, result = execute(
        here, board, [Spec(False, address_of(address), length)], session_id, timeout, tracing
    )
    for line in dump(ops[0].address, result.data):
        here.out.line(line)
    saved = save_trace(here, board, job_id, result, tracing)
    if here.out.json:
        doc = {"fpga_id": board, "job_id": job_id, "address": ops[0].address,
               "data": result.data}  # fmt: skip
        here.out.document(doc if saved is None else {**doc, "trace": saved})
    failed(saved)


@app.command()
def write(
    ctx: typer.Context,
    address: Address,
    words: Annotated[
        list[str], typer.Argument(help="32-bit words, to consecutive words from ADDRESS.")
    ],
    board: Board,
    session_id: SessionId = None,
    timeout: Timeout = None,
    trace: Trace = False,
    output: Output = None,
    signals: Signals = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Write WORDS from ADDRESS on the board you hold."""
    here = lab(ctx, url, key, as_json)
    tracing = Tracing.of(trace, output, signals)
    data = tuple(number(w, "word") for w in words)
    job_id, ops, result = execute(
        here, board, [Spec(True, address_of(address), data=data)], session_id, timeout, tracing
    )
    n = len(data)
    here.out.line(f"wrote {n} word{'s' * (n != 1)} at 0x{ops[0].address:08x}")
    saved = save_trace(here, board, job_id, result, tracing)
    if here.out.json:
        doc = {"fpga_id": board, "job_id": job_id, "address": ops[0].address,
               "data": list(data)}  # fmt: skip
        here.out.document(doc if saved is None else {**doc, "trace": saved})
    failed(saved)


@app.command()
def run(
    ctx: typer.Context,
    board: Board,
    ops: Annotated[
        list[str] | None,
        typer.Argument(
            help="Ops: 'read ADDR [LENGTH]' or 'write ADDR WORD...', separated by ','.",
            metavar="OP...",
            show_default=False,
        ),
    ] = None,
    ops_file: Annotated[
        str | None,
        typer.Option(
            "--ops",
            metavar="FILE",
            show_default=False,
            help='Ops from a JSON file (- for stdin): [{"op": "read", "address": '
            '"user", "length": 2}, {"op": "write", "address": 4096, "data": [1]}]',
        ),
    ] = None,
    session_id: SessionId = None,
    timeout: Timeout = None,
    trace: Trace = False,
    output: Output = None,
    signals: Signals = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Run several reads and writes in order, in one job, on the board you hold. The
    first bus error stops them (exit code 1, naming the op). --trace saves the run's
    waveform as the board's logic analyzer captured it (-o FILE).

    Example: fpgalab run --board 3 write user 5 7, read user 2 --trace -o run.vcd"""
    here = lab(ctx, url, key, as_json)
    tracing = Tracing.of(trace, output, signals)
    specs = (load_ops(ops_file) if ops_file else []) + parse_ops(ops or [])
    if not specs:
        raise usage("no ops: give them as arguments (read ADDR [LENGTH], write ADDR WORD...) "
                    "or with --ops FILE")  # fmt: skip
    job_id, done, result = execute(here, board, specs, session_id, timeout, tracing)
    if here.out.json:
        saved = save_trace(here, board, job_id, result, tracing)
        doc = {"fpga_id": board, "job_id": job_id, "ops": [op.body() for op in done],
               "result": result}  # fmt: skip
        here.out.document(doc if saved is None else {**doc, "trace": saved})
        failed(saved)
        return
    per_op = [r.data for r in result.results] if result.results else [result.data]
    for op, data in zip(done, per_op, strict=False):
        if isinstance(op, Write):
            n = len(op.data)
            here.out.line(("write", "bold"), f" {n} word{'s' * (n != 1)} at 0x{op.address:08x}")
        else:
            here.out.line(("read", "bold"), f" {op.length} at 0x{op.address:08x}")
            for line in dump(op.address, data):
                here.out.line("  " + line)
    failed(save_trace(here, board, job_id, result, tracing))
