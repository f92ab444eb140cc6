"""The examples of docs/client.md run as written, against a live lab: the session on the
simulated lab (printing what its comments say), the asyncio one on the test double."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.client.conftest import LiveLab
from tests.helpers import REPO

DOC = REPO / "docs" / "client.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def run(code: str, lab: LiveLab, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FPGALAB_URL": lab.url}
    env.pop("FPGALAB_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=180, check=False,
    )  # fmt: skip


def test_the_session_example_prints_what_it_says(sim_lab: LiveLab) -> None:
    [session] = [b for b in blocks() if "with lab.reserve(3" in b]
    done = run(session, sim_lab)
    assert done.returncode == 0, done.stderr
    said = re.findall(r"print\(.*?#\s*(\[[^\]]*\]|0x[0-9a-f]+)", session)
    assert done.stdout.splitlines() == said  # what the comments say it prints


def test_the_asyncio_example_runs(fake_lab: LiveLab) -> None:
    [example] = [b for b in blocks() if "AsyncClient()" in b]
    done = run(example, fake_lab)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2]"


def test_the_trace_example_finds_the_bug(sim_lab: LiveLab, tmp_path: Path) -> None:
    """The traces example, in a folder holding counter.py as a user's would, on the
    simulated lab: it prints what its comments say and leaves run.vcd there."""
    [traced] = [b for b in blocks() if 'trace="run.vcd"' in b]
    shutil.copy(REPO / "docs" / "examples" / "counter.py", tmp_path / "counter.py")
    done = run(traced, sim_lab, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = re.findall(r"print\(.*?#\s*(.+)$", traced, re.M)
    assert done.stdout.splitlines() == said
    assert (tmp_path / "run.vcd").read_bytes().startswith(b"$timescale")
