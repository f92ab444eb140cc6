"""A private ``redis-server`` child for ``fpgalab serve`` when no Redis URL is given."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from fpgalab.service.datadir import private_dir
from fpgalab.service.procs import child_dies_with_parent

#: The longest path a unix socket may have (``sun_path``, less its NUL).
_MAX_SOCKET_PATH = 107


class RedisStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """redis-server on a unix socket in ``data_dir`` (mode 0700), no TCP port, data (AOF
    on) and log in the same folder, mode 0600; stopped with us. Only the lab's user (and
    root) can reach it or read its files. It holds at most ``maxmemory`` (Redis units,
    ``FPGALAB_REDIS_MAXMEMORY``) and then refuses writes (``noeviction``): evicting keys
    would silently drop lab state (a session, a queued job, an audit record)."""

    def __init__(self, data_dir: Path, maxmemory: str = "0") -> None:
        self.data_dir = data_dir
        self.maxmemory = maxmemory
        # absolute: the URL is handed to processes that may not share our working folder
        self.socket = (data_dir / "redis.sock").absolute()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{quote(str(self.socket))}?db=0"

    def start(self, timeout: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RedisStartError(
                "redis-server is not installed (apt-get install redis-server), "
                "or pass --redis-url to use a running Redis"
            )
        if len(os.fsencode(self.socket)) > _MAX_SOCKET_PATH:
            raise RedisStartError(
                f"{self.socket}: too long for a unix socket ({_MAX_SOCKET_PATH} bytes at "
                "most); choose a shorter FPGALAB_DATA_DIR"
            )
        private_dir(self.data_dir)
        logfile = self.data_dir / "redis.log"
        args = [
            exe, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.data_dir), "--appendonly", "yes", "--save", "",
            "--daemonize", "no", "--protected-mode", "yes", "--logfile", str(logfile),
            "--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        # umask 077: the AOF, its folder and the log are the lab user's alone; the server
        # needs nothing of the lab's settings (API keys among them) in its environment
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FPGALAB_")}
        self.proc = subprocess.Popen(args, env=env, umask=0o077, preexec_fn=child_dies_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RedisStartError(f"redis-server exited ({code}); see {logfile}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(0.2)
                    s.connect(str(self.socket))
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RedisStartError(f"redis-server did not answer on {self.socket} within {timeout} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
