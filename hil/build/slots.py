"""A host-wide bound on concurrent builds: a fixed number of slots, each a lock file, shared
by every worker process (and thread) on the host that uses the same folder.

A slot is an ``flock`` on ``slot-<i>.lock``: the kernel drops it when its holder's file is
closed, or when the holder dies, so a crashed worker never keeps a slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["SETTING", "BuildSlots", "auto_slots"]

#: The setting that names the number of slots, for messages.
SETTING = "FPGALAB_BUILD_SLOTS"
#: Seconds between two looks at the slots while all are taken.
POLL = 0.15


def auto_slots(
    memory_per_build: int, *, meminfo: Path = Path("/proc/meminfo"), share: float = 0.75
) -> int:
    """How many builds of ``memory_per_build`` bytes fit in ``share`` of the host's memory:
    at least 1 (also when ``meminfo`` cannot be read)."""
    if memory_per_build <= 0:
        raise ValueError(f"memory_per_build: {memory_per_build} is not positive")
    total = 0
    with contextlib.suppress(OSError, ValueError):
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024  # given in kB
    return max(1, math.floor(total * share / memory_per_build))


class BuildSlots:
    """``count`` build slots, as lock files in ``folder`` (made 0700 if missing)."""

    def __init__(self, folder: Path, count: int) -> None:
        if count < 1:
            raise ValueError(f"{SETTING}: {count} is not a number of slots (1 or more)")
        self.folder = folder
        self.count = count

    @contextlib.contextmanager
    def hold(self, log: Callable[[str], None], what: str) -> Iterator[int]:
        """Hold a slot while the block runs, and give its index. If all are taken, say so
        once in ``log`` and wait for one."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        waiting = False
        while (taken := self._take()) is None:
            if not waiting:
                log(f"{what}: waiting for a build slot ({self.count} builds at once on this "
                    f"host, {SETTING})")  # fmt: skip
                waiting = True
            time.sleep(POLL)
        index, fd = taken
        try:
            yield index
        finally:
            os.close(fd)  # drops the lock

    def _take(self) -> tuple[int, int] | None:
        """A free slot's index and its locked file, or None if all are taken."""
        for index in range(self.count):
            # Opened anew each time: a lock belongs to the open file, so two holders in one
            # process exclude each other as two processes do.
            path = self.folder / f"slot-{index}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return index, fd
        return None
