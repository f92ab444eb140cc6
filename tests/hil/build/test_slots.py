"""Build slots: at most ``count`` holders at once, across the threads of one process and
across processes sharing the folder; a holder that finds none free says so once and
waits; a slot is freed when its holder leaves or dies."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fpgalab.hil.build.slots import BuildSlots, auto_slots
from tests.helpers import REPO

GiB = 1 << 30
WAITING = "waiting for a build slot (2 builds at once on this host, FPGALAB_BUILD_SLOTS)"

# Holds a slot of the folder in argv[1] until its stdin closes, printing what it logs.
HOLDER = """
import sys
from pathlib import Path
from fpgalab.hil.build.slots import BuildSlots
with BuildSlots(Path(sys.argv[1]), 2).hold(lambda line: print(line, flush=True), "child") as i:
    print("holding", i, flush=True)
    sys.stdin.read()
"""


class Holder(threading.Thread):
    """Holds a slot from when it starts until ``leave`` is set."""

    def __init__(self, slots: BuildSlots, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.slots = slots
        self.lines: list[str] = []
        self.index: int | None = None
        self.inside = threading.Event()
        self.leave = threading.Event()

    def run(self) -> None:
        with self.slots.hold(self.lines.append, self.name) as index:
            self.index = index
            self.inside.set()
            self.leave.wait(30)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    """The test's holder threads, all let go at teardown."""
    made: list[Holder] = []
    yield made
    for holder in made:
        holder.leave.set()
        holder.join(5)


def holder(holders: list[Holder], slots: BuildSlots, name: str) -> Holder:
    started = Holder(slots, name)
    holders.append(started)
    started.start()
    return started


def child(folder: Path) -> subprocess.Popen[str]:
    """Another process holding (or waiting for) a slot of ``folder``."""
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO,
                            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip


def test_auto_slots_fits_builds_in_a_share_of_the_memory(tmp_path: Path) -> None:
    """Builds of 3 GiB in three quarters of 16 GiB: 4; never fewer than one."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {16 * GiB // 1024} kB\nMemFree:   1024 kB\n")
    assert auto_slots(3 * GiB, meminfo=meminfo) == 4
    assert auto_slots(3 * GiB, meminfo=meminfo, share=0.5) == 2
    assert auto_slots(20 * GiB, meminfo=meminfo) == 1
    assert auto_slots(3 * GiB, meminfo=tmp_path / "missing") == 1
    assert auto_slots(1 << 20) > 1  # this host's own /proc/meminfo


def test_a_third_thread_waits_for_a_slot_and_says_so_once(
    tmp_path: Path, holders: list[Holder]
) -> None:
    """With two slots, a third holder waits until one leaves, logging the waiting line once,
    and then gets the slot that was freed."""
    slots = BuildSlots(tmp_path / "slots", 2)
    first, second = holder(holders, slots, "first"), holder(holders, slots, "second")
    assert first.inside.wait(5) and second.inside.wait(5)
    assert {first.index, second.index} == {0, 1}
    third = holder(holders, slots, "elaboration")
    assert not third.inside.wait(1.0)  # several polls: each finds both slots taken
    assert third.lines == [f"elaboration: {WAITING}"]
    second.leave.set()
    assert third.inside.wait(5)
    assert third.index == second.index and len(third.lines) == 1
    assert first.lines == second.lines == []


def test_slots_are_shared_by_processes(tmp_path: Path, holders: list[Holder]) -> None:
    """A process that finds both slots held by another process waits, saying so, and gets
    one when a holder there leaves."""
    folder = tmp_path / "slots"
    slots = BuildSlots(folder, 2)
    here = [holder(holders, slots, "a"), holder(holders, slots, "b")]
    assert all(h.inside.wait(5) for h in here)
    with child(folder) as other:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == f"child: {WAITING}"
        here[0].leave.set()
        assert other.stdout.readline().split() == ["holding", str(here[0].index)]
        other.stdin.close()


def test_a_slot_is_freed_when_its_holder_dies(tmp_path: Path, holders: list[Holder]) -> None:
    """A process killed while holding a slot (a crashed worker) does not keep it."""
    folder = tmp_path / "slots"
    slots = BuildSlots(folder, 2)
    with child(folder) as other:
        assert other.stdout is not None
        held = int(other.stdout.readline().split()[1])
        mine = holder(holders, slots, "mine")
        assert mine.inside.wait(5) and mine.index == 1 - held
        waiting = holder(holders, slots, "waiting")
        assert not waiting.inside.wait(0.5)
        other.kill()
        assert waiting.inside.wait(5) and waiting.index == held
        assert waiting.lines == [f"waiting: {WAITING}"]


def test_the_slot_files_are_private(tmp_path: Path, holders: list[Holder]) -> None:
    """The folder is made 0700 and each lock file 0600."""
    folder = tmp_path / "deep" / "slots"
    taken = holder(holders, BuildSlots(folder, 2), "one")
    assert taken.inside.wait(5)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / f"slot-{taken.index}.lock").stat().st_mode) == 0o600


def test_a_bound_of_no_slots_is_refused(tmp_path: Path) -> None:
    """Zero slots would make every build wait forever: refused, naming the setting."""
    with pytest.raises(ValueError, match="FPGALAB_BUILD_SLOTS"):
        BuildSlots(tmp_path, 0)
