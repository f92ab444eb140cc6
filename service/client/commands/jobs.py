"""Designs and jobs: ``submit``, ``logs``, ``cancel``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from fpgalab.client._errors import JobFailed
from fpgalab.client._models import JobStatus
from fpgalab.client.commands._app import (
    Board,
    Json,
    Key,
    Outcome,
    SessionId,
    Url,
    app,
    lab,
)
from fpgalab.client.commands._watch import interrupted, watch

Design = Annotated[
    Path,
    typer.Argument(
        help="The design: a Python (LiteX/Migen) or Verilog file.",
        exists=True,
        dir_okay=False,
        readable=True,
        show_default=False,
    ),
]
Wait = Annotated[
    bool,
    typer.Option(
        "--wait",
        "-w",
        help="Wait for the build: a live status line on a terminal; "
        "the exit code is the build's outcome.",
    ),
]
Follow = Annotated[
    bool,
    typer.Option("--follow", "-f", help="Stream the log as it comes (implies --wait)."),
]
Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Stop waiting after this many seconds (exit code 1; the job goes on).",
        min=0.1,
        show_default=False,
    ),
]
JobId = Annotated[str, typer.Argument(help="The job's id.", show_default=False)]


@app.command()
def submit(
    ctx: typer.Context,
    design: Design,
    board: Board,
    wait: Wait = False,
    follow: Follow = False,
    timeout: Timeout = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Upload a design to a board: the lab builds it and programs the board, which is
    then reserved for you (a session). Prints the job and session ids.

    Exit code with --wait: 0 the build is on the board, 1 it failed (the log's last lines
    follow), 3 the lab refused the submit. Ctrl-C while waiting asks whether to cancel the
    build (on a terminal; elsewhere it goes on)."""
    here = lab(ctx, url, key, as_json)
    out = here.out
    accepted = here.client.submit(board, design)
    sid = accepted.session_id or ""
    out.line(("job ", "dim"), (accepted.job_id, "bold"), f" queued on FPGA {board}",
             ("  session ", "dim"), sid)  # fmt: skip
    if not (wait or follow):
        if out.json:
            out.document(accepted)
        out.note(f"follow it: fpgalab logs {accepted.job_id} --board {board} --follow")
        return
    try:
        job = watch(here, board, accepted.job_id, sid, follow=follow, timeout=timeout)
    except KeyboardInterrupt:
        raise typer.Exit(interrupted(here, board, accepted.job_id, sid, "build")) from None
    except JobFailed as exc:
        if exc.job.status is JobStatus.FAILED:  # the board keeps the session, in error
            exc.add_note(f"FPGA {board} stays yours until you give it back: fpgalab release "
                         f"--board {board}")  # fmt: skip
        raise
    took = _seconds(job.started_at or job.created_at, job.finished_at)
    until = f" until {_clock(accepted.expires_at)}" if accepted.expires_at else ""
    out.line(("complete", "bold green"), f": FPGA {board} is reserved for you{until}{took}")
    if out.json:
        out.document({"job": job, "session_id": sid, "expires_at": accepted.expires_at})
    out.note(f"next: fpgalab read --board {board} ADDRESS; when done: fpgalab release "
             f"--board {board}")  # fmt: skip


@app.command()
def logs(
    ctx: typer.Context,
    job_id: JobId,
    board: Board,
    follow: Follow = False,
    session: SessionId = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Print a job's log (what the build tools and the design printed: control characters
    are shown escaped, never obeyed). With --follow, go on until the job ends."""
    here = lab(ctx, url, key, as_json)
    lines: list[str] = []
    try:
        for line in here.client.logs(board, job_id, follow=follow, session_id=session):
            lines.append(line)
            if not here.out.json:
                here.out.log(line)
    except KeyboardInterrupt:
        here.out.note(f"stopped following; the job {job_id} goes on")
        raise typer.Exit(Outcome.INTERRUPTED) from None
    if here.out.json:
        here.out.document({"fpga_id": board, "job_id": job_id, "lines": lines})


@app.command()
def cancel(
    ctx: typer.Context,
    job_id: JobId,
    board: Board,
    session: SessionId = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Cancel a job no worker has taken yet (a cancelled build frees the board)."""
    here = lab(ctx, url, key, as_json)
    here.client.cancel(board, job_id, session_id=session)
    here.out.line(f"cancelled the job {job_id} on FPGA {board}")
    if here.out.json:
        here.out.document({"fpga_id": board, "job_id": job_id, "cancelled": True})


def _clock(at: datetime | None) -> str:
    """A time of the lab as the local clock shows it."""
    return "?" if at is None else at.astimezone().strftime("%H:%M:%S")


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f" (took {(end - start).total_seconds():.1f} s)"
