"""Tenants never see each other through the API: a caller's job results, logs and the
memory map of its design are its own (and admins'); the base SoC's map is public."""

from __future__ import annotations

import httpx
import pytest

from fpgalab.service.settings import Settings
from tests.helpers import assert_error, reserve, reset_to_idle, run_job, wait_job

ALICE = {"X-API-Key": "alice-key"}
BOB = {"X-API-Key": "bob-key"}
OPS = {"X-API-Key": "ops-key"}  # admin


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Keys for alice, bob and ops (admin)."""
    return settings.model_copy(update={"api_keys": "alice=alice-key,bob=bob-key,ops=ops-key:admin"})


async def test_a_design_memory_map_is_its_owners(lab: httpx.AsyncClient) -> None:
    """The map of an idle board (the base SoC) is readable by every caller; once alice's
    design is on it, only alice and an admin read it (bob: 403 not_session_owner); after
    the reset it is the base SoC's again, public again."""
    base = await lab.get("/fpga/2/memory-map", headers=BOB)
    assert base.status_code == 200 and base.json()["image"] == "base"

    await reserve(lab, 2, headers=ALICE)
    mine = await lab.get("/fpga/2/memory-map", headers=ALICE)
    assert mine.status_code == 200 and mine.json()["image"] != "base"
    assert_error(await lab.get("/fpga/2/memory-map", headers=BOB), 403, "not_session_owner")
    assert (await lab.get("/fpga/2/memory-map", headers=OPS)).json() == mine.json()

    await reset_to_idle(lab, 2, headers=ALICE)
    assert (await lab.get("/fpga/2/memory-map", headers=BOB)).json()["image"] == "base"


async def test_results_and_logs_are_the_callers(lab: httpx.AsyncClient) -> None:
    """Another caller's job result and logs are 403 not_session_owner; an admin reads them;
    the job's status stays visible to all."""
    build = await reserve(lab, 3, headers=ALICE)
    await run_job(lab, 3, {"op": 1, "address": 0, "data": [0xC0FFEE]}, headers=ALICE)
    r = await lab.post("/fpga/3/run", json={"op": 2, "address": 0}, headers=ALICE)
    read = r.json()["job_id"]
    await wait_job(lab, 3, read, headers=ALICE)

    for path in (f"/fpga/3/jobs/{read}/result", f"/fpga/3/jobs/{build['job_id']}/logs"):
        assert_error(await lab.get(path, headers=BOB), 403, "not_session_owner")
        assert (await lab.get(path, headers=OPS)).status_code == 200
    assert (await lab.get(f"/fpga/3/jobs/{read}/result", headers=ALICE)).json()["data"] == [
        0xC0FFEE
    ]
    assert (await lab.get(f"/fpga/3/jobs/{read}", headers=BOB)).json()["owner"] == "alice"
