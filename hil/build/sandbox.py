"""The build sandbox: the bubblewrap command a build step or a simulator runs in, the
resource limits it sets itself, its cgroup, and taking back what it wrote. The command
is run by ``hil.procs.run``.

The sandbox (``Sandbox.command``, mode from ``FPGALAB_SANDBOX``: ``bwrap`` or ``none``):
its own network (loopback only), pid, IPC, UTS and cgroup namespaces; the system
(``/usr``, the loader's files in ``/etc``) and the Python environment read-only; the
folders a ``Confinement`` names, read-only or writable; a private, size-capped ``/tmp``;
nothing else. It dies with its parent, and with the pid namespace everything in it.

Processes: RLIMIT_NPROC never applies to uid 0, and for any other uid it counts that
uid's processes per user namespace. So the step always runs unprivileged in a user
namespace of its own, where the limit counts its own processes only:

- run as root (CI, containers): bwrap, still root, builds the mount tree (it can reach
  folders under a 0700 parent) and the namespaces; inside, ``setpriv`` drops to
  ``FPGALAB_SANDBOX_UID`` (default 65534) with no capabilities and no way back
  (``no_new_privs``), and a second bwrap makes the user namespace. Writable folders are
  handed to that uid first.
- run as any other user: one bwrap, which makes the user namespace itself; the kernel
  must allow unprivileged user namespaces.

Then ``prlimit`` sets the process cap, and the step's own code the other limits
(``apply_limits``, first thing in ``hil.build.elaborate``, ``sim.verilate`` and YoWASP's
runner) rather than a ``preexec_fn``, which is unsafe in a threaded parent such as the
worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fpgalab.hil.build.cgroups import Cgroups, Group, TreeLimits

MODE_VARIABLE = "FPGALAB_SANDBOX"
UID_VARIABLE = "FPGALAB_SANDBOX_UID"
MODES = ("bwrap", "none")
NOBODY = 65534
#: What a build needs of /etc: the dynamic loader's cache and configuration, and
#: ``alternatives`` (``c++``, ``cc`` are links through it). No passwd, hosts or keys.
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime")
#: Top-level folders that a merged-/usr system has as links into /usr.
SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class Limits:
    #: CPU seconds per process.
    cpu: int = 600
    #: Address space per process (bytes); None: unlimited (wasmtime reserves far more
    #: than it uses; ``data`` bounds it instead).
    address_space: int | None = 4 << 30
    #: Writable private memory per process (RLIMIT_DATA, bytes); None: unlimited.
    data: int | None = None
    #: Largest file a process may write (bytes).
    file_size: int = 1 << 30
    open_files: int = 1024
    #: Processes and threads at once, the step's own only: applied in the sandbox
    #: (RLIMIT_NPROC in its user namespace), not enforced with FPGALAB_SANDBOX=none.
    processes: int = 64

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def apply_limits(limits: Mapping[str, int | None]) -> None:
    """In the child: set the limits, and die with the parent (Linux)."""
    # In the sandbox the parent may be its pid namespace's init, pid 1: compare, not test for 1.
    parent = os.getppid()
    pairs = {
        resource.RLIMIT_CPU: limits.get("cpu"),
        resource.RLIMIT_AS: limits.get("address_space"),
        resource.RLIMIT_DATA: limits.get("data"),
        resource.RLIMIT_FSIZE: limits.get("file_size"),
        resource.RLIMIT_NOFILE: limits.get("open_files"),
        resource.RLIMIT_CORE: 0,
    }
    for which, value in pairs.items():
        if value is not None:
            _, hard = resource.getrlimit(which)
            soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (soft, soft))
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)


# The sandbox -------------------------------------------------------------------------------------


class SandboxUnavailable(Exception):
    """The sandbox cannot run on this machine; the message (one line) says why and what to do."""


@dataclass(frozen=True)
class Confinement:
    """What a sandboxed step sees besides the system and the Python environment."""

    #: Folders it may write (its build folder, a compiler cache).
    writable: tuple[Path, ...]
    #: Folders it may read (the project's packages it imports, a tool cache).
    readable: tuple[Path, ...] = ()
    #: Processes and threads at once.
    processes: int = 64
    #: Size of its private /tmp (memory-backed).
    tmp_size: int = 64 << 20


def python_dirs() -> list[Path]:
    """The Python environment a child runs in: the venv and the interpreter it is made from."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return sorted({Path(os.path.realpath(p)) for p in found})


def _inside(path: Path, folders: Iterable[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


class Sandbox:
    """Wraps a step's command in bubblewrap, or (mode ``none``) leaves it as it is."""

    def __init__(self, mode: str = "bwrap", uid: int = NOBODY) -> None:
        """``mode`` and ``uid``: the lab's ``FPGALAB_SANDBOX`` and ``FPGALAB_SANDBOX_UID``
        (its settings, passed down)."""
        #: Why the settings are wrong, raised by ``check``: a lab with a bad setting
        #: starts, and fails each build saying so.
        self.problem: str | None = None
        if mode not in MODES:
            self.problem = f"{MODE_VARIABLE}={mode!r}: use {' or '.join(MODES)}"
        self.mode = mode
        self.uid = uid
        if self.uid <= 0 and mode != "none":
            # RLIMIT_NPROC never applies to uid 0: the process cap would not hold.
            self.problem = f"{UID_VARIABLE}={uid!r}: give a uid other than 0"
        #: Run as root: drop to ``uid`` inside (see the module's docstring).
        self.as_root = os.geteuid() == 0

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def describe(self) -> str:
        """A few words for the build log."""
        if not self.enabled:
            return f"NOT sandboxed: {MODE_VARIABLE}=none"
        return f"sandboxed: bwrap, uid {self.uid if self.as_root else os.geteuid()}, no network"

    def check(self) -> None:
        """Raise SandboxUnavailable if the sandbox cannot run here (tried once per process)."""
        if self.problem:
            raise SandboxUnavailable(self.problem)
        if self.enabled:
            problem = _probe(self.as_root, self.uid)
            if problem:
                raise SandboxUnavailable(problem)

    def workdir(self, fallback: Path) -> Path:
        """Where a step works and writes: in the sandbox, its private ``/tmp`` (a tmpfs of
        ``Confinement.tmp_size`` that the worker never sees, gone with the step);
        unsandboxed, ``fallback``, a fresh folder of the caller's."""
        return Path("/tmp") if self.enabled else fallback

    def reclaim(self, folder: Path) -> None:
        """Take back a folder a step could write, before anything of the lab reads or runs
        what is in it: links and anything but files and folders removed, the rest made
        the worker's and read-only. The step must have ended (nothing else writes it)."""
        reclaim(folder)

    def command(
        self, cmd: Sequence[str], cwd: Path, confinement: Confinement, group: Group | None = None
    ) -> list[str]:
        """``cmd`` wrapped in the sandbox, to run in ``cwd``, and in ``group`` (its cgroup,
        see ``bounded``) if given. Run as root, this first hands the writable folders to
        the sandbox's uid. Raises SandboxUnavailable."""
        join = group.launcher() if group is not None else []
        if not self.enabled:
            return [*join, *cmd]
        self.check()
        if self.as_root:
            for folder in confinement.writable:
                _hand_over(folder, self.uid)
        return [*join, *_bwrap_argv(cmd, cwd, confinement, self.uid if self.as_root else None)]


def _tools() -> dict[str, str | None]:
    return {name: shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
            for name in ("bwrap", "setpriv", "prlimit")}  # fmt: skip


def _bwrap_argv(
    cmd: Sequence[str], cwd: Path, confinement: Confinement, uid: int | None
) -> list[str]:
    """The full command line; ``uid``: run as root, drop to this uid inside."""
    tools = _tools()
    argv = [str(tools["bwrap"]), "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session"]  # fmt: skip
    if uid is None:
        argv += ["--unshare-user", "--disable-userns"]
    else:
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_DIRS:
        top = Path("/", name)
        if top.is_symlink():
            argv += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            argv += ["--ro-bind", str(top), str(top)]
    argv += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "1777", "--size", str(confinement.tmp_size), "--tmpfs", "/tmp"]
    argv += _binds(confinement)
    argv += ["--chdir", str(cwd), "--"]
    if uid is not None:
        argv += [str(tools["setpriv"]), f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--inh-caps=-all", "--no-new-privs",
                 str(tools["bwrap"]), "--unshare-user", "--disable-userns", "--dev-bind", "/", "/",
                 "--die-with-parent", "--chdir", str(cwd), "--"]  # fmt: skip
    n = confinement.processes
    return [*argv, str(tools["prlimit"]), f"--nproc={n}:{n}", "--", *cmd]


def _binds(confinement: Confinement) -> list[str]:
    """Bind mounts of the Python environment and the confinement's folders, parents before
    children; the folders leading to them made on the sandbox's own tmpfs, mode 0755 (bwrap
    would copy the host's, and a 0700 parent would shut the sandbox's uid out)."""
    mounts: dict[Path, str] = {Path("/usr"): "--ro-bind", Path("/tmp"): "--tmpfs"}
    for folder in [*python_dirs(), *confinement.readable]:
        folder = Path(os.path.realpath(folder))
        if not _inside(folder, [p for p, kind in mounts.items() if kind == "--ro-bind"]):
            mounts[folder] = "--ro-bind"
    for folder in confinement.writable:
        mounts[Path(os.path.realpath(folder))] = "--bind"
    argv: list[str] = []
    made: set[Path] = set()
    hosts = [p for p, kind in mounts.items() if kind.endswith("bind")]
    for folder in sorted(mounts, key=lambda p: len(p.parts)):
        if mounts[folder] == "--tmpfs" or folder == Path("/usr"):
            continue
        for parent in reversed(folder.parents):
            if parent == Path("/") or parent in made or parent in mounts:
                continue
            if _inside(parent, [h for h in hosts if h != folder]):
                continue  # it exists: a host folder bound above
            argv += ["--perms", "0755", "--dir", str(parent)]
            made.add(parent)
        argv += [mounts[folder], str(folder), str(folder)]
    return argv


def _hand_over(folder: Path, uid: int) -> None:
    """Make ``folder`` and what is in it the sandbox uid's, so the step can write there."""
    folder.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            if os.lstat(path).st_uid != uid:
                os.lchown(path, uid, uid)
    if folder.stat().st_uid != uid:
        os.chown(folder, uid, uid)


def reclaim(folder: Path) -> None:
    """See ``Sandbox.reclaim``. Never follows a link: ``os.fwalk`` keeps to directory
    descriptors, and every change is made relative to one."""
    uid, gid = os.geteuid(), os.getegid()
    top = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for _, dirs, files, fd in os.fwalk(dir_fd=top, topdown=False):
            for name in [*files, *dirs]:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                kind = stat.S_IFMT(info.st_mode)
                if kind not in (stat.S_IFREG, stat.S_IFDIR):
                    os.unlink(name, dir_fd=fd)  # a link, a FIFO, a socket, a device
                    continue
                if info.st_uid != uid or info.st_gid != gid:
                    os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                keep = 0o755 if kind == stat.S_IFDIR else (info.st_mode & 0o555) | 0o444
                os.chmod(name, keep, dir_fd=fd)  # not a link: checked above, nothing races
        os.fchown(top, uid, gid)
        os.fchmod(top, 0o755)
    finally:
        os.close(top)


@functools.lru_cache(maxsize=4)
def _probe(as_root: bool, uid: int) -> str | None:
    """Why the sandbox cannot run here, or None if a trivial command runs in it."""
    fix = f"or set {MODE_VARIABLE}=none to build unsandboxed"
    tools = _tools()
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        package = "bubblewrap" if "bwrap" in missing else "util-linux"
        return (f"build sandbox unavailable: {', '.join(missing)} not found: install "
                f"{package} (apt-get install {package}), {fix}")  # fmt: skip
    argv = _bwrap_argv(["true"], Path("/"), Confinement(writable=()), uid if as_root else None)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                              env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"build sandbox unavailable: bwrap did not run: {exc}; {fix}"
    if done.returncode == 0:
        return None
    said = (done.stderr.strip().splitlines() or [f"status {done.returncode}"])[-1]
    return (f"build sandbox unavailable: bwrap cannot set up its namespaces here ({said}); "
            f"the kernel must allow unprivileged user namespaces, {fix}")  # fmt: skip


# Bounds on a whole process tree ------------------------------------------------------------------


@contextlib.contextmanager
def bounded(name: str, limits: TreeLimits | None) -> Iterator[Group | None]:
    """A cgroup bounding a step's whole process tree (``hil.build.cgroups``) for the block, or
    None where the machine has none to give (then only the per-process limits hold)."""
    group = Cgroups.detect().create(name, limits) if limits is not None else None
    try:
        yield group
    finally:
        if group is not None:
            group.close()


def describe_bounds(limits: TreeLimits) -> str:
    """A few words for the build log: what bounds the step's whole tree, or why nothing does."""
    return Cgroups.detect().describe(limits)
