"""The ``fpgalab`` command line, run as users run it: the installed console script in a
subprocess against a live lab (the FakeBackend's), through a pipe (plain text, exit
codes, ``--json``) and in a real terminal (tmux: the live status line, Ctrl-C)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.conftest import ALICE, BOB, DESIGN, LiveLab, StartLab, board_state, wait_idle
from tests.fakes import FakeBackend
from tests.helpers import as_a_shell_starts_it, free_port, signal_masks

FPGALAB = shutil.which("fpgalab", path=str(Path(sys.executable).parent)) or shutil.which("fpgalab")
#: What a design's log may hold that a terminal must never obey: a screen clear, a
#: title change (OSC 0), a clipboard write (OSC 52), a carriage return, a bidi override.
HOSTILE = (
    b"# ECHO:\x1b[2J\x1b]0;pwned\x07 title\n"
    b"# ECHO:\x1b]52;c;ZXZpbA==\x07 clipboard\n"
    b"# ECHO:over\rwritten \xe2\x80\xae desrever\n"
)
RAW = ("\x1b", "\x07", "\r", "\u202e")


def env_for(url: str, **extra: str) -> dict[str, str]:
    """The environment of a user whose lab is at ``url`` (no proxies, no stray settings)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    for name in ("FPGALAB_API_KEY", "FPGALAB_BOARD", "NO_COLOR"):
        env.pop(name, None)
    return {**env, "FPGALAB_URL": url, **extra}


def fpgalab(
    lab: LiveLab | str, *args: str, timeout: float = 30, cwd: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the console script through pipes (in ``cwd``, default the tests' own)."""
    assert FPGALAB, "the fpgalab console script is not installed in this environment"
    url = lab if isinstance(lab, str) else lab.url
    return subprocess.run(
        [FPGALAB, *args],
        env=env_for(url, **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def design(tmp_path: Path, text: bytes, name: str = "design.py") -> str:
    path = tmp_path / name
    path.write_bytes(text)
    return str(path)


def job(lab: LiveLab, fpga_id: int, job_id: str) -> dict[str, Any]:
    """A job as the API shows it, read past the command line."""
    with httpx.Client(base_url=lab.url, trust_env=False, headers=lab._admin()) as c:
        answer = c.get(f"/fpga/{fpga_id}/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


def submitted(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """The job and session ids ``submit`` printed on its first line."""
    words = result.stdout.split()
    return words[words.index("job") + 1], words[words.index("session") + 1]


def no_raw_controls(*texts: str) -> None:
    for text in texts:
        for ch in RAW:
            assert ch not in text, f"raw {ch!r} in {text!r}"


# Through a pipe ---------------------------------------------------------------------------


def test_boards_in_plain_text_and_json(fake_lab: LiveLab) -> None:
    """``boards`` prints a plain table through a pipe (no escape sequences) and one JSON
    document with ``--json``."""
    plain = fpgalab(fake_lab, "boards")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0].split() == ["BOARD", "PLATFORM", "TAGS", "STATE", "HEALTH", "SESSION", "JOB"]
    rows = [line.split()[:5] for line in lines[1:]]
    assert rows == [[str(i), "sim", "-", "idle", "good"] for i in range(10)]
    assert "\x1b" not in plain.stdout
    doc = json.loads(fpgalab(fake_lab, "boards", "--json").stdout)
    assert [b["fpga_id"] for b in doc] == list(range(10))
    assert doc[0]["state"] == "idle" and doc[0]["session"] is None
    assert doc[0]["platform"] == "sim" and doc[0]["tags"] == []


def test_a_session_from_submit_to_release(fake_lab: LiveLab, tmp_path: Path) -> None:
    """submit --wait exits 0 with the job and session ids; then session, write, read (by
    name and by number), run, logs and release --wait, which leaves the board idle."""
    path = design(tmp_path, DESIGN)
    done = fpgalab(fake_lab, "submit", path, "--board", "3", "--wait")
    assert done.returncode == 0, done.stderr
    job_id, session_id = submitted(done)
    assert "complete" in done.stdout and "reserved for you" in done.stdout
    assert job(fake_lab, 3, job_id)["status"] == "complete"

    shown = fpgalab(fake_lab, "session", "-b", "3")
    assert shown.returncode == 0 and session_id in shown.stdout and "expires" in shown.stdout
    as_json = json.loads(fpgalab(fake_lab, "session", "-b", "3", "--json").stdout)
    assert as_json["session_id"] == session_id and as_json["fpga_id"] == 3

    wrote = fpgalab(fake_lab, "write", "-b", "3", "user+4", "5", "0x7")
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout.strip() == "wrote 2 words at 0x20000004"
    read = fpgalab(fake_lab, "read", "--board", "3", "0x20000000", "3")
    assert read.stdout.splitlines() == ["0x20000000: 0x00000000 0x00000005 0x00000007"]
    doc = json.loads(fpgalab(fake_lab, "--json", "read", "-b", "3", "user+8").stdout)
    assert doc["data"] == [7] and doc["address"] == 0x2000_0008

    ran = fpgalab(fake_lab, "run", "-b", "3", "write", "user", "9,", "read", "user", "2")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "write 1 word at 0x20000000",
        "read 2 at 0x20000000",
        "  0x20000000: 0x00000009 0x00000005",
    ]
    ops = tmp_path / "ops.json"
    ops.write_text(json.dumps([{"op": "read", "address": "user", "length": 1}]))
    doc = json.loads(fpgalab(fake_lab, "run", "-b", "3", "--ops", str(ops), "--json").stdout)
    assert doc["result"]["data"] == [9]

    logs = fpgalab(fake_lab, "logs", job_id, "-b", "3")
    assert logs.returncode == 0 and "fpgalab: building design.py" in logs.stdout
    lines = json.loads(fpgalab(fake_lab, "logs", job_id, "-b", "3", "--json").stdout)["lines"]
    assert lines == logs.stdout.splitlines()

    released = fpgalab(fake_lab, "release", "-b", "3", "--wait")
    assert released.returncode == 0, released.stderr
    assert "FPGA 3 is idle again" in released.stdout
    row = board_state(fake_lab, 3)
    assert row["state"] == "idle" and row["session"] is None


def test_a_failed_build_exits_1_with_its_log_tail(fake_lab: LiveLab, tmp_path: Path) -> None:
    """A build that fails exits 1 and shows the error and the log's last lines, and how
    to give the board back; with --json, one document saying so."""
    path = design(tmp_path, b"# FAIL_BUILD\n")
    failed = fpgalab(fake_lab, "submit", path, "-b", "2", "--wait")
    assert failed.returncode == 1
    assert "failed: design.py:3: SyntaxError" in failed.stderr
    assert "the log's last lines:\n  fpgalab: building design.py" in failed.stderr
    assert "fpgalab release --board 2" in failed.stderr
    wait_idle_after = fpgalab(fake_lab, "release", "-b", "2", "-w")
    assert wait_idle_after.returncode == 0, wait_idle_after.stderr
    as_json = fpgalab(fake_lab, "submit", path, "-b", "2", "--wait", "--json")
    assert as_json.returncode == 1
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "job_failed" and error["job"]["status"] == "failed"
    assert any("SyntaxError" in line for line in error["log_tail"])


def test_a_bus_error_exits_1_naming_it(fake_lab: LiveLab, tmp_path: Path) -> None:
    """A run that hits a bus error exits 1 and says which op failed."""
    assert fpgalab(fake_lab, "submit", design(tmp_path, DESIGN), "-b", "1", "-w").returncode == 0
    ran = fpgalab(fake_lab, "run", "-b", "1", "read", "user", ",", "read", "0xf0000000")
    assert ran.returncode == 1
    assert "op 2 of 2: bus error at 0xf0000000" in ran.stderr


def test_refusals_exit_3(keyed_lab: LiveLab, tmp_path: Path) -> None:
    """The lab's refusals exit 3 with its code and message: a wrong key (401), a board
    someone else holds (409), a read with no session of yours (403)."""
    path = design(tmp_path, DESIGN)
    wrong = fpgalab(keyed_lab, "boards", FPGALAB_API_KEY="not-a-key")
    assert wrong.returncode == 3 and "401 invalid_api_key" in wrong.stderr
    mine = fpgalab(keyed_lab, "submit", path, "-b", "4", "-w", FPGALAB_API_KEY=ALICE)
    assert mine.returncode == 0, mine.stderr
    taken = fpgalab(keyed_lab, "submit", path, "-b", "4", "--key", BOB)
    assert taken.returncode == 3 and "409 fpga_not_idle" in taken.stderr
    theirs = fpgalab(keyed_lab, "read", "-b", "4", "0x20000000", FPGALAB_API_KEY=BOB)
    assert theirs.returncode == 3 and "not_session_owner" in theirs.stderr
    doc = json.loads(fpgalab(keyed_lab, "boards", "--json", FPGALAB_API_KEY="x").stdout)
    assert doc["error"]["status"] == 401 and doc["error"]["code"] == "invalid_api_key"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """A wrong command line exits 2 before any call to the lab (none is there)."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    for args in (
        ["read", "0x1000"],  # no board
        ["read", "-b", "1", "0xzz"],
        ["write", "-b", "1", "0x1000", "five"],
        ["run", "-b", "1", "read"],
        ["run", "-b", "1"],
        ["submit", str(tmp_path / "missing.py"), "-b", "1"],
        ["no-such-command"],
    ):
        result = fpgalab(nowhere, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "-h" in result.stderr or "Usage" in result.stderr, result.stderr


def test_an_unreachable_lab_exits_4() -> None:
    """No lab at the URL: exit 4, saying where it looked; --json says so in a document."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = fpgalab(nowhere, "boards")
    assert result.returncode == 4
    assert nowhere in result.stderr and "FPGALAB_URL" in result.stderr
    doc = json.loads(fpgalab(nowhere, "boards", "--json").stdout)
    assert doc["error"]["code"] == "unreachable"


def test_hostile_log_text_is_shown_escaped(fake_lab: LiveLab, tmp_path: Path) -> None:
    """Escape sequences, OSC 52, carriage returns and bidi overrides a design puts in its
    log come out escaped — in the failure's tail, a followed log, ``logs`` and JSON."""
    path = design(tmp_path, b"# FAIL_BUILD\n" + HOSTILE)
    failed = fpgalab(fake_lab, "submit", path, "-b", "5", "--wait")
    assert failed.returncode == 1
    no_raw_controls(failed.stdout, failed.stderr)
    assert "\\x1b]52;c;ZXZpbA==\\x07 clipboard" in failed.stderr
    assert "\\x1b[2J\\x1b]0;pwned\\x07 title" in failed.stderr
    assert "\\u202e desrever" in failed.stderr
    job_id, _ = submitted(failed)
    logs = fpgalab(fake_lab, "logs", job_id, "-b", "5")
    no_raw_controls(logs.stdout, logs.stderr)
    assert "\\x1b]52;c;ZXZpbA==\\x07 clipboard" in logs.stdout
    as_json = fpgalab(fake_lab, "logs", job_id, "-b", "5", "--json")
    no_raw_controls(as_json.stdout)
    assert "\x1b]52;c;ZXZpbA==\x07 clipboard" in json.loads(as_json.stdout)["lines"]
    assert fpgalab(fake_lab, "release", "-b", "5", "-w").returncode == 0
    followed = fpgalab(fake_lab, "submit", path, "-b", "5", "--follow")
    assert followed.returncode == 1
    no_raw_controls(followed.stdout, followed.stderr)
    assert "\\x1b]52;c;ZXZpbA==\\x07 clipboard" in followed.stdout


# Held jobs -------------------------------------------------------------------------------


@pytest.fixture
def held_lab(start_lab: StartLab, backend: FakeBackend) -> Iterator[LiveLab]:
    """A lab whose board 7's worker is stuck in a health check: a build submitted to it
    stays queued until the test lets the check go on."""
    lab = start_lab(health_interval=0.1)
    backend.hold_boards.add(7)
    backend.hold.add("health")
    assert backend.held.wait(10), "board 7's health check was not held"
    yield lab
    backend.resume.set()


def test_ctrl_c_through_a_pipe_leaves_the_job(held_lab: LiveLab, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) without a terminal asks nothing: exit 130, the job goes on."""
    assert FPGALAB
    proc = subprocess.Popen(
        [FPGALAB, "submit", design(tmp_path, DESIGN), "-b", "7", "--wait"],
        env=env_for(held_lab.url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_a_shell_starts_it,
    )
    with proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert proc.stderr.readline().strip() == "FPGA 7: queued"
        masks = signal_masks(proc.pid)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"Ctrl-C did not stop the command ({masks})") from None
    assert proc.returncode == 130
    job_id = first.split()[1]
    assert f"interrupted; the build {job_id} goes on" in err
    assert job(held_lab, 7, job_id)["status"] == "queued"
    with httpx.Client(base_url=held_lab.url, trust_env=False) as c:
        assert c.delete(f"/fpga/7/jobs/{job_id}").status_code == 204


# In a terminal -----------------------------------------------------------------------------


class Terminal:
    """A tmux server of its own (private socket), one window of 120x40 running a
    command; ``screen()`` is what the window shows."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"fpgalab-test-{uuid.uuid4().hex[:12]}"
        self.env = {**env, "TERM": "xterm-256color"}
        self.socket_path = ""

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            env=self.env, capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip

    def start(self, *command: str) -> None:
        shell = f"{shlex.join(command)}; echo EXIT=$?; sleep 120"
        self.tmux("new-session", "-d", "-x", "120", "-y", "40", shell)
        self.socket_path = self.tmux("display-message", "-p", "#{socket_path}").strip()

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J")

    def wait_for(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            assert time.monotonic() < deadline, f"{text!r} never showed:\n{screen}"
            time.sleep(0.1)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       check=False, timeout=10)  # fmt: skip
        if self.socket_path:  # tmux leaves its socket file behind
            Path(self.socket_path).unlink(missing_ok=True)


@pytest.fixture
def terminal() -> Iterator[Any]:
    """Make ``Terminal``s (each closed at teardown); tmux is needed (CI installs it)."""
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is not installed, and CI must run the terminal tests")
        pytest.skip("tmux is not installed (apt-get install tmux; make test installs it)")
    made: list[Terminal] = []

    def make(url: str) -> Terminal:
        made.append(Terminal(env_for(url)))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_a_live_status_line_in_a_terminal(
    fake_lab: LiveLab, backend: FakeBackend, terminal: Any, tmp_path: Path
) -> None:
    """In a terminal, submit --wait shows a live line (phase, elapsed, job) over the log's
    last lines, escaped (the window's title stays), then the outcome; exit code 0."""
    path = design(tmp_path, b"# GATE\n" + HOSTILE)
    term = terminal(fake_lab.url)
    term.start(FPGALAB or "fpgalab", "submit", path, "--board", "6", "--wait")
    title = term.tmux("display-message", "-p", "#{pane_title}")
    screen = term.wait_for("building")
    assert "FPGA 6  job " in screen and " s  " in screen
    screen = term.wait_for("desrever")
    assert "\\x1b]0;pwned\\x07 title" in screen and "\\x1b]52;c;ZXZpbA==\\x07" in screen
    assert "\\u202e desrever" in screen
    backend.release_gate()
    screen = term.wait_for("EXIT=")
    assert "EXIT=0" in screen and "complete: FPGA 6 is reserved for you" in screen
    assert "building" not in screen  # the live line is gone once the job ended
    assert term.tmux("display-message", "-p", "#{pane_title}") == title


def test_ctrl_c_in_a_terminal_asks_and_cancels(
    held_lab: LiveLab, terminal: Any, tmp_path: Path
) -> None:
    """Ctrl-C while a build is queued asks whether to cancel it; yes cancels it (the
    board is idle again), and says so; exit code 130."""
    term = terminal(held_lab.url)
    term.start(FPGALAB or "fpgalab", "submit", design(tmp_path, DESIGN), "-b", "7", "--wait")
    screen = term.wait_for("queued  ")
    job_id = screen.split()[1]
    term.keys("C-c")
    term.wait_for(f"Cancel the build {job_id} on FPGA 7? [y/N]")
    term.keys("y", "Enter")
    screen = term.wait_for("EXIT=")
    assert f"cancelled the build {job_id} (the board is free again)" in screen
    assert "EXIT=130" in screen
    assert job(held_lab, 7, job_id)["status"] == "cancelled"
    wait_idle(held_lab, 7)
