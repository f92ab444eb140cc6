"""Where a command's output goes, and how it looks: rich on a terminal, plain text through
a pipe (or with ``TERM=dumb``), one JSON document with ``--json``. Every string written
passes through ``printable`` first, so that nothing a design wrote is ever obeyed by the
terminal; rich never reads markup or emoji codes in it (``[bold]`` prints as is)."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from fpgalab.client._text import printable

if TYPE_CHECKING:
    from rich.console import Console

#: A piece of a line: text, or (text, rich style) — the style is dropped in plain mode.
Piece = str | tuple[str, str]


def is_terminal(stream: IO[str]) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def colour_allowed() -> bool:
    """https://no-color.org: a non-empty ``NO_COLOR`` turns colour off."""
    return not os.environ.get("NO_COLOR")


class Output:
    """A command's stdout (results) and stderr (what went wrong, a followed log with
    ``--json``). ``terminal``: stdout is a terminal and not ``--json``: live displays,
    styles and tables drawn by rich."""

    def __init__(self, as_json: bool = False) -> None:
        self.json = as_json
        self.terminal = not as_json and is_terminal(sys.stdout)
        #: A JSON document has been written (``--json`` writes one only).
        self.printed = False
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """rich on stdout, for the terminal only (never fed text it could read as markup)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(
                file=sys.stdout,
                markup=False,
                emoji=False,
                highlight=False,
                no_color=not colour_allowed(),
            )
        return self._console

    # Lines ------------------------------------------------------------------------------

    def line(self, *pieces: Piece) -> None:
        """One line of the result (nothing in ``--json`` mode: the document is the result)."""
        if self.json:
            return
        if self.terminal:
            self.console.print(styled(pieces), overflow="fold")
        else:
            _write(sys.stdout, "".join(p if isinstance(p, str) else p[0] for p in pieces))

    def log(self, line: str) -> None:
        """A line of a log as it comes (to stderr in ``--json`` mode)."""
        if self.terminal:
            from rich.text import Text

            self.console.print(Text(printable(line)), overflow="fold")
        else:
            _write(sys.stderr if self.json else sys.stdout, line)

    def error(self, message: str) -> None:
        _write(sys.stderr, f"fpgalab: {message}")

    def note(self, message: str) -> None:
        """A remark beside the result (a hint, what was done on Ctrl-C): stderr."""
        _write(sys.stderr, message)

    # Documents -----------------------------------------------------------------------------

    def document(self, doc: Any) -> None:
        """The one JSON document of ``--json`` (ASCII only: every control character of a
        string in it is a ``\\u`` escape)."""
        sys.stdout.write(json.dumps(doc, default=_jsonable, indent=2) + "\n")
        sys.stdout.flush()
        self.printed = True

    # Questions -----------------------------------------------------------------------------

    @property
    def can_ask(self) -> bool:
        """Someone is there to answer: stdin and stderr are a terminal."""
        return is_terminal(sys.stdin) and is_terminal(sys.stderr)

    def ask(self, question: str) -> bool:
        """A yes/no question on the terminal (stderr); no is the default, and so are the
        end of input and a second Ctrl-C."""
        sys.stderr.write(printable(question) + " [y/N] ")
        sys.stderr.flush()
        try:
            answer = sys.stdin.readline()
        except (KeyboardInterrupt, EOFError):
            sys.stderr.write("\n")
            return False
        return answer.strip().lower() in ("y", "yes")

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Piece]]) -> None:
        """Rows under a header: drawn by rich on a terminal, aligned text in a pipe."""
        rows = list(rows)
        if self.terminal:
            from rich import box
            from rich.table import Table

            table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
            for name in columns:
                table.add_column(name, overflow="fold")
            for row in rows:
                table.add_row(*(styled([cell]) for cell in row))
            self.console.print(table)
            return
        texts = [[printable(c if isinstance(c, str) else c[0]) for c in row] for row in rows]
        widths = [max([len(n)] + [len(r[i]) for r in texts]) for i, n in enumerate(columns)]
        for row in [list(columns), *texts]:
            _write(sys.stdout, "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def styled(pieces: Iterable[Piece]) -> Any:
    """A rich ``Text`` of ``pieces``, each escaped (never parsed as markup)."""
    from rich.text import Text

    text = Text()
    for piece in pieces:
        if isinstance(piece, str):
            text.append(printable(piece))
        else:
            text.append(printable(piece[0]), style=piece[1])
    return text


def _write(stream: IO[str], text: str) -> None:
    stream.write(printable(text) + "\n")
    stream.flush()


def _jsonable(value: object) -> Any:
    """The JSON of what the client returns: records as objects (as the API shows them),
    times in UTC with ``Z``, enums as their value."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"{type(value).__name__} is not JSON")
