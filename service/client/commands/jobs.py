"""Designs and jobs: ``submit``, ``logs``, ``cancel``."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from fpgalab.client._errors import JobFailed, JobNotCancellable
from fpgalab.client._models import JobStatus, PoolJob
from fpgalab.client.commands._app import (
    BoardOrJob,
    Json,
    Key,
    Lab,
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
POOL = "Pools: no --board, the first free board that fits"
SubmitBoard = Annotated[
    int | None,
    typer.Option(
        "--board",
        "-b",
        envvar="FPGALAB_BOARD",
        metavar="N",
        help="The board (FPGALAB_BOARD); without it, the lab's first free board that fits "
        "--platform and --tags.",
        show_default=False,
    ),
]
Platform = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="Only a board of this platform (e.g. sim).",
                 show_default=False, rich_help_panel=POOL),
]  # fmt: skip
Tags = Annotated[
    str | None,
    typer.Option(metavar="TAG,...", help="Only a board with all of these tags.",
                 show_default=False, rich_help_panel=POOL),
]  # fmt: skip
Priority = Annotated[
    int | None,
    typer.Option(metavar="0-100", min=0, max=100, help="Its place in the queue, higher first "
                 "(default 50; above 89 is the admins').", show_default=False,
                 rich_help_panel=POOL),
]  # fmt: skip


@app.command()
def submit(
    ctx: typer.Context,
    design: Design,
    board: SubmitBoard = None,
    platform: Platform = None,
    tags: Tags = None,
    priority: Priority = None,
    wait: Wait = False,
    follow: Follow = False,
    timeout: Timeout = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Upload a design to a board — or, without --board, to the first free board that fits
    --platform and --tags — the lab builds it and programs the board, which is then
    reserved for you (a session). Prints the job and session ids.

    Exit code with --wait: 0 the build is on the board, 1 it failed (the log's last lines
    follow) or --timeout passed, 3 the lab refused the submit. Ctrl-C while waiting asks
    whether to cancel the build (on a terminal; elsewhere it goes on)."""
    here = lab(ctx, url, key, as_json)
    out = here.out
    if board is not None and (platform or tags or priority is not None):
        raise typer.BadParameter("--platform, --tags and --priority are for a submit "
                                 "without --board (to a pool)", param_hint="--board")  # fmt: skip
    started = time.monotonic()
    if board is None:
        wanted = [t.strip() for t in (tags or "").split(",") if t.strip()]
        pooled = here.client.submit_to_pool(
            design, platform=platform, tags=wanted, priority=priority
        )
        sid = pooled.session_id or ""
        where = _pool_name(platform, wanted)
        if pooled.fpga_id is not None:
            out.line(("job ", "dim"), (pooled.job_id, "bold"),
                     f" placed on FPGA {pooled.fpga_id} ({where})",
                     ("  session ", "dim"), sid)  # fmt: skip
        else:
            out.line(("job ", "dim"), (pooled.job_id, "bold"), f" waiting for {where}: "
                     f"{_standing(pooled)}", ("  session ", "dim"), sid)  # fmt: skip
        if not (wait or follow):
            if out.json:
                out.document(pooled)
            out.note(f"follow it: fpgalab logs {pooled.job_id} --follow")
            return
        waited = not pooled.placed
        try:
            pooled = wait_placed(here, pooled, timeout)
        except KeyboardInterrupt:
            raise typer.Exit(interrupted_in_pool(here, pooled.job_id)) from None
        if pooled.fpga_id is None:
            message = f"the job {pooled.job_id} ended {pooled.status} before a board took it"
            out.error(message + (f": {pooled.error}" if pooled.error else ""))
            raise typer.Exit(Outcome.FAILED)
        board = pooled.fpga_id
        if waited and not out.json:
            out.note(f"placed on FPGA {board}")
        expires_at = None
    else:
        accepted = here.client.submit(board, design)
        sid = accepted.session_id or ""
        out.line(("job ", "dim"), (accepted.job_id, "bold"), f" queued on FPGA {board}",
                 ("  session ", "dim"), sid)  # fmt: skip
        if not (wait or follow):
            if out.json:
                out.document(accepted)
            out.note(f"follow it: fpgalab logs {accepted.job_id} --board {board} --follow")
            return
        pooled = None
        expires_at = accepted.expires_at
    job_id = pooled.job_id if pooled is not None else accepted.job_id
    left = None if timeout is None else max(0.1, timeout - (time.monotonic() - started))
    try:
        job = watch(here, board, job_id, sid, follow=follow, timeout=left)
    except KeyboardInterrupt:
        raise typer.Exit(interrupted(here, board, job_id, sid, "build")) from None
    except JobFailed as exc:
        if exc.job.status is JobStatus.FAILED:  # the board keeps the session, in error
            exc.add_note(f"FPGA {board} stays yours until you give it back: fpgalab release "
                         f"--board {board}")  # fmt: skip
        raise
    if expires_at is None:
        expires_at = here.client.session(board).expires_at
    took = _seconds(job.started_at or job.created_at, job.finished_at)
    out.line(("complete", "bold green"),
             f": FPGA {board} is reserved for you until {_clock(expires_at)}{took}")  # fmt: skip
    if out.json:
        out.document({"job": job, "session_id": sid, "expires_at": expires_at})
    out.note(f"next: fpgalab read --board {board} ADDRESS; when done: fpgalab release "
             f"--board {board}")  # fmt: skip


def _pool_name(platform: str | None, tags: list[str]) -> str:
    """``a sim board with dsp, big``: what a pool job waits for, in words."""
    kind = f"{platform} board" if platform else "board"
    return f"a {kind}" + (f" with {', '.join(tags)}" if tags else "")


def _standing(job: PoolJob) -> str:
    ahead = job.queue_position or 0
    eta = f", about {job.eta_seconds:.0f} s" if job.eta_seconds is not None else ""
    return f"{ahead} job{'s' if ahead != 1 else ''} ahead{eta}"


def wait_placed(here: Lab, job: PoolJob, timeout: float | None) -> PoolJob:
    """The pool job once a board has taken it (or it ended without one): its standing on
    the status line (a terminal) or on stderr when it changes (a pipe). Past ``timeout``:
    exit 1, the job left waiting."""
    out = here.out
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = ""
    status = None
    if out.terminal:
        from rich.status import Status

        status = Status(f"waiting for a board: {_standing(job)}", console=out.console)
        status.start()
    try:
        while not (job.placed or job.finished):
            now = _standing(job)
            if status is not None:
                status.update(f"waiting for a board: {now}")
            elif now != shown and not out.json:
                out.note(f"waiting for a board: {now}")
            shown = now
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                out.error(f"no board took the job {job.job_id} within {timeout:g} s; it goes "
                          f"on waiting (cancel it: fpgalab cancel {job.job_id})")  # fmt: skip
                raise typer.Exit(Outcome.FAILED)
            # held by the lab until it is placed; looked at again every few seconds for
            # the line's position and ETA
            hold = 5.0 if left is None else max(0.1, min(5.0, left))
            job = here.client.pool_job(job.job_id, wait=hold)
    finally:
        if status is not None:
            status.stop()
    return job


def interrupted_in_pool(here: Lab, job_id: str) -> Outcome:
    """Ctrl-C while a pool job waits for a board: on a terminal, ask whether to cancel it
    (it then never runs); else leave it waiting."""
    out = here.out
    if not out.can_ask or not out.ask(f"Cancel the job {job_id} (it has no board yet)?"):
        out.note(f"left the job {job_id} waiting (cancel it: fpgalab cancel {job_id})")
        return Outcome.INTERRUPTED
    try:
        here.client.cancel_pool_job(job_id)
    except JobNotCancellable:
        out.note(f"the job {job_id} has a board and its build has started: it goes on "
                 f"(give the board back after it: fpgalab release --board N)")  # fmt: skip
        return Outcome.INTERRUPTED
    out.note(f"cancelled the job {job_id}: it never ran")
    return Outcome.INTERRUPTED


@app.command()
def logs(
    ctx: typer.Context,
    job_id: JobId,
    board: BoardOrJob = None,
    follow: Follow = False,
    session: SessionId = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Print a job's log (what the build tools and the design printed: control characters
    are shown escaped, never obeyed). With --follow, go on until the job ends."""
    here = lab(ctx, url, key, as_json)
    board = _board_of(here, job_id, board, "logs")
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
    board: BoardOrJob = None,
    session: SessionId = None,
    url: Url = None,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Cancel a job no worker has taken yet (a cancelled build frees the board; a pool
    job still waiting for a board never runs)."""
    here = lab(ctx, url, key, as_json)
    if board is None:
        here.client.cancel_pool_job(job_id)
        here.out.line(f"cancelled the job {job_id}")
    else:
        here.client.cancel(board, job_id, session_id=session)
        here.out.line(f"cancelled the job {job_id} on FPGA {board}")
    if here.out.json:
        here.out.document({"fpga_id": board, "job_id": job_id, "cancelled": True})


def _board_of(here: Lab, job_id: str, board: int | None, what: str) -> int:
    """``board``, or the job's board as the lab says (a pool job: once placed)."""
    if board is not None:
        return board
    job = here.client.pool_job(job_id)
    if job.fpga_id is None:
        here.out.error(f"the job {job_id} has no board yet (it waits for one): no {what}")
        raise typer.Exit(Outcome.FAILED)
    return job.fpga_id


def _clock(at: datetime | None) -> str:
    """A time of the lab as the local clock shows it."""
    return "?" if at is None else at.astimezone().strftime("%H:%M:%S")


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f" (took {(end - start).total_seconds():.1f} s)"
