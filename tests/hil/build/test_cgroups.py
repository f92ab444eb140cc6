"""A cgroup per build step or simulator: real process trees in real cgroups, each held to
the bound of its whole tree (memory, tasks, CPU), with a verdict naming the bound it hit,
and nothing left behind.

Without usable cgroups (not root, no hierarchy) the tests skip, except in CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fpgalab.hil.build.cgroups import Cgroups, Group, TreeLimits
from fpgalab.sim.board import exited
from tests.helpers import REPO

MiB = 1 << 20

# Three children each touch 150 MiB and hold it for a while, so that all three overlap.
MEMORY_HOG = """
import os, sys, time
children = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        data = b"x" * (150 << 20)  # written, so every page is really there
        time.sleep(1.5)
        os._exit(0)
    children.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print(codes)
sys.exit(0 if codes == [0, 0, 0] else 1)
"""

# Forks 64 sleepers, counting refusals, then holds the tree until its stdin closes.
FORK_LOOP = """
import os, sys, time
forked = refused = 0
for _ in range(64):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    forked += 1
print(forked, refused, flush=True)
sys.stdin.read()
"""

# Four busy loops for two seconds of wall time.
BUSY = """
import os, time
end = time.monotonic() + 2.0
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        while time.monotonic() < end:
            pass
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""


@pytest.fixture(scope="module")
def cgroups() -> Cgroups:
    """The machine's cgroups, which these tests are about."""
    found = Cgroups.detect()
    if not found.available:
        if os.environ.get("CI"):  # CI runs as root on a machine with cgroups: a failure there
            pytest.fail(f"cgroups unavailable: {found.reason}")
        pytest.skip(found.reason)
    return found


@pytest.fixture
def make_group(cgroups: Cgroups) -> Iterator[Callable[[TreeLimits], Group]]:
    """Makes groups, and closes each at teardown."""
    made: list[Group] = []

    def make(limits: TreeLimits) -> Group:
        group = cgroups.create("test", limits)
        assert group is not None
        made.append(group)
        return group

    yield make
    for group in made:
        group.close()


def python(group: Group | None, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new Python, in ``group`` if one is given."""
    prefix = group.launcher() if group else []
    return subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def processes_in(group: Group) -> dict[int, int]:
    """pid -> its number of tasks (threads), for each process in ``group``, from /proc."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if f"/{group.name}\n" in Path(f"/proc/{pid}/cgroup").read_text():
                found[int(pid)] = len(os.listdir(f"/proc/{pid}/task"))
    return found


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_memory_is_bounded_for_the_whole_tree(make_group: Callable[[TreeLimits], Group]) -> None:
    """Three children touching 150 MiB each in a group of 256 MiB: one is killed, the verdict
    names the memory limit, the group never held more than it; unbounded, the same passes."""
    group = make_group(TreeLimits(memory=256 * MiB))
    done = python(group, MEMORY_HOG)
    assert done.returncode == 1 and "-9" in done.stdout, done
    assert group.verdict() == (
        "it reached its memory limit (256 MiB for all its processes together)"
    )
    peak = group.peak_memory()
    assert peak is not None and 200 * MiB < peak <= 256 * MiB
    # The control: 450 MiB at once is nothing to this host, but too much for the group.
    assert python(None, MEMORY_HOG).returncode == 0


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_tmpfs_pages_count_against_the_memory_bound(
    make_group: Callable[[TreeLimits], Group], tmp_path: Path
) -> None:
    """Writing 128 MiB into a 1 GiB tmpfs from a group of 64 MiB is stopped: the pages are
    charged to the tree, as a sandbox's private /tmp would be."""
    group = make_group(TreeLimits(memory=64 * MiB))
    fill = f"dd if=/dev/zero of={tmp_path}/fill bs=1M count=128 status=none"
    script = f"mount -t tmpfs -o size=1g none {tmp_path} && {fill}; echo $?"
    done = subprocess.run([*group.launcher(), "unshare", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.stdout.strip() not in ("", "0"), done
    verdict = group.verdict()
    assert verdict is not None and "memory limit (64 MiB" in verdict
    peak = group.peak_memory()
    assert peak is not None and peak <= 64 * MiB


def test_a_fork_loop_cannot_exceed_the_task_bound(
    make_group: Callable[[TreeLimits], Group],
) -> None:
    """A fork loop in a group of 16 tasks is refused once it has 16, counted in /proc, and
    the verdict names the task limit."""
    group = make_group(TreeLimits(processes=16))
    with subprocess.Popen([*group.launcher(), sys.executable, "-c", FORK_LOOP], text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:  # fmt: skip
        assert proc.stdout is not None
        try:
            forked, refused = map(int, proc.stdout.readline().split())
            counted = processes_in(group)
        finally:
            group.kill()
    assert sum(counted.values()) == len(counted) == forked + 1 == 16
    assert refused == 64 - forked
    assert group.verdict() == "it reached its limit of 16 tasks"


def test_cpu_bandwidth_is_bounded_for_the_whole_tree(
    make_group: Callable[[TreeLimits], Group],
) -> None:
    """Four busy loops for 2 s in a group of half a CPU use at most ~1.3 CPU-seconds (4 or
    more unbounded, with 2 cores). A bound, not a timing: the quota caps the CPU time per
    wall-clock period whatever the load, while a busy machine may give the tree less."""
    group = make_group(TreeLimits(cpus=0.5))
    assert python(group, BUSY).returncode == 0
    used = group.cpu_seconds()
    assert used is not None and 0.1 < used <= 1.3


def test_close_kills_what_is_left_and_removes_the_group(
    make_group: Callable[[TreeLimits], Group],
) -> None:
    """Processes the step left behind (its first one has exited) are killed by close, and
    the group's folders are gone; closing again does nothing."""
    group = make_group(TreeLimits(memory=64 * MiB, processes=16))
    leader = subprocess.run([*group.launcher(), "sh", "-c", "sleep 60 & sleep 60 & exit 0"],
                            timeout=10, check=True)  # fmt: skip
    assert leader.returncode == 0
    left = list(processes_in(group))
    assert len(left) == 2 and not any(map(exited, left))
    group.close()
    wait_for(lambda: all(map(exited, left)))
    assert not any(folder.exists() for folder in group.folders)
    group.close()


def test_detect_removes_the_empty_groups_of_dead_workers(cgroups: Cgroups) -> None:
    """An empty group named for a worker that is gone is removed by detect; one named for a
    live worker (this one) stays."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    parents = set(cgroups.parents.values())
    stale = [parent / f"elaborate-{gone.pid}-0badc0de" for parent in parents]
    live = [parent / f"elaborate-{os.getpid()}-0badc0de" for parent in parents]
    for folder in [*stale, *live]:
        folder.mkdir()
    try:
        Cgroups.detect.cache_clear()  # as a worker starting anew
        assert Cgroups.detect().available
        assert not any(folder.exists() for folder in stale)
        assert all(folder.exists() for folder in live)
    finally:
        for folder in [*stale, *live]:
            with contextlib.suppress(FileNotFoundError):
                folder.rmdir()


def test_a_launcher_that_cannot_join_runs_nothing(
    make_group: Callable[[TreeLimits], Group], tmp_path: Path
) -> None:
    """If its group is gone, the launcher exits 125 with one line on stderr, and the command
    never runs; close then has nothing to do and does not fail."""
    group = make_group(TreeLimits(memory=64 * MiB))
    for folder in group.folders:
        folder.rmdir()
    ran = tmp_path / "ran"
    done = subprocess.run([*group.launcher(), "touch", str(ran)], capture_output=True,
                          text=True, timeout=10, check=False)  # fmt: skip
    assert done.returncode == 125 and not ran.exists()
    assert len(done.stderr.splitlines()) == 1 and "cannot join the cgroup" in done.stderr
    group.close()


def test_the_build_log_says_which_bounds_apply(cgroups: Cgroups) -> None:
    """describe names the cgroup version and each bound, in words."""
    line = cgroups.describe(TreeLimits(memory=1 << 30, processes=64, cpus=1.0))
    cpu = "1 CPU" if "cpu" in cgroups.parents else "(no cpu controller"
    assert line.startswith(f"cgroup {cgroups.version}: 1 GiB of memory, 64 tasks")
    assert cpu in line and "whole process tree" in line


def test_without_root_there_are_no_groups_and_the_log_says_why() -> None:
    """Run as another user, detection falls back to per-process limits and says so, and
    create gives None: nothing raises."""
    here = Cgroups.detect()
    if here.version is None or not (here.available or here.short == "not root"):
        pytest.skip(f"no cgroup hierarchy to be refused: {here.reason}")
    # Imported first, while the interpreter's own files (perhaps under /root) are readable.
    script = (
        "import os\n"
        "from fpgalab.hil.build.cgroups import Cgroups, TreeLimits\n"
        "if os.geteuid() == 0:\n"
        "    os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "found = Cgroups.detect()\n"
        "print(found.available, found.create('sim-0', TreeLimits(memory=1 << 30)))\n"
        "print(found.reason)\n"
        "print(found.describe(TreeLimits(memory=1 << 30)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    available, reason, described = done.stdout.splitlines()
    assert available == "False None"
    assert reason.startswith("not root") and "per-process limits" in reason
    assert described == "no cgroup (not root): per-process limits only"
