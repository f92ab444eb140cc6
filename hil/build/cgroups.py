"""A cgroup per sandboxed build step or simulator: bounds on the memory, tasks and CPU of
its whole process tree (rlimits bound each process alone), what the tree used, and which
bound it hit.

The groups live below the worker's own cgroup, in each hierarchy (v1) or in the one
hierarchy (v2), so a limit the machine already puts on the worker still holds. Run not
as root, or where groups cannot be made, ``Cgroups.available`` is False and its reason
says why: the steps then run with their per-process limits only.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Cgroups", "Group", "TreeLimits"]

ROOT = Path("/sys/fs/cgroup")
#: The folder, below the worker's own cgroup, that holds its groups.
PARENT = "fpgalab"
#: Without these, a tree is not bounded where it matters (the host's memory, fork bombs).
REQUIRED = ("memory", "pids")
#: cpu bounds CPU bandwidth; cpuacct (v1 only) measures CPU time.
OPTIONAL = ("cpu", "cpuacct")
CPU_PERIOD_US = 100_000
#: Seconds ``close`` waits for a killed tree to leave its group.
CLOSE_WAIT = 2.0
FALLBACK = "falling back to per-process limits"

# Joins the cgroups named by its arguments up to "--", then becomes the command after it: as
# the same pid, so everything the command starts is in the groups from its first instruction.
_JOIN = (
    'while [ "$1" != -- ]; do { echo $$ >"$1"; } 2>/dev/null || '
    '{ printf "fpgalab: cannot join the cgroup %s: the command was not run\\n" "$1" >&2; '
    'exit 125; }; shift; done; shift; exec "$@"'
)


@dataclass(frozen=True)
class TreeLimits:
    """Bounds on a whole process tree; None: not bounded."""

    #: Bytes, all processes of the tree together (their tmpfs pages count too).
    memory: int | None = None
    #: Tasks (processes and threads) at once, the whole tree.
    processes: int | None = None
    #: CPU bandwidth: 1.0 is one core.
    cpus: float | None = None

    def __post_init__(self) -> None:
        for name in ("memory", "processes", "cpus"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"TreeLimits.{name}: {value} is not positive")


@dataclass(frozen=True)
class Cgroups:
    """The machine's cgroup support, detected once (never raises)."""

    available: bool
    #: "v1", "v2", or None when no cgroup hierarchy was found.
    version: str | None
    #: One line: which bound applies, or why there is none.
    reason: str
    #: A few words on why groups are unavailable, for the build log.
    short: str = ""
    #: Controller -> the folder its groups are made in (the worker's cgroup / ``PARENT``).
    parents: Mapping[str, Path] = field(default_factory=dict)

    @classmethod
    @functools.cache
    def detect(cls) -> Cgroups:
        """Find the worker's cgroups, check that groups can be made below them, and remove
        the empty groups of workers that died."""
        try:
            found = _find()
        except (OSError, ValueError) as exc:
            return cls(False, None, f"cgroups unreadable ({exc}): {FALLBACK}", "unreadable")
        for parent in set(found.parents.values()):
            _remove_stale(parent)
        return found

    def describe(self, limits: TreeLimits) -> str:
        """One line for a build log: which bounds apply to the whole tree."""
        if not self.available:
            return f"no cgroup ({self.short}): per-process limits only"
        bounds = []
        if limits.memory is not None:
            bounds.append(f"{_size(limits.memory)} of memory")
        if limits.processes is not None:
            bounds.append(f"{limits.processes} tasks")
        if limits.cpus is not None and "cpu" in self.parents:
            bounds.append(_cpus(limits.cpus))
        what = ", ".join(bounds) or "no bounds"
        line = f"cgroup {self.version}: {what} for the whole process tree"
        if limits.cpus is not None and "cpu" not in self.parents:
            line += " (no cpu controller: CPU not bounded)"
        return line

    def create(self, name: str, limits: TreeLimits) -> Group | None:
        """A new group named after ``name`` (a short label) with ``limits`` set; None when
        groups are unavailable or this one could not be made."""
        if not self.available or self.version is None:
            return None
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "group"
        # The pid lets ``detect`` tell the groups of a dead worker from those of a live one.
        unique = f"{label}-{os.getpid()}-{secrets.token_hex(4)}"
        paths = {controller: parent / unique for controller, parent in self.parents.items()}
        group = Group(unique, self.version, limits, paths)
        try:
            for path in group.folders:
                path.mkdir()
            group._apply()
        except OSError:
            group.close()
            return None
        return group


@dataclass
class Group:
    """One process tree's cgroup (a folder per hierarchy in v1, one folder in v2)."""

    #: Unique: the label, the worker's pid and a random suffix.
    name: str
    version: str
    limits: TreeLimits
    #: Controller -> the group's folder in that controller's hierarchy.
    paths: Mapping[str, Path]
    _closed: bool = field(default=False, init=False, repr=False)

    @property
    def folders(self) -> list[Path]:
        """Each folder once (v1's cpu and cpuacct may share a hierarchy; v2 has one)."""
        return list(dict.fromkeys(self.paths.values()))

    def launcher(self) -> list[str]:
        """An argv prefix: ``launcher() + cmd`` joins the group, then exec's ``cmd``; if it
        cannot join, it exits 125 with one line on stderr and runs nothing."""
        procs = [str(folder / "cgroup.procs") for folder in self.folders]
        return ["/bin/sh", "-c", _JOIN, "fpgalab-cgroup", *procs, "--"]

    def verdict(self) -> str | None:
        """After the tree ended: which bound it hit, as words for a job's error; None if none."""
        if self.limits.memory is not None and self._memory_hit():
            size = _size(self.limits.memory)
            return f"it reached its memory limit ({size} for all its processes together)"
        if self.limits.processes is not None and self._tasks_hit():
            return f"it reached its limit of {self.limits.processes} tasks"
        return None

    def peak_memory(self) -> int | None:
        """The most memory the tree used at once (bytes), if the kernel tells."""
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        return _number(self.paths["memory"] / name)

    def cpu_seconds(self) -> float | None:
        """CPU time the tree used (user and system), if the kernel tells."""
        if self.version == "v1":
            if "cpuacct" not in self.paths:
                return None
            nanoseconds = _number(self.paths["cpuacct"] / "cpuacct.usage")
            return None if nanoseconds is None else nanoseconds / 1e9
        usec = _keyed(self.paths["memory"] / "cpu.stat").get("usage_usec")
        return None if usec is None else usec / 1e6

    def kill(self) -> None:
        """SIGKILL everything still in the group."""
        kill_file = self.paths["memory"] / "cgroup.kill"
        if self.version == "v2" and kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
                return
        # No atomic kill: a tree forking while it is killed needs more than one round (its
        # task limit keeps them few). A pid whose process exits between the read and the kill
        # could be reused meanwhile: a window of microseconds, which v2's cgroup.kill closes.
        for _ in range(20):
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def close(self) -> None:
        """Kill what is left, wait briefly for the group to empty, and remove it. A tree's
        first process must have been reaped (``Popen.wait``) for its group to go."""
        if self._closed:
            return
        self._closed = True
        self.kill()
        deadline = time.monotonic() + CLOSE_WAIT
        while self._pids() and time.monotonic() < deadline:
            time.sleep(0.02)
            self.kill()
        for folder in self.folders:
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy: a killed process is still on its way out
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.02)

    def _apply(self) -> None:
        memory, limits = self.paths["memory"], self.limits
        if self.version == "v1":
            if limits.memory is not None:
                # memsw (memory + swap) may never be below the memory limit: that one first.
                _write(memory / "memory.limit_in_bytes", limits.memory)
                if (memory / "memory.memsw.limit_in_bytes").exists():
                    _write(memory / "memory.memsw.limit_in_bytes", limits.memory)
            # A new v1 group inherits oom_kill_disable: with it set, a tree at its limit
            # would hang instead of being killed.
            _write(memory / "memory.oom_control", 0)
        elif limits.memory is not None:
            _write(memory / "memory.max", limits.memory)
            if (memory / "memory.swap.max").exists():
                _write(memory / "memory.swap.max", 0)
        if limits.processes is not None:
            _write(self.paths["pids"] / "pids.max", limits.processes)
        if limits.cpus is not None and "cpu" in self.paths:
            quota = max(1000, round(limits.cpus * CPU_PERIOD_US))
            cpu = self.paths["cpu"]
            # v1 refuses a quota above the parent's: then the parent's bound is the one.
            with contextlib.suppress(OSError):
                if self.version == "v1":
                    _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
                    _write(cpu / "cpu.cfs_quota_us", quota)
                else:
                    _write(cpu / "cpu.max", f"{quota} {CPU_PERIOD_US}")

    def _memory_hit(self) -> bool:
        memory = self.paths["memory"]
        if self.version == "v2":
            return _keyed(memory / "memory.events").get("oom_kill", 0) > 0
        control = _keyed(memory / "memory.oom_control")
        if "oom_kill" in control:
            return control["oom_kill"] > 0
        # Kernels before 4.13 do not count OOM kills; some newer ones leave failcnt at 0.
        peak = _number(memory / "memory.max_usage_in_bytes") or 0
        limit = _number(memory / "memory.limit_in_bytes") or peak + 1
        return (_number(memory / "memory.failcnt") or 0) > 0 or peak >= limit

    def _tasks_hit(self) -> bool:
        return _keyed(self.paths["pids"] / "pids.events").get("max", 0) > 0

    def _pids(self) -> set[int]:
        found: set[int] = set()
        for folder in self.folders:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
        return found


# Finding the hierarchies -------------------------------------------------------------------------

Mount = tuple[str, Path, str, set[str]]


def _find() -> Cgroups:
    mounts = _mounts()
    if not mounts:
        return Cgroups(False, None, f"no cgroup file system is mounted: {FALLBACK}", "none mounted")
    version = "v2" if (ROOT / "cgroup.controllers").exists() else "v1"
    own = _own_v2(mounts) if version == "v2" else _own_v1(mounts)
    missing = [name for name in REQUIRED if name not in own]
    if missing:
        why = f"no {' or '.join(missing)} controller"
        return Cgroups(False, version, f"cgroup {version} without the {missing[0]} controller: "
                       f"{FALLBACK}", why)  # fmt: skip
    if os.geteuid() != 0:
        return Cgroups(False, version, f"not root: cgroups cannot be delegated here, {FALLBACK}",
                       "not root")  # fmt: skip
    try:
        if version == "v2":
            _delegate(own["memory"], [name for name in own if name in ("memory", "pids", "cpu")])
        for folder in set(own.values()):
            (folder / PARENT).mkdir(exist_ok=True)
        if version == "v2":
            _delegate(own["memory"] / PARENT, list(own))
    except OSError as exc:
        where = own["memory"]
        if version == "v2" and exc.errno == errno.EBUSY:
            reason = (f"cgroup v2: the worker's cgroup {where} holds processes, so it cannot "
                      "hand controllers to child groups (v2's no-internal-processes rule); "
                      f"{FALLBACK}")  # fmt: skip
            return Cgroups(False, version, reason, "cgroup v2: no delegation")
        reason = f"cannot create cgroups below {where} ({exc.strerror}): {FALLBACK}"
        return Cgroups(False, version, reason, "cannot create cgroups")
    parents = {name: folder / PARENT for name, folder in own.items()}
    reason = f"cgroup {version}" + ("" if "cpu" in own else ", no cpu controller: CPU not bounded")
    return Cgroups(True, version, reason, parents=parents)


def _own_v1(mounts: list[Mount]) -> dict[str, Path]:
    """Controller -> the worker's cgroup in that controller's hierarchy."""
    own = _own_paths()
    found: dict[str, Path] = {}
    for root, mountpoint, kind, options in mounts:
        for name in (*REQUIRED, *OPTIONAL):
            if kind == "cgroup" and name in options and name in own and name not in found:
                folder = _below(mountpoint, root, own[name])
                if folder is not None and folder.is_dir():
                    found[name] = folder
    return found


def _own_v2(mounts: list[Mount]) -> dict[str, Path]:
    """Controller -> the worker's cgroup, for the controllers it has."""
    path = _own_paths().get("")
    for root, mountpoint, kind, _ in mounts:
        if kind == "cgroup2" and mountpoint == ROOT and path is not None:
            folder = _below(mountpoint, root, path)
            if folder is not None and folder.is_dir():
                controllers = (folder / "cgroup.controllers").read_text().split()
                return {name: folder for name in ("memory", "pids", "cpu") if name in controllers}
    return {}


def _delegate(folder: Path, controllers: list[str]) -> None:
    """Enable ``controllers`` for the children of ``folder`` (v2); EBUSY if it holds processes."""
    enabled = (folder / "cgroup.subtree_control").read_text().split()
    wanted = [name for name in controllers if name not in enabled]
    if wanted:
        _write(folder / "cgroup.subtree_control", " ".join(f"+{name}" for name in wanted))


def _own_paths() -> dict[str, str]:
    """Controller ("" for v2's hierarchy) -> the worker's cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(","):
            paths[name] = path
    return paths


def _mounts() -> list[Mount]:
    """Cgroup mounts: (root in the hierarchy, mount point, cgroup or cgroup2, options)."""
    found: list[Mount] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            root, mountpoint = _unescape(fields[3]), Path(_unescape(fields[4]))
            found.append((root, mountpoint, tail[0], set(tail[2].split(","))))
    return found


def _below(mountpoint: Path, root: str, path: str) -> Path | None:
    """Where cgroup ``path`` is, on a mount of the hierarchy from ``root`` down."""
    relative = os.path.relpath(path, root)
    if relative == ".." or relative.startswith("../"):
        return None  # not visible through this mount
    return mountpoint / relative


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), text)


def _remove_stale(parent: Path) -> None:
    """Remove the empty groups of workers that are gone (best effort: a busy one stays)."""
    with contextlib.suppress(OSError):
        for group in parent.iterdir():
            parts = group.name.rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and not _alive(int(parts[1])):
                with contextlib.suppress(OSError):
                    group.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Files and words ---------------------------------------------------------------------------------


def _write(path: Path, value: object) -> None:
    path.write_text(str(value))


def _number(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file ("oom_kill 3" lines) as a dict; empty if unreadable."""
    found = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                found[key] = int(value)
    return found


def _size(n: int) -> str:
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit:
            return f"{round(n / unit, 1):g} {name}"
    return f"{n} bytes"


def _cpus(cpus: float) -> str:
    return f"{cpus:g} CPU" + ("s" if cpus > 1 else "")
