"""A board changes hands clean: what one tenant wrote is gone for the next.

Release, expiry and reset all end in the same reset job (the reason differs); the
expiry path itself is tested at the service level in tests/service/test_sessions.py. Here the
board is real or as good as (a simulator, or a twin reflashed over XVC), and the
second tenant reads the SRAM and the user slot that the first one filled.
"""

from __future__ import annotations

import random

import httpx
import pytest

from fpgalab.service.settings import Settings
from tests.e2e.conftest import StartLab
from tests.e2e.test_api import SRAM, USER, Read, read, reserve_design, reset, write
from tests.helpers import assert_error

pytestmark = pytest.mark.sim

ALICE = "alice-key"
BOB = "bob-key"
#: Words of SRAM the first tenant fills (spread over the whole SRAM, see below).
WORDS = 256


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": f"alice={ALICE},bob={BOB}"})


def as_caller(client: httpx.AsyncClient, key: str) -> httpx.AsyncClient:
    client.headers["X-API-Key"] = key
    return client


@pytest.mark.parametrize("how", ["release", "reset"])
async def test_the_next_tenant_reads_nothing_the_last_one_wrote(
    client: httpx.AsyncClient, start_lab: StartLab, example: Read, how: str
) -> None:
    """Alice fills SRAM (its first and last words and a block in the middle) and the
    design's registers; after her session ends, Bob loads the same design on the same
    board and reads zeros everywhere she wrote. Meanwhile he cannot touch her board."""
    as_caller(client, ALICE)  # start_lab polls the boards with this client
    lab = await start_lab([6])
    design = example("accumulator.py")
    base = await lab.get("/fpga/6/memory-map")
    assert base.status_code == 200, base.text
    sram_words = base.json()["memories"]["sram"]["size"] // 4
    places = [0, sram_words // 2, sram_words - WORDS]

    alice = as_caller(lab, ALICE)
    await reserve_design(alice, 6, "accumulator.py", design)
    secrets = {at: [random.getrandbits(32) | 1 for _ in range(WORDS)] for at in places}
    for at, words in secrets.items():
        await write(alice, 6, SRAM + 4 * at, words)
    await write(alice, 6, USER, [0xA11CE, 0x5EC2E7])  # A, B
    await write(alice, 6, USER + 12, [0xBAD5EED])  # the accumulator
    assert await read(alice, 6, USER, 4) == [0xA11CE, 0x5EC2E7, 0xA11CE + 0x5EC2E7, 0xBAD5EED]
    for at, words in secrets.items():
        assert await read(alice, 6, SRAM + 4 * at, WORDS) == words

    bob = as_caller(lab, BOB)
    assert_error(
        await bob.post("/fpga/6/run", json={"op": 2, "address": SRAM}), 403, "not_session_owner"
    )
    await reset(as_caller(lab, ALICE), 6, how)

    bob = as_caller(lab, BOB)
    await reserve_design(bob, 6, "accumulator.py", design)
    for at in places:
        assert await read(bob, 6, SRAM + 4 * at, WORDS) == [0] * WORDS, f"SRAM word {at}"
    assert await read(bob, 6, USER, 4) == [0, 0, 0, 0]


async def test_a_cache_hit_on_another_callers_build_is_not_told(
    client: httpx.AsyncClient, start_lab: StartLab, example: Read
) -> None:
    """Bob submits the design Alice built: he gets it from the build cache (the lab saves
    the build) but his log reads like any build's, while Alice, submitting it again, is
    told it was reused."""
    as_caller(client, ALICE)
    lab = await start_lab([5])
    source = example("accumulator.py") + f"# {random.getrandbits(64):x}\n".encode()
    alice = await reserve_design(as_caller(lab, ALICE), 5, "mine.py", source)
    await reset(lab, 5, "release")

    bob = await reserve_design(as_caller(lab, BOB), 5, "theirs.py", source)
    text = (await lab.get(f"/fpga/5/jobs/{bob['job_id']}/logs")).text
    assert "fpgalab: build done in" in text, text
    for telling in ("cache hit", "from the lab's cache", "reused", "another", "meanwhile"):
        assert telling not in text.lower(), text
    await reset(lab, 5, "release")

    again = await reserve_design(as_caller(lab, ALICE), 5, "mine.py", source)
    text = (await lab.get(f"/fpga/5/jobs/{again['job_id']}/logs")).text
    assert "build reused from the lab's cache (you built this design before)" in text, text
    assert alice["job_id"] != again["job_id"]
