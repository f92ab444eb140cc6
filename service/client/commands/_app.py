"""The typer app, its options every command shares, and the one place where what went
wrong becomes an exit code (``Outcome``) and a message."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from fpgalab.client._client import Client
from fpgalab.client._errors import (
    FpgalabError,
    JobFailed,
    JobTimeout,
    LabError,
    NoIdleBoard,
    TransportError,
    UnexpectedResponse,
)
from fpgalab.client._protocol import DEFAULT_TIMEOUT, KEY_ENV, URL_ENV, Options
from fpgalab.client.commands._output import Output


class Outcome(enum.IntEnum):
    """The exit codes of the client commands (docs/cli.md)."""

    #: Done; a job waited for is complete.
    OK = 0
    #: A job waited for failed or was cancelled (a build, a run's bus error).
    FAILED = 1
    #: The command line was wrong (click's own code for it).
    USAGE = 2
    #: The lab answered with an error (``{"detail": {"error": ...}}``): refused.
    REFUSED = 3
    #: The lab could not be reached, or answered what this client cannot read.
    UNREACHABLE = 4
    #: Ctrl-C; a job being waited for goes on (unless the answer was to cancel it).
    INTERRUPTED = 130


#: The commands in the order ``--help`` lists them.
ORDER = ("boards", "submit", "logs", "cancel", "read", "write", "run", "session", "release")


class _Commands(TyperGroup):
    """Runs a command, and turns the client's errors into a message and an exit code."""

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        """In the order a session goes (help lists them so), then any others."""
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except Usage as exc:
            name = ctx.invoked_subcommand or ""
            where = f"{ctx.command_path} {name}".strip()
            _write_usage(f"Usage error: {exc}\nTry '{where} -h' for help.")
            raise typer.Exit(Outcome.USAGE) from None
        except FpgalabError as exc:
            out = ctx.obj.out if isinstance(ctx.obj, Lab) else Output()
            raise typer.Exit(report(out, exc)) from None
        except KeyboardInterrupt:
            out = ctx.obj.out if isinstance(ctx.obj, Lab) else Output()
            out.error("interrupted")
            raise typer.Exit(Outcome.INTERRUPTED) from None


def report(out: Output, exc: FpgalabError) -> Outcome:
    """Say what went wrong (stderr; with ``--json`` also a document ``{"error": ...}`` on
    stdout, unless the command printed its own); its exit code."""
    outcome, doc = _judge(exc)
    out.error(f"the lab refused: {exc}" if isinstance(exc, LabError) else str(exc))
    if isinstance(exc, TransportError):
        out.note(f"is the lab running there? Say where it is with --url or {URL_ENV}.")
    if isinstance(exc, JobFailed) and exc.log_tail:
        out.note("the log's last lines:")
        for line in exc.log_tail:
            out.note("  " + line)
    for note in getattr(exc, "__notes__", ()):
        out.note(note)
    if out.json and not out.printed:
        out.document({"error": {**doc, "message": str(exc)}})
    return outcome


def _judge(exc: FpgalabError) -> tuple[Outcome, dict[str, Any]]:
    """An error's exit code, and what ``--json`` says of it beside the message."""
    if isinstance(exc, LabError):
        return Outcome.REFUSED, {"code": exc.code, "status": exc.status}
    if isinstance(exc, NoIdleBoard):
        return Outcome.REFUSED, {"code": "no_idle_board"}
    if isinstance(exc, TransportError):
        return Outcome.UNREACHABLE, {"code": "unreachable"}
    if isinstance(exc, UnexpectedResponse):
        return Outcome.UNREACHABLE, {"code": "unexpected_response"}
    if isinstance(exc, JobFailed):
        doc = {"code": f"job_{exc.job.status}", "job": exc.job, "log_tail": exc.log_tail}
        return Outcome.FAILED, {**doc, "result": exc.result}
    if isinstance(exc, JobTimeout):
        return Outcome.FAILED, {"code": "job_timeout", "job": exc.job}
    return Outcome.FAILED, {"code": type(exc).__name__}


app = typer.Typer(
    name="fpgalab",
    cls=_Commands,
    help="The lab's client commands: boards, designs, bus reads and writes, logs, sessions. "
    "See docs/cli.md.",
    epilog="The lab itself: fpgalab serve (API, worker and a private Redis), fpgalab api, "
    "fpgalab worker, fpgalab twin; each needs the lab installed (pip install 'fpgalab[lab]') "
    "and has its own -h.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

LAB = "Lab"
# On the app (before the command): read from the environment too. On each command (after
# it): the same options, which win; without an environment variable, so that one given
# before the command is not overridden by the environment.
GlobalUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar=URL_ENV,
        metavar="URL",
        help="The lab's URL [default: http://127.0.0.1:8000].",
        show_default=False,
        rich_help_panel=LAB,
    ),
]
GlobalKey = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar=KEY_ENV,
        metavar="KEY",
        help="Your API key (better: FPGALAB_API_KEY).",
        show_default=False,
        rich_help_panel=LAB,
    ),
]
Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="The lab's URL (FPGALAB_URL).",
        show_default=False,
        rich_help_panel=LAB,
    ),
]
Key = Annotated[
    str | None,
    typer.Option(
        "--key",
        metavar="KEY",
        help="Your API key (FPGALAB_API_KEY).",
        show_default=False,
        rich_help_panel=LAB,
    ),
]
Json = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document (for scripts).", rich_help_panel=LAB),
]
Board = Annotated[
    int,
    typer.Option(
        "--board",
        "-b",
        envvar="FPGALAB_BOARD",
        metavar="N",
        help="The board (FPGALAB_BOARD).",
        show_default=False,
    ),
]
#: ``--board`` where a job's id is enough to find it (``GET /jobs/{job_id}``).
BoardOrJob = Annotated[
    int | None,
    typer.Option(
        "--board",
        "-b",
        envvar="FPGALAB_BOARD",
        metavar="N",
        help="The job's board (FPGALAB_BOARD); default: the lab says which.",
        show_default=False,
    ),
]
SessionId = Annotated[
    str | None,
    typer.Option(
        "--session",
        metavar="ID",
        help="Act only on this session of the board (default: the board's session now).",
        show_default=False,
    ),
]


@dataclass
class Lab:
    """What a command works with: the lab's URL and key, and its output."""

    url: str | None = None
    key: str | None = None
    out: Output = field(default_factory=Output)
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(self) -> Client:
        """A client of its own (for another thread: ``client``'s connections are this
        thread's); the caller closes it."""
        url = Options.resolve(self.url, self.key, DEFAULT_TIMEOUT, 0).url
        # A lab on plain http needs no TLS: not loading the CA bundle (httpx does at
        # once, for any URL) saves a tenth of the command's start-up.
        plain = url.lower().startswith("http://")
        return Client(url, api_key=self.key, verify=not plain)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@app.callback()
def _options(ctx: typer.Context, url: GlobalUrl = None, key: GlobalKey = None,
             as_json: Json = False) -> None:  # fmt: skip
    ctx.obj = Lab(url, key, Output(as_json))


def lab(ctx: typer.Context, url: str | None, key: str | None, as_json: bool) -> Lab:
    """The command's ``Lab``: its own options over the app's (and the environment's)."""
    found = ctx.find_object(Lab)
    if found is None:  # the command called without the app (a test's invoke)
        found = ctx.obj = Lab()
    # the app's object, updated in place: the app's error handler sees the command's output
    found.url, found.key = url or found.url, key or found.key
    if as_json and not found.out.json:
        found.out = Output(as_json=True)
    ctx.call_on_close(found.close)
    return found


class Usage(Exception):
    """A mistake on the command line found by a command (exit code 2, as click's own)."""


def usage(message: str) -> Usage:
    return Usage(message)


def _write_usage(text: str) -> None:
    for line in text.splitlines():
        Output().note(line)
