"""A traced run through the REST API on the lab under test (the simulated lab, or twins
with ``--backend hardware``: the same analyzer gateware, read back through UARTBone): a
design with a known bug (docs/examples/counter.py counts each write twice) is traced, and
the VCD, read with a real parser, shows each bus cycle of the run, the wrong word at the
read, and the probe stepping by two during a write. The same expectations hold on both
labs, so both traces show the same transaction sequence."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import StartLab
from tests.e2e.test_api import RUN_TIMEOUT, USER, Read, reserve_design
from tests.helpers import bus_transactions, vcd_samples

pytestmark = pytest.mark.sim

#: Clear the count, count three writes, read the count back.
OPS = [
    {"op": 1, "address": USER + 8, "data": [0]},
    {"op": 1, "address": USER, "data": [0x11]},
    {"op": 1, "address": USER, "data": [0x22]},
    {"op": 1, "address": USER, "data": [0x33]},
    {"op": 2, "address": USER + 4},
]
#: What the analyzer must see: (op, word, data), in order; the read's 6 is the bug.
SEEN = [("write", 2, 0), ("write", 0, 0x11), ("write", 0, 0x22), ("write", 0, 0x33), ("read", 1, 6)]


@pytest.mark.timeout(600)  # on twins: a bitstream of the design, and of the base SoC if cold
async def test_a_trace_shows_the_bug(start_lab: StartLab, example: Read) -> None:
    """The traced run's result is the untraced one's (the bug's 6 included) plus what was
    captured; the VCD has the bus and the probe, each access of the run in order with its
    word and data, times that grow, and ``count`` going 0 → 2 within the first counted
    write; unknown signals are an error beside the same data."""
    lab = await start_lab([1])
    await reserve_design(lab, 1, "counter.py", example("counter.py"))

    async def run(body: dict[str, object]) -> tuple[str, dict[str, object]]:
        r = await lab.post("/fpga/1/run", json=body, params={"wait": RUN_TIMEOUT})
        assert r.status_code == 202 and r.json()["status"] == "complete", r.text
        return r.json()["job_id"], r.json()["result"]

    _, plain = await run({"ops": OPS})
    job_id, traced = await run({"ops": OPS, "trace": True})
    trace = traced.pop("trace")
    assert traced == plain and plain["data"] == [6]
    assert trace["ok"] is True and trace["format"] == "vcd" and trace["full"] is False
    assert {"cyc", "we", "adr", "dat_w", "dat_r", "ack", "count"} <= set(trace["signals"])

    r = await lab.get(f"/fpga/1/jobs/{job_id}/waveform")
    assert r.status_code == 200 and r.headers["x-waveform-format"] == "vcd"
    names, samples = vcd_samples(r.content)
    assert "bus.dat_r" in names and "design.count" in names
    seen = bus_transactions(samples)
    assert [(op, word, data) for _, op, word, data, _ in seen] == SEEN
    times = [t for t, *_ in seen]
    assert times == sorted(times) and len(set(times)) == len(times)

    # the first counted write: from the sample its ack is in, back to the last idle bus
    first = times[1]
    before = [v["design.count"] for t, v in samples if t < first and not v["bus.cyc"]]
    during = [v["design.count"] for t, v in samples if t >= first and v["bus.cyc"]]
    assert before[-1] == 0 and during[0] in (1, 2)
    after = next(v["design.count"] for t, v in samples if t > first and not v["bus.cyc"])
    assert after == 2  # two counted for one write: the bug, seen

    chosen = {"ops": OPS, "trace": True, "signals": ["dat_r", "count"]}
    job_id, some = await run(chosen)
    assert some["trace"]["signals"] == ["dat_r", "count"] and some["data"] == [6]
    names, _ = vcd_samples((await lab.get(f"/fpga/1/jobs/{job_id}/waveform")).content)
    assert sorted(names) == ["bus.dat_r", "design.count"]

    job_id, unknown = await run({"ops": OPS, "trace": True, "signals": ["count", "nosuch"]})
    assert unknown["data"] == [6] and unknown["trace"]["ok"] is False
    assert "unknown signal(s) 'nosuch'" in unknown["trace"]["error"]
    r = await lab.get(f"/fpga/1/jobs/{job_id}/waveform")
    assert r.status_code == 404 and "nosuch" in r.json()["detail"]["message"]
