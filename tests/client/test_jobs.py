"""Jobs through the client: waiting with the lab's ``?wait=`` (and polling a lab without
it), several transactions in one job, bus errors, and answers the client cannot read."""

from __future__ import annotations

import httpx
import pytest

import fpgalab.client as fc
from fpgalab.client import Client, Read, Write
from tests.client.conftest import DESIGN, LiveLab, client
from tests.fakes import BUS_ERROR_BASE

USER = 0x2000_0000


class Recorded(httpx.HTTPTransport):
    """Records every request it sends (a test double of nothing: the lab answers)."""

    def __init__(self) -> None:
        super().__init__(retries=0)
        self.seen: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return super().handle_request(request)

    def gets(self, job_id: str) -> list[httpx.Request]:
        return [r for r in self.seen if r.method == "GET" and r.url.path.endswith(job_id)]


class WithoutWait(Recorded):
    """A test double of a lab from before ``?wait=``: it answers ``mode`` "refuse" with
    a 422 naming the parameter, "ignore" as if it had not been asked."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "wait" in request.url.params:
            if self.mode == "refuse":
                self.seen.append(request)
                body = {"detail": {"error": "validation_error", "message": "query.wait: no"}}
                return httpx.Response(422, json=body, request=request)
            request = httpx.Request(
                request.method, request.url.copy_remove_param("wait"), headers=request.headers
            )
        return super().handle_request(request)


def test_wait_is_answered_when_the_job_ends(fake_lab: LiveLab) -> None:
    """A build of about a second is waited for with one request (the lab answers it when
    the build ends), not by polling."""
    network = Recorded()
    with client(fake_lab, transport=network) as lab:
        accepted = lab.submit(1, b"# SLEEP=1\n", filename="slow.py")
        job = lab.wait(1, accepted.job_id, timeout=20)
        assert job.ok and job.type == "build_and_program"
        [asked] = network.gets(accepted.job_id)
        assert float(asked.url.params["wait"]) == 20


@pytest.mark.parametrize("mode", ["refuse", "ignore"])
def test_a_lab_without_wait_is_polled(fake_lab: LiveLab, mode: str) -> None:
    """Against a lab that refuses ``?wait=`` (422) the client polls without it from then
    on; against one that ignores it, it pauses between looks. Either way the job is
    waited for in a bounded number of requests."""
    network = WithoutWait(mode)
    with client(fake_lab, transport=network) as lab:
        accepted = lab.submit(1, b"# SLEEP=1\n", filename="slow.py")
        assert lab.wait(1, accepted.job_id, timeout=20).ok
        asked = network.gets(accepted.job_id)
        assert 2 <= len(asked) <= 12, len(asked)
        if mode == "refuse":
            assert "wait" in asked[0].url.params
            assert all("wait" not in r.url.params for r in asked[1:])
            assert lab._protocol.waits is False


def test_transact_runs_ops_in_one_job(fake_lab: LiveLab, lab_client: Client) -> None:
    """transact sends its ops as one job: data holds every read's words in turn, results
    one entry per op."""
    with lab_client.reserve(2, DESIGN, filename="d.py") as board:
        result = board.transact(
            [Write(USER, [5, 7]), Read(USER, 2), {"op": 1, "address": USER + 8, "data": [9]},
             Read(USER + 8)]
        )  # fmt: skip
        assert result.ok and result.data == [5, 7, 9]
        assert [r.data for r in result.results] == [[], [5, 7], [], [9]]


def test_a_bus_error_stops_the_ops_and_says_which(fake_lab: LiveLab, lab_client: Client) -> None:
    """The first op that hits a bus error stops the list: JobFailed carrying the result
    (the ops run, the words read before it); without check, the result itself. A single
    read's bus error is JobFailed too."""
    with lab_client.reserve(2, DESIGN, filename="d.py") as board:
        ops = [Write(USER, [1]), Read(USER), Read(BUS_ERROR_BASE), Write(USER, [2])]
        with pytest.raises(fc.JobFailed) as failed:
            board.transact(ops)
        result = failed.value.result
        assert result is not None and not result.ok and result.data == [1]
        assert [r.ok for r in result.results] == [True, True, False]
        assert result.error and result.error.startswith("op 3 of 4: bus error")
        assert failed.value.job.error == result.error
        unchecked = board.transact(ops, check=False)
        assert not unchecked.ok and len(unchecked.results) == 3
        assert board.read(USER) == [1]  # the fourth op never ran
        with pytest.raises(fc.JobFailed, match="bus error"):
            board.read(BUS_ERROR_BASE)


def test_an_answer_the_client_cannot_read() -> None:
    """A 200 whose body is not the documented shape is UnexpectedResponse naming the
    field; one that is not JSON at all too."""
    bodies = {
        "/fpga/1": {"fpga_id": "one", "state": "idle", "health": "good"},
        "/fpga/2": {"fpga_id": 2, "state": "melted", "health": "good"},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path in bodies:
            return httpx.Response(200, json=bodies[request.url.path])
        return httpx.Response(200, text="<html>a captive portal</html>")

    with Client("http://lab", transport=httpx.MockTransport(answer)) as lab:
        with pytest.raises(fc.UnexpectedResponse, match=r"board\.fpga_id: expected an integer"):
            lab.board(1)
        with pytest.raises(fc.UnexpectedResponse, match=r"board\.state: expected one of idle"):
            lab.board(2)
        with pytest.raises(fc.UnexpectedResponse, match="not JSON"):
            lab.board(3)


def test_memory_map_names() -> None:
    """A memory map looks up regions, CSR registers and CSR blocks by name, and an unknown
    name's error lists the names there are."""
    raw = {
        "csr_bases": {"ctrl": 0, "identifier_mem": 2048},
        "csr_registers": {"ctrl_scratch": {"addr": 4, "size": 1, "type": "rw"}},
        "memories": {"user": {"base": USER, "size": 16 << 20, "type": "io"}},
        "constants": {"config_clock_frequency": 50_000_000},
    }
    memory = fc.MemoryMap.parse(raw)
    assert memory.csr("ctrl_scratch") == 4 and memory.csr("identifier_mem") == 2048
    assert memory.region("user").end == USER + (16 << 20)
    assert memory.address("user") == USER and memory.address("ctrl_scratch") == 4
    assert memory.constants["config_clock_frequency"] == 50_000_000
    with pytest.raises(KeyError, match="ctrl_scratch, identifier_mem"):
        memory.csr("ctrl_scrach")
