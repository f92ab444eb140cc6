"""Boards and sessions: ``boards``, ``session``, ``release``."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Annotated

import typer

from fpgalab.client._models import Board as BoardRecord
from fpgalab.client._models import BoardHealth, BoardState, Session
from fpgalab.client.commands._app import Board, Json, Key, SessionId, Url, app, lab
from fpgalab.client.commands._output import Output, Piece
from fpgalab.client.commands._watch import interrupted, watch

#: How a board's state and health look on a terminal.
STATE_STYLE = {
    BoardState.IDLE: "green",
    BoardState.QUEUED: "cyan",
    BoardState.PROGRAMMING: "cyan",
    BoardState.RESERVED: "yellow",
    BoardState.RESETTING: "cyan",
    BoardState.ERROR: "bold red",
}
HEALTH_STYLE = {
    BoardHealth.GOOD: "green",
    BoardHealth.UNKNOWN: "dim",
    BoardHealth.BAD: "bold red",
    BoardHealth.MAINTENANCE: "yellow",
}


@app.command()
def boards(ctx: typer.Context, url: Url = None, key: Key = None, as_json: Json = False) -> None:
    """List the lab's boards: state, health, who holds each (and until when), the job on
    it."""
    here = lab(ctx, url, key, as_json)
    rows = here.client.boards()
    if here.out.json:
        here.out.document(rows)
        return
    now = datetime.now(UTC)
    here.out.table(
        ["BOARD", "PLATFORM", "TAGS", "STATE", "HEALTH", "SESSION", "JOB"],
        [_row(b, now) for b in rows],
    )


def _row(board: BoardRecord, now: datetime) -> list[Piece]:
    health = str(board.health)
    if board.health_reason and board.health is not BoardHealth.GOOD:
        health += f": {board.health_reason}"
    if board.worker is None:
        health += " (no worker)"
    held = ""
    if board.session is not None:
        held = f"{board.session.owner}, {_left(board.session.expires_at, now)}"
    return [
        str(board.fpga_id),
        board.platform or "-",
        ",".join(board.tags) or "-",
        (str(board.state), STATE_STYLE.get(board.state, "")),
        (health, HEALTH_STYLE.get(board.health, "")),
        held,
        board.current_job_id or "",
    ]


def _left(until: datetime, now: datetime) -> str:
    """How long until ``until``, roughly: ``29 min left``."""
    seconds = (until - now).total_seconds()
    if seconds <= 0:
        return "ended"
    if seconds < 90:
        return f"{seconds:.0f} s left"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min left"
    return f"{seconds / 3600:.1f} h left"


def _at(when: datetime, now: datetime) -> str:
    local = when.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"{local} ({_left(when, now)})" if when > now else local


@app.command()
def session(
    ctx: typer.Context,
    board: Board,
    renew: Annotated[
        bool, typer.Option("--renew", help="Extend the session (by --seconds).")
    ] = False,
    seconds: Annotated[
        int | None,
        typer.Option(
            "--seconds",
            min=1,
            metavar="SECONDS",
            show_default=False,
            help="With --renew: by this many seconds [default: the lab's session length].",
        ),
    ] = None,
    session_id: SessionId = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Show the board's session (who holds it, until when); --renew extends it (never past
    its maximum lifetime)."""
    here = lab(ctx, url, key, as_json)
    client = here.client
    if renew:
        now_session = client.renew(board, seconds, session_id=session_id)
    else:
        now_session = client.session(board)
    _show_session(here.out, board, now_session)


def _show_session(out: Output, board: int, s: Session) -> None:
    if out.json:
        out.document(dataclasses.replace(s, fpga_id=board))
        return
    now = datetime.now(UTC)
    out.line(f"FPGA {board}: session ", (s.session_id, "bold"), " of ", (s.owner, "bold"))
    out.line(f"  created   {_at(s.created_at, now)}")
    out.line("  expires   ", (_at(s.expires_at, now), "yellow"))
    out.line(f"  at most   {_at(s.max_expires_at, now)}: no renewal goes past it")


@app.command()
def release(
    ctx: typer.Context,
    board: Board,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait until the board is idle again.")
    ] = False,
    session_id: SessionId = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """End your session on the board: the lab resets it to the base SoC and frees it."""
    here = lab(ctx, url, key, as_json)
    accepted = here.client.release(board, session_id=session_id)
    here.out.line(f"FPGA {board}: released; the reset job ", (accepted.job_id, "bold"),
                  " puts the base SoC back")  # fmt: skip
    if not wait:
        if here.out.json:
            here.out.document(accepted)
        return
    try:
        job = watch(here, board, accepted.job_id, session_id, logs=False)
    except KeyboardInterrupt:
        raise typer.Exit(interrupted(here, board, accepted.job_id, session_id, "reset")) from None
    here.out.line(f"FPGA {board} is ", ("idle", "green"), " again")
    if here.out.json:
        here.out.document({"fpga_id": board, "job": job})
