"""Waiting for a job on the command line: what the job is doing (a live status line on a
terminal, its phases on stderr in a pipe), its log as it comes with ``--follow``, and
Ctrl-C, which asks whether to cancel the job (``interrupted``)."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fpgalab.client._errors import (
    JobFailed,
    JobNotCancellable,
    JobTimeout,
    LabError,
    NoActiveSession,
    SessionMismatch,
)
from fpgalab.client._models import Job, JobStatus, JobType
from fpgalab.client._text import printable
from fpgalab.client.commands._app import Lab, Outcome

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.spinner import Spinner

#: Seconds between two looks at a job (its status is held by the lab up to this long, so
#: the end of a job is seen at once; its log's new lines are shown at each look).
TICK = 0.5
#: Seconds the last look waits for the log's stream to end once the job has ended (the
#: lab ends it right after the job's last line).
LOG_GRACE = 10.0
#: Lines of the log under the status line.
TAIL = 4
#: The line the worker writes when a build is done and the board is being programmed.
PROGRAMMING = "fpgalab: programming board"


def phase(job: Job | None, lines: list[str] | deque[str] | None = None) -> str:
    """What a job is doing, in a word: queued, building, programming, running,
    resetting, or how it ended."""
    if job is None or job.status is JobStatus.QUEUED:
        return "queued"
    if job.status is not JobStatus.RUNNING:
        return str(job.status)
    if job.type is JobType.BUILD_AND_PROGRAM:
        programming = any(line.startswith(PROGRAMMING) for line in lines or ())
        return "programming" if programming else "building"
    return "resetting" if job.type is JobType.RESET else "running"


def looks(
    lab: Lab, fpga_id: int, job_id: str, session_id: str | None, logs: bool
) -> Iterator[tuple[Job, list[str]]]:
    """The job, and its log's new lines, about every ``TICK`` seconds until it has
    finished (the last look once the log has ended too, so with every line).

    The log is followed in a thread of its own (``Client.logs(follow=True)``: the lab's
    stream of it, each line read once), while this one looks at the job: a look is a
    small request however long the log grows."""
    client = lab.client
    reader = _LogReader(lab, fpga_id, job_id, session_id) if logs else None
    try:
        while True:
            try:
                job = client.wait(fpga_id, job_id, TICK, check=False, session_id=session_id)
            except JobTimeout as exc:
                job = exc.job
            if job.finished and reader is not None:
                reader.join(LOG_GRACE)
            yield job, reader.new_lines() if reader is not None else []
            if job.finished:
                return
    finally:
        if reader is not None:
            reader.stop()


class _LogReader:
    """A job's log followed in a daemon thread, its lines handed over in a queue."""

    def __init__(self, lab: Lab, fpga_id: int, job_id: str, session_id: str | None) -> None:
        self._lines: queue.SimpleQueue[str | BaseException] = queue.SimpleQueue()
        self._client = lab.new_client()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._read, args=(fpga_id, job_id, session_id), name="fpgalab-log", daemon=True
        )
        self._thread.start()

    def _read(self, fpga_id: int, job_id: str, session_id: str | None) -> None:
        try:
            for line in self._client.logs(fpga_id, job_id, follow=True, session_id=session_id):
                if self._stopping:
                    return
                self._lines.put(line)
        except Exception as exc:
            if not self._stopping:
                self._lines.put(exc)
        finally:
            self._client.close()  # its own: closed by the thread that used it

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def new_lines(self) -> list[str]:
        """The lines read since the last call; the reader's error, once it has failed."""
        lines: list[str] = []
        while True:
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                return lines
            if isinstance(item, BaseException):
                raise item
            lines.append(item)

    def stop(self) -> None:
        """Stop following (the thread ends at its next line, or with the process)."""
        self._stopping = True


@dataclass
class _Status:
    """The live status line (and the log's last lines under it), drawn by rich at each
    refresh: the elapsed time moves on its own."""

    fpga_id: int
    job_id: str
    started: float = field(default_factory=time.monotonic)
    job: Job | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL))
    seen_programming: bool = False
    _spinner: Spinner | None = None

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.text import Text

        if self._spinner is None:
            self._spinner = Spinner("dots", style="cyan")
        now = phase(self.job, [PROGRAMMING] if self.seen_programming else [])
        line = Text.assemble(
            (now, "bold cyan"),
            f"  {time.monotonic() - self.started:5.1f} s",
            (f"  FPGA {self.fpga_id}  job {self.job_id}", "dim"),
        )
        self._spinner.update(text=line)
        tail = [
            Text("  " + printable(one), style="dim", no_wrap=True, overflow="ellipsis")
            for one in self.tail
        ]
        return Group(self._spinner, *tail)


def watch(
    lab: Lab,
    fpga_id: int,
    job_id: str,
    session_id: str | None = None,
    *,
    follow: bool = False,
    logs: bool = True,
    timeout: float | None = None,
) -> Job:
    """Wait for a job, showing it; the job as it ended. A failed or cancelled job raises
    ``JobFailed`` (with the log's tail unless the log was followed); past ``timeout``,
    ``JobTimeout``. Ctrl-C is the caller's (``interrupted``)."""
    out = lab.out
    logs = logs or follow
    deadline = None if timeout is None else time.monotonic() + timeout
    status = _Status(fpga_id, job_id)
    tail: deque[str] = deque(maxlen=20)
    live: Any = None
    if out.terminal:
        from rich.live import Live

        live = Live(status, console=out.console, refresh_per_second=8, transient=True)
        live.start()
    last = ""
    job: Job | None = None
    try:
        for job, new in looks(lab, fpga_id, job_id, session_id, logs):
            tail.extend(new)
            status.job = job
            status.seen_programming |= any(one.startswith(PROGRAMMING) for one in new)
            if follow:
                for one in new:
                    out.log(one)
            else:
                status.tail.extend(new)
            now = phase(job, [PROGRAMMING] if status.seen_programming else [])
            if live is None and now != last and not job.finished and not out.json:
                out.note(f"FPGA {fpga_id}: {now}")
            last = now
            if deadline is not None and time.monotonic() > deadline and not job.finished:
                raise JobTimeout(job, timeout or 0.0)
    finally:
        if live is not None:
            live.stop()
    assert job is not None
    if not job.ok:
        result = None
        if job.type is JobType.RUN and job.status is JobStatus.FAILED:
            try:
                result = lab.client.result(fpga_id, job_id, session_id=session_id)
            except LabError:
                result = None
        raise JobFailed(job, [] if follow else list(tail), result)
    return job


def interrupted(
    lab: Lab, fpga_id: int, job_id: str, session_id: str | None = None, what: str = "job"
) -> Outcome:
    """Ctrl-C while waiting for a job: on a terminal, ask whether to cancel it; else leave
    it. Says what was done; the exit code is ``INTERRUPTED`` either way.

    A build a worker has already taken cannot be cancelled: the answer yes then waits for
    it to end and gives the board back (a second Ctrl-C leaves it)."""
    out = lab.out
    again = f"fpgalab logs {job_id} --board {fpga_id} --follow"
    if not out.can_ask:
        out.error(f"interrupted; the {what} {job_id} goes on in the lab (follow it: {again})")
        _document(lab, fpga_id, job_id, cancelled=False)
        return Outcome.INTERRUPTED
    if not out.ask(f"Cancel the {what} {job_id} on FPGA {fpga_id}?"):
        out.note(f"left the {what} {job_id} to go on (follow it: {again})")
        _document(lab, fpga_id, job_id, cancelled=False)
        return Outcome.INTERRUPTED
    client = lab.client
    try:
        client.cancel(fpga_id, job_id, session_id=session_id)
    except JobNotCancellable:
        pass
    else:
        freed = " (the board is free again)" if what == "build" else ""
        out.note(f"cancelled the {what} {job_id}{freed}")
        _document(lab, fpga_id, job_id, cancelled=True)
        return Outcome.INTERRUPTED
    job = client.job(fpga_id, job_id)
    if job.type is not JobType.BUILD_AND_PROGRAM:
        state = f"had already ended ({job.status})" if job.finished else "goes on"
        out.note(f"the {what} {job_id} has started and can no longer be cancelled: it {state}")
    else:
        out.note(f"the build {job_id} has started and can no longer be cancelled: waiting for "
                 f"it to end to give FPGA {fpga_id} back (Ctrl-C: leave it)")  # fmt: skip
        try:
            client.wait(fpga_id, job_id, check=False, session_id=session_id)
            client.release(fpga_id, session_id=session_id)
            out.note(f"released FPGA {fpga_id}")
        except KeyboardInterrupt:
            out.note(f"left it; give the board back later: fpgalab release --board {fpga_id}")
        except (NoActiveSession, SessionMismatch):
            out.note(f"FPGA {fpga_id}'s session had already ended")
    _document(lab, fpga_id, job_id, cancelled=False)
    return Outcome.INTERRUPTED


def _document(lab: Lab, fpga_id: int, job_id: str, *, cancelled: bool) -> None:
    if lab.out.json:
        doc = {"fpga_id": fpga_id, "job_id": job_id, "interrupted": True, "cancelled": cancelled}
        lab.out.document(doc)
