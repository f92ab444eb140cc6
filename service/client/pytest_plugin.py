"""The pytest plugin (the ``pytest11`` entry point ``fpgalab``): a board of a lab for a
test, its design built and programmed.

    @pytest.mark.fpgalab(design="alu.py")
    def test_add(fpga_board):
        fpga_board.write("user", [2, 3])

The lab is a running one (``--fpgalab-url``, or ``FPGALAB_URL``) or a private one started
for the session (``--fpgalab-local``). Consecutive tests that ask for the same design
share one reservation; a board is released when the next test wants another design, at
the end, and after a test that did not pass. It does nothing, and costs nothing, until a
test asks for a board. See docs/pytest.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from fpgalab.client._client import BoardSession, Client
from fpgalab.client._errors import FpgalabError, JobFailed
from fpgalab.client._local_lab import BACKENDS, LabStartError, LocalLab
from fpgalab.client._protocol import KEY_ENV, URL_ENV
from fpgalab.client._text import printable

MARKER = "fpgalab"
#: The build cache of private labs, kept across runs (default ``~/.cache/fpgalab``).
CACHE_ENV = "FPGALAB_CACHE_DIR"
#: Lines of the build log a failing test's report shows, and run job ids it lists.
LOG_LINES = 20
SHOWN_RUNS = 10
NO_LAB = (
    "this test needs an FPGA lab: run pytest with --fpgalab-url URL (or set FPGALAB_URL) "
    "for a running lab, or with --fpgalab-local for a private simulated one"
)


@dataclass(frozen=True)
class _Want:
    """What a test's ``fpga_board`` asks for: a design, on a board or from a pool."""

    design: Path
    board: int | None = None
    platform: str | None = None
    tags: tuple[str, ...] = ()


@dataclass
class _Held:
    """A reservation kept for the tests that want its design."""

    want: _Want
    session: BoardSession

    def serves(self, wanted: _Want | None) -> bool:
        if wanted is None or self.session.released:
            return False
        return (
            wanted.design == self.want.design
            and wanted.board in (None, self.session.fpga_id)
            and (wanted.platform, wanted.tags) == (self.want.platform, self.want.tags)
        )


@dataclass
class _Use:
    """What one test's ``fpga_board`` was: the reservation, and its runs before the test."""

    held: _Held
    runs_before: int


_USE = pytest.StashKey[_Use]()
_FAILURE = pytest.StashKey[FpgalabError]()
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


class _Lab:
    """The plugin's state in one pytest process: which lab, its client, the board held."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        url: str | None = config.getoption("fpgalab_url")
        local: bool = config.getoption("fpgalab_local")
        if url and local:
            raise pytest.UsageError(
                "--fpgalab-url and --fpgalab-local: give one (a running lab's URL, or a "
                "private lab started for this session)"
            )
        self.key: str | None = config.getoption("fpgalab_key")
        self.local: LocalLab | None = None
        worker: dict[str, Any] | None = getattr(config, "workerinput", None)
        if worker is not None and "fpgalab_url" in worker:  # the controller's private lab
            url, self.key = worker["fpgalab_url"], ""
        elif local:
            self.key = ""  # a private lab is open: no key, whatever the environment says
            self.local = LocalLab(
                self._log_path(),
                backend=config.getoption("fpgalab_local_backend"),
                boards=config.getoption("fpgalab_local_boards") or _default_boards(config),
                cache=_cache_dir(config.getoption("fpgalab_cache")),
            )
        self.url: str | None = url or os.environ.get(URL_ENV) or None
        self.client: Client | None = None
        self.held: _Held | None = None
        self.next_item: pytest.Item | None = None
        self._sigterm: Any = None

    @property
    def wanted(self) -> bool:
        return self.url is not None or self.local is not None

    def _log_path(self) -> Path:
        cache = getattr(self.config, "cache", None)
        folder = cache.mkdir("fpgalab") if cache is not None else Path(tempfile.mkdtemp())
        return Path(folder) / "lab.log"

    def start(self) -> None:
        """Start the private lab, if asked for one (at the session's start)."""
        if self.local is None or self.config.getoption("collectonly"):
            return
        say = self.config.pluginmanager.get_plugin("terminalreporter")
        if say is not None:
            say.write_line(f"fpgalab: starting {self.local.describe()} ...")
        try:
            self.url = self.local.start()
        except LabStartError as exc:
            raise pytest.UsageError(f"fpgalab: {exc}") from None

    def open(self) -> Client:
        if self.url is None:
            pytest.fail(NO_LAB, pytrace=False)
        if self.local is not None and not self.local.running:
            tail = "".join(self.local.tail(15))
            pytest.fail(f"the private lab has stopped; its log ends:\n{tail}", pytrace=False)
        if self.client is None:
            self.client = Client(self.url, api_key=self.key)
        return self.client

    def board(self, want: _Want) -> _Held:
        """The board for this design: the one held if it has it, else a new reservation
        (of the board named, or from the pool: the first free board that fits)."""
        client = self.open()
        if self.held is not None and self.held.serves(want):
            with contextlib.suppress(FpgalabError):  # still ours? (it may have expired)
                if client.session(self.held.session.fpga_id).session_id == (
                    self.held.session.session_id
                ):
                    return self.held
        self.release()
        session = client.reserve(want.board, want.design, platform=want.platform, tags=want.tags)
        self.held = _Held(want, session)
        return self.held

    def release(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            held.session.release()

    def close(self) -> None:
        """At the very end: what a teardown did not release, the client, the lab."""
        try:
            with contextlib.suppress(FpgalabError):
                self.release()
        finally:
            if self.client is not None:
                self.client.close()
            if self.local is not None:
                self.local.stop()

    # SIGTERM (a cancelled CI job) as Ctrl-C: the boards are released on the way out.

    def trap_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._sigterm = signal.signal(signal.SIGTERM, _interrupt)

    def untrap_sigterm(self) -> None:
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _default_boards(config: pytest.Config) -> int:
    """As many boards as xdist workers (each reserves its own), at least 2."""
    workers = config.getoption("numprocesses", default=None)
    return min(max(workers, 2), 10) if isinstance(workers, int) else 2


def _cache_dir(option: str | None) -> Path | None:
    text = option if option is not None else os.environ.get(CACHE_ENV)
    if text is not None:
        return Path(text).expanduser() if text.strip() else None  # "": no cache
    home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(home) / "fpgalab"


def _lab(config: pytest.Config) -> _Lab:
    return config.stash[_LAB]


_LAB = pytest.StashKey[_Lab]()


# Options, configuration, the session ----------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fpgalab", "fpgalab: boards of an FPGA lab for tests")
    group.addoption("--fpgalab-url", metavar="URL", default=None,
                    help=f"a running lab (default: ${URL_ENV})")  # fmt: skip
    group.addoption("--fpgalab-key", metavar="KEY", default=None,
                    help=f"its API key (default: ${KEY_ENV}, which keeps it off the "
                    "command line)")  # fmt: skip
    group.addoption("--fpgalab-local", action="store_true",
                    help="start a private lab for the session (needs fpgalab[lab])")  # fmt: skip
    group.addoption("--fpgalab-local-backend", choices=BACKENDS, default="sim",
                    help="the private lab's boards: sim (default) or twins")  # fmt: skip
    group.addoption("--fpgalab-local-boards", type=int, metavar="N", default=None,
                    help="the private lab's boards (default: 2, or one per xdist "
                    "worker)")  # fmt: skip
    group.addoption("--fpgalab-cache", metavar="DIR", default=None,
                    help=f"the private lab's build cache, kept across runs (default: "
                    f"${CACHE_ENV}, else ~/.cache/fpgalab; '' for none)")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(design, board=None, platform=None, tags=()): the design (a path relative "
        "to the test file) the fpga_board fixture builds and programs; board: a board id "
        "(default: the lab's first free board of platform with all of tags, any if neither)",
    )
    lab = config.stash[_LAB] = _Lab(config)
    if lab.wanted:
        lab.trap_sigterm()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # before xdist starts its workers: they are handed the private lab's URL
    _lab(session.config).start()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: a worker uses the controller's private lab (its boards its own)."""
    lab = _lab(node.config)
    if lab.local is not None and lab.url is not None:
        node.workerinput["fpgalab_url"] = lab.url


def pytest_report_header(config: pytest.Config) -> str | None:
    lab = _lab(config)
    if lab.local is not None and lab.url is not None:
        return f"fpgalab: {lab.local.describe()} (log: {lab.local.log_path})"
    return f"fpgalab: the lab at {lab.url}" if lab.url else None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    local = _lab(terminalreporter.config).local
    if local is not None and local.url and (exitstatus != 0 or not local.running):
        terminalreporter.write_line(f"fpgalab: the private lab's log: {local.log_path}")


def pytest_unconfigure(config: pytest.Config) -> None:
    lab = config.stash.get(_LAB, None)
    if lab is not None:
        lab.untrap_sigterm()
        lab.close()


# A board for a test ----------------------------------------------------------------------


def _wanted(item: pytest.Item) -> _Want | None:
    """What an item's ``fpga_board`` asks for; None if it asks for none."""
    marker = item.get_closest_marker(MARKER)
    if marker is None or "fpga_board" not in getattr(item, "fixturenames", ()):
        return None
    design = marker.kwargs.get("design", marker.args[0] if marker.args else None)
    if design is None:
        return None
    tags = marker.kwargs.get("tags", ())
    if isinstance(tags, str):
        tags = tags.split(",")
    return _Want(
        (item.path.parent / design).resolve(),
        marker.kwargs.get("board"),
        marker.kwargs.get("platform"),
        tuple(sorted({str(t).strip() for t in tags if str(t).strip()})),
    )


@pytest.fixture(scope="session")
def fpgalab_url(pytestconfig: pytest.Config) -> str:
    """The lab's URL (a running lab's, or the private one's)."""
    lab = _lab(pytestconfig)
    lab.open()
    assert lab.url is not None
    return lab.url


@pytest.fixture(scope="session")
def fpgalab_client(pytestconfig: pytest.Config) -> Iterator[Client]:
    """A ``Client`` of the lab, for the session; at its end the board held is released."""
    lab = _lab(pytestconfig)
    yield lab.open()
    lab.release()


@pytest.fixture
def fpga_board(request: pytest.FixtureRequest, fpgalab_client: Client) -> Iterator[BoardSession]:
    """A board with the design of the test's ``@pytest.mark.fpgalab(design=...)`` on it."""
    item = request.node
    wanted = _wanted(item)
    if wanted is None:
        pytest.fail("fpga_board needs a design: @pytest.mark.fpgalab(design='alu.py') "
                    "(a path relative to the test file)", pytrace=False)  # fmt: skip
    if not wanted.design.is_file():
        pytest.fail(f"@pytest.mark.fpgalab: no design file {wanted.design}", pytrace=False)
    if wanted.board is not None and (wanted.platform or wanted.tags):
        pytest.fail("@pytest.mark.fpgalab: a board, or a platform and tags (a pool), not both",
                    pytrace=False)  # fmt: skip
    lab = _lab(request.config)
    held = _reserve(lab, item, wanted)
    session = held.session
    item.stash[_USE] = _Use(held, len(session.runs))
    item.user_properties += [("fpgalab_fpga", session.fpga_id),
                             ("fpgalab_session", session.session_id)]  # fmt: skip
    if session.build is not None:
        item.user_properties.append(("fpgalab_build_job", session.build.job_id))
    yield session
    reports = item.stash.get(_REPORTS, {})
    call = reports.get("call")
    passed = call is not None and (call.passed or (call.skipped and not hasattr(call, "wasxfail")))
    # a board a test left in doubt (failed, errored, interrupted) is not handed on
    if not passed or not held.serves(_wanted(lab.next_item) if lab.next_item else None):
        lab.release()


def _reserve(lab: _Lab, item: pytest.Item, want: _Want) -> _Held:
    """The board for ``item``; a reservation that fails fails the test's setup, saying
    why in one line (a failed build: its job and log in the report)."""
    design = want.design
    try:
        return lab.board(want)
    except FpgalabError as exc:
        failure = exc
    item.stash[_FAILURE] = failure
    if isinstance(failure, JobFailed):
        item.user_properties.append(("fpgalab_build_job", failure.job.job_id))
        pytest.fail(f"fpgalab: the build of {design.name} failed: {failure}", pytrace=False)
    pytest.fail(f"fpgalab: no board with {design.name}: {failure}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    _lab(item.config).next_item = nextitem
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    use = item.stash.get(_USE, None)
    if use is not None and call.when == "call":
        runs = use.held.session.runs[use.runs_before :]
        item.user_properties.append(("fpgalab_runs", " ".join(runs)))
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    if report.failed and report.when != "teardown":
        failure = item.stash.get(_FAILURE, None)
        if use is not None:
            report.sections.append(("fpgalab", _describe_use(_lab(item.config), use)))
        elif isinstance(failure, JobFailed):
            report.sections.append(("fpgalab", _describe_failed_build(failure)))
    return report


def _describe_use(lab: _Lab, use: _Use) -> str:
    session = use.held.session
    runs = session.runs[use.runs_before :]
    lines = [f"lab:     {lab.url}", f"FPGA:    {session.fpga_id}, session {session.session_id}"]
    if session.build is not None:
        build = session.build
        lines.append(f"build:   job {build.job_id} ({use.held.want.design.name}, {build.status})")
    shown = " ".join(runs[-SHOWN_RUNS:]) or "none"
    more = f" (the last {SHOWN_RUNS} of {len(runs)})" if len(runs) > SHOWN_RUNS else ""
    lines.append(f"runs:    {shown}{more}")
    try:
        tail = list(deque(session.logs(), LOG_LINES))
    except FpgalabError as exc:
        lines.append(f"build log: could not be read ({exc})")
    else:
        lines += [f"build log, its last {len(tail)} lines:", *_indent(tail)]
    return "\n".join(lines)


def _describe_failed_build(exc: JobFailed) -> str:
    job = exc.job
    lines = [f"FPGA:    {job.fpga_id}", f"build:   job {job.job_id} ({job.filename}, {job.status})"]
    if job.error:
        lines.append(f"error:   {job.error}")
    tail = exc.log_tail[-LOG_LINES:]
    lines += [f"build log, its last {len(tail)} lines:", *_indent(tail)]
    return "\n".join(lines)


def _indent(lines: list[str]) -> list[str]:
    """Log lines as a report may show them: a design wrote them (control characters are
    shown, not obeyed)."""
    return [f"  {printable(line.rstrip())}" for line in lines]
