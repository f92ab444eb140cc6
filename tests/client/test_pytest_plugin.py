"""The pytest plugin, run as its users run it: pytest in a child process on a folder of
tests, against real labs — the FakeBackend lab where no design needs to run, and the
simulated lab (``fpgalab serve``, one per module, its builds in the session's cache) for
real boards — and the example regression suite (docs/examples/regression) through its
own nox session, on a private lab as CI runs it and against a lab's URL."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from fpgalab.client._local_lab import LocalLab
from tests.client.conftest import ALICE, KEYS, LiveLab, StartLab
from tests.helpers import REPO, as_a_shell_starts_it, signal_masks

REGRESSION = REPO / "docs" / "examples" / "regression"
ACCUMULATOR = (REPO / "docs" / "examples" / "accumulator.py").read_text()
ALU = (REGRESSION / "alu.py").read_text()
USER = 0x2000_0000
#: Designs the FakeBackend builds (any text).
FAKE_A, FAKE_B = "# design a\nDesign = None\n", "# design b\nDesign = None\n"


def project(folder: Path, **files: str) -> Path:
    """A user's folder of tests: ``name=text`` files (``test_x_py`` is ``test_x.py``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n")  # its own root: not the repo's config
    for name, text in files.items():
        (folder / name.replace("_py", ".py")).write_text(text)
    return folder


def environment(**extra: str) -> dict[str, str]:
    """Ours, without a lab named by the environment or the outer pytest's variables."""
    drop = ("FPGALAB_URL", "FPGALAB_API_KEY")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


#: pytest with the plugin and xdist only: this environment's other plugins (hypothesis,
#: schemathesis, ...) take seconds to load. The example's run loads it as users do, by its
#: entry point.
PYTEST = [
    sys.executable,
    "-m",
    "pytest",
    "-p",
    "fpgalab.client.pytest_plugin",
    "-p",
    "xdist.plugin",
]
ONLY_NAMED_PLUGINS = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def run_pytest(folder: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYTEST, "-p", "no:cacheprovider", "--junitxml=report.xml", *args], cwd=folder,
        env=environment(**ONLY_NAMED_PLUGINS), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def junit(path: Path) -> dict[str, dict[str, str]]:
    """Each test case of a JUnit XML report: its properties, and its outcome."""
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "ok")
        cases[case.get("name", "")] = props | {"outcome": outcome}
    return cases


def submits(url: str) -> set[str]:
    """The ids of the lab's audit records of submits (builds: to a board, or to a pool)."""
    with httpx.Client(base_url=url, trust_env=False) as http:
        entries = http.get("/audit", params={"limit": 1000}).json()
    return {e["id"] for e in entries if e["action"] in ("submit", "pool_submit")}


def all_free(url: str, boards: Iterable[int], timeout: float = 20) -> None:
    """Wait until every board of ``boards`` is idle with no session."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, trust_env=False) as http:
        while True:
            rows = [r for r in http.get("/fpga").json() if r["fpga_id"] in boards]
            if all(r["state"] == "idle" and r["session"] is None for r in rows):
                return
            assert time.monotonic() < deadline, f"boards still held: {rows}"
            time.sleep(0.1)


# Without a board: the plugin is inert, and its errors say what to do ----------------------


def test_without_a_lab_only_tests_that_need_a_board_error(tmp_path: Path) -> None:
    """With no lab option, a test without a board passes; one with ``fpga_board`` errors
    naming both options."""
    test = "import pytest\ndef test_plain(): pass\n" \
           "@pytest.mark.fpgalab(design='d.py')\ndef test_board(fpga_board): pass\n"  # fmt: skip
    done = run_pytest(project(tmp_path, test_x_py=test, d_py=FAKE_A))
    assert done.returncode == 1, done.stdout
    assert "1 passed, 1 error" in done.stdout
    assert "--fpgalab-url URL (or set FPGALAB_URL)" in done.stdout
    assert "--fpgalab-local" in done.stdout


def test_both_lab_options_are_a_usage_error(tmp_path: Path) -> None:
    """``--fpgalab-url`` with ``--fpgalab-local`` stops pytest before anything starts."""
    done = run_pytest(project(tmp_path), "--fpgalab-url", "http://x", "--fpgalab-local")
    assert done.returncode == 4
    assert "--fpgalab-url and --fpgalab-local: give one" in done.stderr


# On the FakeBackend lab: the plugin's logic, fast ---------------------------------------


def test_consecutive_tests_of_a_design_share_one_reservation(
    tmp_path: Path, fake_lab: LiveLab
) -> None:
    """a, a, b, a: the first two share a build and a session; b and the last a each get
    their own; every board is free at the end."""
    test = """import pytest
a = pytest.mark.fpgalab(design="a.py")
b = pytest.mark.fpgalab(design="designs/b.py")
@a
def test_1(fpga_board): fpga_board.write(0x20000000, [5])
@a
def test_2(fpga_board): assert fpga_board.read(0x20000000) == [5]  # the same board
@b
def test_3(fpga_board): pass
@a
def test_4(fpga_board): pass
"""
    folder = project(tmp_path, test_x_py=test, a_py=FAKE_A)
    project(folder / "designs", b_py=FAKE_B)
    done = run_pytest(folder, "--fpgalab-url", fake_lab.url)
    assert done.returncode == 0, done.stdout
    cases = junit(folder / "report.xml")
    sessions = [cases[f"test_{n}"]["fpgalab_session"] for n in (1, 2, 3, 4)]
    assert sessions[0] == sessions[1] and len(set(sessions)) == 3
    assert cases["test_1"]["fpgalab_build_job"] == cases["test_2"]["fpgalab_build_job"]
    assert len(submits(fake_lab.url)) == 3
    all_free(fake_lab.url, range(10))


def test_the_marker_names_a_board_and_a_design_is_required(
    tmp_path: Path, fake_lab: LiveLab
) -> None:
    """``board=7`` reserves board 7; no marker, or a missing file, errors saying so."""
    test = """import pytest
@pytest.mark.fpgalab(design="a.py", board=7)
def test_seven(fpga_board): assert fpga_board.fpga_id == 7
def test_unmarked(fpga_board): pass
@pytest.mark.fpgalab(design="missing.py")
def test_missing(fpga_board): pass
"""
    done = run_pytest(project(tmp_path, test_x_py=test, a_py=FAKE_A), "--fpgalab-url", fake_lab.url)
    assert "1 passed, 2 errors" in done.stdout
    assert "fpga_board needs a design: @pytest.mark.fpgalab(design='alu.py')" in done.stdout
    assert f"@pytest.mark.fpgalab: no design file {tmp_path / 'missing.py'}" in done.stdout
    all_free(fake_lab.url, range(10))


def test_the_marker_asks_a_pool_for_a_platform_and_tags(
    tmp_path: Path, start_lab: StartLab
) -> None:
    """``platform=``/``tags=`` reserve the lab's first free board that fits (consecutive
    tests of the same design and pool share it; another pool gets its own); a board and
    tags together, or a pool no board can meet, error saying so."""
    inventory = {0: ("sim", ("dsp",)), 1: ("sim", ("slow",)), 2: ("ulx3s", ())}
    lab = start_lab(boards=list(inventory), inventory=inventory)
    test = """import pytest
dsp = pytest.mark.fpgalab(design="a.py", tags=["dsp"])
@dsp
def test_1(fpga_board): assert fpga_board.fpga_id == 0
@dsp
def test_2(fpga_board): assert fpga_board.fpga_id == 0
@pytest.mark.fpgalab(design="a.py", platform="ulx3s")
def test_3(fpga_board): assert fpga_board.fpga_id == 2
@pytest.mark.fpgalab(design="a.py", tags="slow")
def test_4(fpga_board): assert fpga_board.fpga_id == 1
@pytest.mark.fpgalab(design="a.py", board=1, tags=["slow"])
def test_both(fpga_board): pass
@pytest.mark.fpgalab(design="a.py", tags=["gpu"])
def test_never(fpga_board): pass
"""
    done = run_pytest(project(tmp_path, test_x_py=test, a_py=FAKE_A), "--fpgalab-url", lab.url)
    assert "4 passed, 2 errors" in done.stdout, done.stdout
    assert "a board, or a platform and tags (a pool), not both" in done.stdout
    assert "no board has the tag gpu" in done.stdout
    cases = junit(tmp_path / "report.xml")
    assert cases["test_1"]["fpgalab_session"] == cases["test_2"]["fpgalab_session"]
    assert len({cases[f"test_{n}"]["fpgalab_session"] for n in (1, 3, 4)}) == 3
    all_free(lab.url, list(inventory))


def test_the_key_reaches_the_lab(tmp_path: Path, start_lab: StartLab) -> None:
    """Against a keyed lab, ``--fpgalab-key`` (or FPGALAB_API_KEY) is the caller's key;
    a wrong one errors with the lab's answer."""
    lab = start_lab(api_keys=KEYS)
    test = "import pytest\n@pytest.mark.fpgalab(design='a.py')\ndef test_a(fpga_board): pass\n"
    folder = project(tmp_path, test_x_py=test, a_py=FAKE_A)
    assert run_pytest(folder, "--fpgalab-url", lab.url, "--fpgalab-key", ALICE).returncode == 0
    done = run_pytest(folder, "--fpgalab-url", lab.url, "--fpgalab-key", "wrong")
    assert done.returncode == 1 and "401 invalid_api_key" in done.stdout


# On the simulated lab: real designs on real simulated boards ---------------------------


@pytest.fixture(scope="module")
def sim_lab_url(sim_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``fpgalab serve`` of two simulated boards for this module, started as
    ``--fpgalab-local`` starts one, its builds in the session's build cache."""
    folder = tmp_path_factory.mktemp("plugin-lab")
    sim_cache.mkdir(parents=True, exist_ok=True)
    (folder / "cache").mkdir()
    (folder / "cache" / "sim").symlink_to(sim_cache.resolve(), target_is_directory=True)
    lab = LocalLab(folder / "lab.log", boards=2, cache=folder / "cache", timeout=280)
    yield lab.start()
    lab.stop()


@pytest.mark.sim
@pytest.mark.timeout(300)
def test_failing_and_erroring_tests_release_and_report(tmp_path: Path, sim_lab_url: str) -> None:
    """A failing test and one whose fixture errors each release their board (the next test
    of the design gets a new one); each report shows the build and run jobs and the build
    log's end; a design that does not build errors with its job and its log's end."""
    test = """import pytest
acc = pytest.mark.fpgalab(design="accumulator.py")
@acc
def test_fails(fpga_board):
    fpga_board.write(0x20000000, [5, 7])
    assert fpga_board.read(0x20000008) == [13]
@pytest.fixture
def broken(fpga_board):
    raise RuntimeError("a fixture broke")
@acc
def test_errors(broken): pass
@acc
def test_after(fpga_board): assert fpga_board.read(0x20000008) == [0]  # a fresh board
@pytest.mark.fpgalab(design="bad.py")
def test_bad_design(fpga_board): pass
"""
    folder = project(tmp_path, test_x_py=test, accumulator_py=ACCUMULATOR,
                     bad_py="this is not python(\n")  # fmt: skip
    before = submits(sim_lab_url)
    done = run_pytest(folder, "--fpgalab-url", sim_lab_url)
    assert done.returncode == 1
    assert "1 failed, 1 passed, 2 errors" in done.stdout, done.stdout
    cases = junit(folder / "report.xml")
    assert [cases[n]["outcome"] for n in ("test_fails", "test_errors", "test_after")] == [
        "failure", "error", "ok"]  # fmt: skip
    sessions = {cases[n]["fpgalab_session"] for n in ("test_fails", "test_errors", "test_after")}
    assert len(sessions) == 3  # none handed on after a failure
    assert len(submits(sim_lab_url) - before) == 4
    # the failing test's report: its jobs and the build log's end
    report = done.stdout.split("_ test_fails _")[1].split("_ test_")[0]
    fails = cases["test_fails"]
    assert f"build:   job {fails['fpgalab_build_job']} (accumulator.py, complete)" in report
    assert f"runs:    {fails['fpgalab_runs']}" in report and len(fails["fpgalab_runs"]) > 40
    assert "build log, its last" in report
    assert re.search(r"fpgalab: board \d programmed; reserved for this session", report)
    errors = done.stdout.split("ERROR at setup of test_errors")[1]
    assert "RuntimeError: a fixture broke" in errors and "---- fpgalab ----" in errors
    bad = done.stdout.split("ERROR at setup of test_bad_design")[1]
    assert "fpgalab: the build of bad.py failed: job" in bad
    assert "error:   bad.py:1: SyntaxError: '(' was never closed" in bad
    assert "  SyntaxError: '(' was never closed" in bad  # the log's end
    all_free(sim_lab_url, range(2))


@pytest.mark.sim
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_releases_its_board(
    tmp_path: Path, sim_lab_url: str, sig: signal.Signals
) -> None:
    """Ctrl-C (or a CI job cancelled with SIGTERM) in the middle of a test: pytest stops,
    and the board is released on the way out, not left to the session's expiry."""
    test = """import pathlib, time, pytest
@pytest.mark.fpgalab(design="accumulator.py")
def test_long(fpga_board):
    pathlib.Path("started").write_text(str(fpga_board.fpga_id))
    time.sleep(60)
"""
    folder = project(tmp_path, test_x_py=test, accumulator_py=ACCUMULATOR)
    proc = subprocess.Popen(
        [*PYTEST, "--fpgalab-url", sim_lab_url], cwd=folder,
        env=environment(**ONLY_NAMED_PLUGINS), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, preexec_fn=as_a_shell_starts_it,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (folder / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout
            time.sleep(0.1)
        masks = signal_masks(proc.pid)
        proc.send_signal(sig)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{sig.name} did not stop pytest ({masks})") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2 and "KeyboardInterrupt" in out, out
    all_free(sim_lab_url, range(2), timeout=15)


@pytest.mark.sim
@pytest.mark.timeout(300)
def test_each_xdist_worker_reserves_its_own_board(tmp_path: Path, sim_lab_url: str) -> None:
    """With ``-n 2`` each worker holds one board of its own for the tests it runs."""
    test = """import os, time, pytest
pytestmark = pytest.mark.fpgalab(design="accumulator.py")
@pytest.mark.parametrize("n", range(6))
def test_n(fpga_board, n):
    with open("seen", "a") as f:
        print(os.environ["PYTEST_XDIST_WORKER"], fpga_board.fpga_id, fpga_board.session_id, file=f)
    time.sleep(0.5)
"""
    folder = project(tmp_path, test_x_py=test, accumulator_py=ACCUMULATOR)
    done = run_pytest(folder, "-n", "2", "--fpgalab-url", sim_lab_url)
    assert done.returncode == 0, done.stdout
    seen = [line.split() for line in (folder / "seen").read_text().splitlines()]
    boards = {worker: {fpga for w, fpga, _ in seen if w == worker} for worker, _, _ in seen}
    assert len(boards) == 2 and all(len(b) == 1 for b in boards.values()), seen
    assert len(set.union(*boards.values())) == 2  # two workers, two boards
    all_free(sim_lab_url, range(2))


@pytest.mark.sim
@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["private lab", "lab url"])
def test_the_example_regression_suite_through_its_nox_session(
    tmp_path: Path, sim_lab_url: str, sim_cache: Path, where: str
) -> None:
    """docs/examples/regression, copied as a user's project, passes through ``nox -s
    regress`` (its installs skipped: nox --no-venv --no-install, this environment has
    them) on a private simulated lab — started, then stopped and its folder removed —
    and against a lab's URL; the JUnit XML says so."""
    example = tmp_path / "regression"
    shutil.copytree(REGRESSION, example, ignore=shutil.ignore_patterns(".*", "reports"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "sim").symlink_to(sim_cache.resolve(), target_is_directory=True)
    nox = [sys.executable, "-m", "nox", "--no-venv", "--no-install", "-s", "regress"]
    posargs = ["--", "--fpgalab-url", sim_lab_url] if where == "lab url" else []
    env = environment(FPGALAB_CACHE_DIR=str(tmp_path / "cache"), PYTEST_ADDOPTS="-p no:asyncio")
    done = subprocess.run([*nox, *posargs], cwd=example, env=env, capture_output=True,
                          text=True, timeout=280)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    suite = ET.parse(example / "reports" / "regress.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("10", "0", "0")
    if where == "private lab":
        log = (example / ".pytest_cache" / "d" / "fpgalab" / "lab.log").read_text()
        assert "lab ready: 2 boards" in log
        data = re.search(r"data in (\S+)/redis", log)
        assert data is not None and not Path(data[1]).exists()  # stopped, folder removed
    else:
        all_free(sim_lab_url, range(2))
