"""The systemd units of docs/examples/systemd, as an administrator installs them: each
checked by ``systemd-analyze verify`` (no warning either), its command line one the
``fpgalab`` command takes."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fpgalab.service.cli import build_parser
from tests.helpers import REPO

UNITS = sorted((REPO / "docs" / "examples" / "systemd").glob("*.service"))
INSTALLED = "/opt/fpgalab/bin/fpgalab"


def test_there_is_a_unit_for_the_api_and_one_for_a_worker() -> None:
    assert [u.name for u in UNITS] == ["fpgalab-api.service", "fpgalab-worker.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_a_unit_verifies_and_runs_a_command_fpgalab_takes(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            raise RuntimeError("systemd-analyze is missing (make system installs systemd)")
        pytest.skip("systemd-analyze is not installed")
    fpgalab = shutil.which("fpgalab") or str(Path(sys.executable).parent / "fpgalab")
    text = unit.read_text()
    assert f"ExecStart={INSTALLED} " in text
    (tmp_path / unit.name).write_text(text.replace(INSTALLED, fpgalab))
    done = subprocess.run([analyze, "verify", unit.name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    command = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(command.removeprefix("ExecStart="))[1:]
    args = build_parser().parse_args(argv)  # exits (fails the test) on a flag it lacks
    assert args.command == unit.stem.removeprefix("fpgalab-")
