"""Nothing a design writes is trusted by the lab's own processes: a simulator's folder is
its own and gone when it stops, an elaboration's outputs are bytes checked on the way
back, and every sandbox is bounded as a whole (memory, tasks, CPU, space).

Each test is an attack a hostile tenant made on the lab before these rules held.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from fpgalab.backends.base import BoardError, Design, DesignError, Op, Transaction
from fpgalab.backends.sim import SimBackend
from fpgalab.hil.build.cgroups import Cgroups
from fpgalab.hil.build.pipeline import ELABORATION_SCRATCH, ELABORATION_TREE
from fpgalab.sim.board import SIMULATOR_TREE
from tests.designs import shell_design
from tests.helpers import REPO, Log

pytestmark = pytest.mark.sim

USER = 0x2000_0000
DESIGN_ID = 0xC0FFEE01
SECRET = "s3cr3t-" + uuid.uuid4().hex


@pytest.fixture
def cgroups() -> Cgroups:
    """The machine's cgroups, which bound a sandbox as a whole (root only; CI must have them)."""
    found = Cgroups.detect()
    if not found.available:
        if os.environ.get("CI"):
            pytest.fail(found.reason)
        pytest.skip(found.reason)
    return found


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    """A host file only the worker's user may read, which a design must never see or change."""
    secret = tmp_path / "host-secret"
    secret.write_text(f"{SECRET}\n")
    secret.chmod(0o600)
    return secret


def worker_environment() -> list[str]:
    """Entries of this process's own environment, as /proc/self/environ shows it."""
    raw = Path("/proc/self/environ").read_bytes().split(b"\0")
    return [entry.decode("utf-8", "replace") for entry in raw if b"=" in entry]


def run_design(sim: SimBackend, board: int, source: str, name: str = "hostile.v") -> None:
    built = sim.build(Design(name, source.encode()), Log())
    sim.program(board, built, Log())


def poke(sim: SimBackend, board: int, word: int) -> int:
    """Write word ``word`` of the slot (running its command); the command's exit status."""
    sim.transact(board, Transaction(Op.WRITE, USER + 4 * word, data=[1]))
    reply = sim.transact(board, Transaction(Op.READ, USER + 4 * word, length=1))
    assert reply.ok, reply.error
    return reply.data[0]


def serves_a_normal_design(sim: SimBackend, board: int) -> None:
    """The board takes the next tenant's design and answers right."""
    source = (REPO / "docs" / "examples" / "accumulator.v").read_bytes()
    sim.program(board, sim.build(Design("accumulator.v", source), Log()), Log())
    sim.transact(board, Transaction(Op.WRITE, USER, data=[5, 7]))
    reply = sim.transact(board, Transaction(Op.READ, USER, length=5))
    assert reply.ok and reply.data == [5, 7, 12, 0, DESIGN_ID], reply


# The simulator's folder --------------------------------------------------------------------------


@pytest.mark.usefixtures("sandbox")
def test_links_in_the_simulators_folder_show_the_worker_nothing(
    sim: SimBackend, host_secret: Path
) -> None:
    """A design that swaps its simulator's log for links to the worker's environment and to
    a host file, then ends the simulation: the failure quotes its own output, never what
    the links point at; the host file is untouched and a reset heals the board."""
    before = host_secret.read_bytes()
    links = (
        "rm -f simulator.log results.xml; ln -s /proc/self/environ simulator.log; "
        f"ln -s {host_secret} results.xml; ln -s {host_secret} log; echo planted-links"
    )
    run_design(sim, 2, shell_design(links, fatal=0))
    with pytest.raises(BoardError) as failed:
        poke(sim, 2, 0)
    error = str(failed.value)
    assert error.startswith("board 2: the simulator exited with status"), error
    assert SECRET not in error
    for entry in worker_environment():
        assert entry not in error
    sim.reset(2, Log())
    assert sim.health(2).ok
    assert host_secret.read_bytes() == before
    serves_a_normal_design(sim, 2)


@pytest.mark.usefixtures("sandbox")
def test_a_planted_module_is_not_seen_by_the_next_tenant(sim: SimBackend, tmp_path: Path) -> None:
    """A design plants a ``sim.harness`` (which cocotb would import first from the working
    folder) and other files: the next tenant's simulator starts in a fresh, empty folder
    and serves them, none of it loaded."""
    marker = tmp_path / "harness-ran"
    planted = (
        "mkdir -p sim cocotb_tools && touch sim/__init__.py cocotb_tools/__init__.py && "
        f'printf \'open("{marker}", "w")\\nraise SystemExit(3)\\n\' > sim/harness.py && '
        "cp sim/harness.py cocotb_tools/config.py && echo planted > leftover && ls sim"
    )
    run_design(sim, 3, shell_design(planted, "ls leftover sim/harness.py"))
    assert poke(sim, 3, 0) == 0
    assert poke(sim, 3, 1) == 0  # planted, and seen by this simulator
    sim.reset(3, Log())
    run_design(sim, 3, shell_design("ls leftover", "ls sim", "touch mine && ls mine"))
    assert poke(sim, 3, 0) != 0  # the next tenant's folder has none of it
    assert poke(sim, 3, 1) != 0
    assert poke(sim, 3, 2) == 0  # and is its own to write
    assert not marker.exists()
    serves_a_normal_design(sim, 3)


def test_an_unsandboxed_simulator_gets_a_fresh_folder_each_start(
    sim_cache: Path, tmp_path: Path
) -> None:
    """With the sandbox off (a trusted lab), a simulator still starts in a new folder of its
    own, removed when it stops, links and all."""
    run_dir = tmp_path / "boards"
    lab = SimBackend(sim_cache, run_dir=run_dir, sandbox="none")
    try:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "keep").write_text("kept")
        run_design(lab, 0, shell_design(f"ln -s {outside} link && touch mine && ls mine"))
        assert poke(lab, 0, 0) == 0
        first = list((run_dir / "0").iterdir())
        assert len(first) == 1 and (first[0] / "mine").exists()
        lab.reset(0, Log())
        second = list((run_dir / "0").iterdir())
        assert len(second) == 1 and second != first and not any(second[0].iterdir())
        assert (outside / "keep").read_text() == "kept"
    finally:
        lab.close()
    assert not any((run_dir / "0").iterdir())


# Bounds on a simulator ---------------------------------------------------------------------------


@pytest.mark.usefixtures("sandbox")
def test_a_simulator_writes_no_more_than_its_folder_holds(sim: SimBackend) -> None:
    """200 MiB written by a design's $system meet the simulator's 64 MiB folder: the write
    fails, nothing reaches the host's disk, and the board goes on serving."""
    run_design(sim, 4, shell_design("dd if=/dev/zero of=big bs=1M count=200", "ls big"))
    assert poke(sim, 4, 0) != 0
    assert poke(sim, 4, 1) == 0  # a partial file, in its own tmpfs
    reply = sim.transact(4, Transaction(Op.READ, USER, length=1))
    assert reply.ok


@pytest.mark.usefixtures("sandbox")
def test_a_simulator_child_cannot_take_more_than_the_simulators_memory(
    sim: SimBackend, cgroups: Cgroups
) -> None:
    """A process the design starts that allocates past the simulator's bound is killed;
    the simulator and the board are unharmed."""
    limit = SIMULATOR_TREE.memory or 0
    hog = f"python3 -c 'b = bytearray({limit + (256 << 20)}); print(len(b))'"
    run_design(sim, 5, shell_design(hog, "true"))
    assert poke(sim, 5, 0) != 0
    assert poke(sim, 5, 1) == 0
    board = sim.board(5)
    assert board._group is not None and board._group.verdict() is not None


@pytest.mark.usefixtures("sandbox")
def test_busy_loops_get_one_core_between_them(sim: SimBackend, cgroups: Cgroups) -> None:
    """Four endless loops the design leaves running share the simulator's one CPU: measured
    by the kernel's count of its CPU time over a 2 s window, a bound and not a speed (four
    unbounded loops would take both cores of a 2-core machine)."""
    loops = "for i in 1 2 3 4; do (while :; do :; done) >/dev/null 2>&1 & done; echo started"
    run_design(sim, 6, shell_design(loops))
    assert poke(sim, 6, 0) == 0
    group = sim.board(6)._group
    assert group is not None
    time.sleep(0.5)
    before, started = group.cpu_seconds(), time.monotonic()
    time.sleep(2.0)
    used, took = (group.cpu_seconds() or 0) - (before or 0), time.monotonic() - started
    assert 0.2 * took < used <= (SIMULATOR_TREE.cpus or 1) * took * 1.15, (used, took)
    sim.reset(6, Log())  # the loops die with the simulator's group
    assert group._pids() == set()


@pytest.mark.usefixtures("sandbox")
def test_a_fork_bomb_in_a_simulator_stays_in_its_bound(sim: SimBackend, cgroups: Cgroups) -> None:
    """Forking without end from $system reaches the simulator's task bound, no further;
    a reset kills it all and heals the board."""
    bomb = "for i in $(seq 200); do sleep 30 & done; echo forked"
    run_design(sim, 7, shell_design(bomb))
    poke_failed = False
    try:
        poke(sim, 7, 0)
    except BoardError:
        poke_failed = True  # the simulator itself could not make a thread: its own loss
    group = sim.board(7)._group
    if group is not None:
        assert len(group._pids()) <= (SIMULATOR_TREE.processes or 0)
    sim.reset(7, Log())
    assert sim.health(7).ok, poke_failed
    serves_a_normal_design(sim, 7)


# Elaboration outputs -----------------------------------------------------------------------------


def hostile_bundle(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for member, payload in members:
            tar.addfile(member, io.BytesIO(payload))
    return out.getvalue()


def design_sending(bundle: bytes) -> str:
    """A Python design that writes ``bundle`` to the result pipe itself and exits at once."""
    return f"import os\nos.write(int(os.environ['FPGALAB_RESULT_FD']), {bundle!r})\nos._exit(0)\n"


def link(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, b""


def regular(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


@pytest.mark.usefixtures("sandbox")
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("link", "the elaboration handed back 'csr.json', which is not a regular file: refused"),
        ("escape", "the elaboration handed back a file named '../../etc/passwd': refused"),
        (
            "stranger",
            "the elaboration handed back a file it has no business writing: "
            "'sitecustomize.py': refused",
        ),
        ("data-file", "the elaboration handed back a result that does not add up"),
    ],
)
def test_elaboration_outputs_are_checked_not_followed(
    sim: SimBackend, host_secret: Path, case: str, expected: str
) -> None:
    """A design that hands back its own outputs (links to host files, names that climb out,
    files the build never asked for, a result naming a host file) fails its own build; no
    host file is read."""
    result = b'{"ok": true, "data_files": ["/etc/passwd"]}'
    members = {
        "link": [link("csr.json", str(host_secret))],
        "escape": [regular("../../etc/passwd", b"root")],
        "stranger": [regular("sitecustomize.py", b"pass")],
        "data-file": [
            regular("result.json", result),
            regular("lab_soc.v", b""),
            regular("csr.json", b"{}"),
        ],
    }[case]
    bundle = hostile_bundle(members)
    log = Log()
    with pytest.raises(DesignError) as failed:
        sim.build(Design(f"bundle_{case}.py", design_sending(bundle).encode()), log)
    assert str(failed.value) == expected
    assert SECRET not in log.text()


@pytest.mark.usefixtures("sandbox")
def test_an_atexit_hook_changes_nothing_the_worker_took(sim: SimBackend, host_secret: Path) -> None:
    """A design whose exit hook turns every output into a link to a host file after the
    elaboration wrote them: the build uses what was handed back, and runs."""
    source = (REPO / "docs" / "examples" / "accumulator.py").read_text() + (
        "\nimport atexit, os, pathlib\n"
        "def swap():\n"
        "    for path in pathlib.Path('out').rglob('*'):\n"
        "        if path.is_file():\n"
        "            path.unlink()\n"
        f"            os.symlink({str(host_secret)!r}, path)\n"
        "atexit.register(swap)\n"
    )
    built = sim.build(Design("swapper.py", source.encode()), Log())
    folder = Path(built.details["folder"])
    for path in folder.rglob("*"):
        assert not path.is_symlink(), path
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()
            assert path.stat().st_uid == os.geteuid() and not path.stat().st_mode & 0o222
    sim.program(1, built, Log())
    reply = sim.transact(1, Transaction(Op.READ, USER + 16, length=1))
    assert reply.ok and reply.data == [DESIGN_ID]


# Bounds on an elaboration ------------------------------------------------------------------------


@pytest.mark.usefixtures("sandbox")
def test_forked_children_share_the_elaborations_memory(sim: SimBackend, cgroups: Cgroups) -> None:
    """Three children, each under the per-process limit, together past the elaboration's
    bound: one is killed, and the build fails naming that bound."""
    each = ((ELABORATION_TREE.memory or 0) // 2) + (64 << 20)
    source = (
        "import os, time\n"
        "kids = []\n"
        "for _ in range(3):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        f"        b = bytearray({each})\n"
        "        time.sleep(5)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "codes = [os.waitpid(pid, 0)[1] for pid in kids]\n"
        "raise RuntimeError(f'children ended with {codes}')\n"
    )
    log = Log()
    with pytest.raises(DesignError) as failed:
        sim.build(Design("hogs.py", source.encode()), log)
    error = str(failed.value)
    assert error.startswith("hogs.py:11: RuntimeError: children ended with"), error
    assert error.endswith(
        f"it reached its memory limit ({(ELABORATION_TREE.memory or 0) >> 30} GiB for all its "
        "processes together)"
    ), error


@pytest.mark.usefixtures("sandbox")
def test_an_elaboration_writes_no_more_than_its_scratch_folder_holds(sim: SimBackend) -> None:
    """A design filling its scratch folder gets ENOSPC there; the host's disk is untouched."""
    source = (
        "chunk = b'x' * (1 << 20)\n"
        "for n in range(16):\n"
        "    with open(f'filler{n}', 'wb') as f:\n"
        "        for _ in range(32):\n"
        "            f.write(chunk)\n"
    )
    with pytest.raises(DesignError) as failed:
        sim.build(Design("filler.py", source.encode()), Log())
    assert str(failed.value) == (
        "filler.py:5: OSError: [Errno 28] No space left on device; its scratch folder "
        f"holds {ELABORATION_SCRATCH >> 20} MiB"
    )


# The base bitstream and the models ---------------------------------------------------------------


def test_built_models_belong_to_the_worker_and_are_read_only(sim: SimBackend) -> None:
    """What a build step wrote is handed back to the worker's user, read-only, without
    links, before a simulator runs it."""
    source = (REPO / "docs" / "examples" / "accumulator.v").read_bytes()
    built = sim.build(Design("accumulator.v", source), Log())
    for path in Path(built.details["folder"]).rglob("*"):
        info = path.lstat()
        assert not path.is_symlink() and info.st_uid == os.geteuid(), path
        if path.is_file():
            assert not info.st_mode & 0o222, path
