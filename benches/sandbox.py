"""What the build sandbox costs, each figure beside the same work unsandboxed
(``FPGALAB_SANDBOX=none``) in the same run, with the ratio.

    .venv/bin/python benches/sandbox.py [--steps 30] [--builds 5]

- one step: ``true`` and ``python -c pass`` run through ``hil.procs.run``, the way
  every build step is run, sandboxed and not (median of ``--steps``, interleaved);
- one build: a simulated build of ``accumulator.v`` (elaboration + Verilator compile,
  warm compiler cache, a new build key each time so nothing comes from the build
  cache), sandboxed and not (median of ``--builds``, interleaved);
- one reset: a simulated board's simulator stopped and started with the base SoC, in
  its sandbox (a private folder, a cgroup where there is one) and not (median of
  ``--resets``, interleaved).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from fpgalab.backends.sim import SimBackend  # noqa: E402
from fpgalab.hil import procs  # noqa: E402
from fpgalab.hil.build.sandbox import Confinement, Sandbox  # noqa: E402
from fpgalab.sim.verilator import Builder  # noqa: E402

SOURCE = (REPO / "docs" / "examples" / "accumulator.v").read_bytes()


def quiet(line: str) -> None:
    pass


def step(jail: Sandbox, cmd: list[str], folder: Path) -> Callable[[], None]:
    def once() -> None:
        argv = jail.command(cmd, folder, Confinement(writable=(folder,)))
        done = procs.run(argv, cwd=folder, env=procs.clean_env({}), timeout=30, log=quiet)
        assert done.returncode == 0, done

    return once


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def side_by_side(name: str, runs: int, on: Callable[[], None], off: Callable[[], None]) -> None:
    """Interleaved, so that a noisy moment hits both; medians, and their ratio."""
    with_, without = [], []
    for _ in range(runs):
        with_.append(timed(on))
        without.append(timed(off))
    a, b = statistics.median(with_), statistics.median(without)
    extra = (a - b) * 1000
    print(f"{name:<34} {a * 1000:10.1f} ms {b * 1000:10.1f} ms   x{a / b:.2f}   ({extra:+.1f} ms)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--builds", type=int, default=5)
    parser.add_argument("--resets", type=int, default=10)
    args = parser.parse_args()

    jail, bare = Sandbox("bwrap"), Sandbox("none")
    jail.check()
    print(f"{'':<34} {'sandboxed':>13} {'bare':>13}   ratio")
    with tempfile.TemporaryDirectory(prefix="fpgalab-sandbox-bench-") as tmp:
        root = Path(tmp)
        folder = root / "step"
        folder.mkdir()
        for name, cmd in (
            ("step: true", ["true"]),
            ("step: python -c pass", [sys.executable, "-c", "pass"]),
        ):
            side_by_side(name, args.steps, step(jail, cmd, folder), step(bare, cmd, folder))

        # Both builders share one data folder, hence one compiler cache: warm it first.
        builders = {
            mode: Builder(root / "data", sandbox=Sandbox(mode)) for mode in ("bwrap", "none")
        }
        builders["none"].base(quiet)
        count = iter(range(1_000_000))

        def build(mode: str) -> Callable[[], None]:
            def once() -> None:
                source = SOURCE + f"\n// build {next(count)}\n".encode()  # a new build key
                builders[mode].build("accumulator.v", source, quiet)

            return once

        build("none")()  # the compiler cache, warm for both
        side_by_side(
            "build: accumulator.v, warm ccache", args.builds, build("bwrap"), build("none")
        )

        # A reset: the board's simulator stopped and started anew with the base SoC, in a
        # fresh sandbox (its private folder, its cgroup) or bare (a fresh folder of ours).
        labs = {mode: SimBackend(root / "data", run_dir=root / f"boards-{mode}", sandbox=mode)
                for mode in ("bwrap", "none")}  # fmt: skip

        def reset(mode: str) -> Callable[[], None]:
            def once() -> None:
                labs[mode].reset(0, quiet)

            return once

        try:
            reset("none")()
            side_by_side("reset: simulator restarted", args.resets, reset("bwrap"), reset("none"))
        finally:
            for lab in labs.values():
                lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
