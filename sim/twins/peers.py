"""Who is at the other end of a loopback TCP connection: a twin's ports (its UART, its
JTAG over XVC) are its tenant's board, and only the lab — processes of the lab's own
user, or root — may open them. TCP has no credentials to ask for (a unix socket would,
but openFPGALoader's XVC client and pyserial's ``socket://`` speak TCP only): the
kernel's socket table (``/proc/net/tcp``) names the user owning each end.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

__all__ = ["lab_peer", "peer_uid"]


def _hex_address(address: tuple[str, int] | tuple[str, int, int, int], family: int) -> str:
    """An address as /proc/net/tcp(6) writes it: the IP in host byte order, then the port."""
    ip = ipaddress.ip_address(address[0]).packed
    if family == socket.AF_INET:
        text = ip[::-1].hex()
    else:  # four 32-bit words, each in host (little-endian) order
        text = "".join(ip[i : i + 4][::-1].hex() for i in range(0, 16, 4))
    return f"{text.upper()}:{address[1]:04X}"


def peer_uid(conn: socket.socket) -> int | None:
    """The uid owning the other end of ``conn``, a TCP connection on this host (and in
    this network namespace); None if the table does not show it (another host)."""
    family = conn.family
    table = Path("/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6")
    theirs = _hex_address(conn.getpeername(), family)
    ours = _hex_address(conn.getsockname(), family)
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # sl local rem st queues timer retransmits uid ...
        if len(fields) > 7 and fields[1] == theirs and fields[2] == ours:
            return int(fields[7])
    return None


def lab_peer(conn: socket.socket) -> bool:
    """The other end of ``conn`` belongs to the lab's user or to root."""
    return peer_uid(conn) in (os.geteuid(), 0)
