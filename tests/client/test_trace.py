"""Traced runs from the user's side: ``board.read(..., trace=True)`` and friends in the
Python client, and ``fpgalab read|write|run --trace -o FILE`` on the command line, against
a live lab of the FakeBackend test double (whose waveform is its own small VCD: the
analyzer's path is tested on simulated boards and twins)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import fpgalab.client as fc
from fpgalab.client import Client, Read, Write
from tests.client.conftest import DESIGN, LiveLab, async_client
from tests.client.test_cli import design, fpgalab

USER = 0x2000_0000


def test_a_traced_read_returns_its_waveform(
    fake_lab: LiveLab, lab_client: Client, tmp_path: Path
) -> None:
    """``read(trace=True)``: the words as untraced, the VCD, what was captured; a path
    writes the VCD there too; ``write`` and ``transact`` the same; ``signals`` chooses."""
    with lab_client.reserve(2, DESIGN, filename="d.py") as board:
        wrote = board.write(USER, [7, 9], trace=True)
        assert wrote.data == [] and wrote.waveform.startswith(b"$timescale")
        got = board.read(USER, 2, trace=True)
        assert got.data == [7, 9] == board.read(USER, 2)
        assert got.info.ok and got.info.signals[:3] == ("cyc", "stb", "we")
        assert got.info.bytes == len(got.waveform) and got.path is None
        assert got.waveform == lab_client.waveform(2, got.job_id)

        path = tmp_path / "run.vcd"
        saved = board.read(USER, trace=path, signals=["dat_r"])
        assert saved.path == path and path.read_bytes() == saved.waveform
        assert saved.info.signals == ("dat_r",) and b" adr " not in saved.waveform

        result = board.transact([Write(USER, [1]), Read(USER)], trace=True)
        assert result.data == [1] and result.trace is not None and result.trace.samples == 6
        assert result.waveform is not None and result.job_id is not None


def test_no_waveform_is_an_error_that_keeps_the_data(fake_lab: LiveLab, lab_client: Client) -> None:
    """A trace the lab could not make raises ``TraceUnavailable`` with the reason and the
    run's result (its data as untraced); the waveform route says the same."""
    with lab_client.reserve(3, DESIGN, filename="d.py") as board:
        board.write(USER, 5)
        with pytest.raises(
            fc.TraceUnavailable, match=r"no waveform: unknown signal.*'counter'"
        ) as e:
            board.read(USER, trace=True, signals=["counter"])
        assert e.value.result.data == [5] and e.value.reason.startswith("unknown signal(s)")
        job_id = board.runs[-1]
        with pytest.raises(fc.WaveformNotFound, match="'counter'"):
            lab_client.waveform(3, job_id)
        untraced = board.runs[0]
        with pytest.raises(fc.WaveformNotFound, match="did not ask for a trace"):
            lab_client.waveform(3, untraced)


def test_the_async_client_traces_too(fake_lab: LiveLab, tmp_path: Path) -> None:
    async def go() -> None:
        async with async_client(fake_lab) as lab, lab.reserve(4, DESIGN, filename="d.py") as board:
            await board.write(USER, 3)
            got = await board.read(USER, trace=tmp_path / "a.vcd")
            assert got.data == [3] and (tmp_path / "a.vcd").read_bytes() == got.waveform
            assert await lab.waveform(4, got.job_id) == got.waveform

    asyncio.run(go())


def test_the_command_line_saves_the_waveform(fake_lab: LiveLab, tmp_path: Path) -> None:
    """``--trace -o FILE`` saves the VCD and says so on stderr (stdout: the data as
    untraced); without ``-o`` it goes to fpga<N>-<job>.vcd; ``--json`` reports it; a trace
    the lab could not make prints the data, then the reason, and exits 1; ``-o`` without
    ``--trace`` is a usage error."""
    done = fpgalab(fake_lab, "submit", design(tmp_path, DESIGN), "--board", "5", "--wait")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "run.vcd"
    ran = fpgalab(fake_lab, "run", "-b", "5", "write", "user", "9,", "read", "user",
                  "--trace", "-o", str(out))  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "  0x20000000: 0x00000009"
    assert out.read_bytes().startswith(b"$timescale")
    assert f"waveform: 6 samples, {out.stat().st_size:,} bytes → {out}" in ran.stderr

    doc = json.loads(fpgalab(fake_lab, "--json", "read", "-b", "5", "user", "--trace",
                             "--signals", "dat_r", "-o", str(out)).stdout)  # fmt: skip
    assert doc["data"] == [9] and doc["trace"]["ok"] and doc["trace"]["signals"] == ["dat_r"]
    assert doc["trace"]["path"] == str(out) and doc["trace"]["bytes"] == out.stat().st_size

    here = fpgalab(fake_lab, "read", "-b", "5", "user", "--trace", cwd=str(tmp_path))
    assert here.returncode == 0, here.stderr
    saved = list(tmp_path.glob("fpga5-*.vcd"))
    assert len(saved) == 1 and saved[0].name in here.stderr

    bad = fpgalab(fake_lab, "read", "-b", "5", "user", "--trace", "--signals", "counter")
    assert bad.returncode == 1 and bad.stdout.strip() == "0x20000000: 0x00000009"
    assert "fpgalab: no waveform: unknown signal(s) 'counter'" in bad.stderr

    wrong = fpgalab(fake_lab, "read", "-b", "5", "user", "-o", str(out))
    assert wrong.returncode == 2 and "-o/--output and --signals go with --trace" in wrong.stderr
