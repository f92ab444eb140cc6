"""Who is calling: API keys (kept only as SHA-256 digests) and their roles.

``FPGALAB_API_KEYS="alice=k1,ci=k2,ops=k3:admin"`` or a keys file with one such
entry per line. With no keys at all the lab runs open: every caller is
``anonymous`` with every right, as the prototype was.

A caller without a known key is known only by its address (``client_address``): the
socket's peer, or, when that peer is a trusted reverse proxy
(``FPGALAB_TRUSTED_PROXIES``), the address that proxy put in ``X-Forwarded-For``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path

from starlette.datastructures import Headers
from starlette.types import Scope

from fpgalab.service.settings import Settings

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool = False


class KeyFileError(ValueError):
    """A keys entry that cannot be understood (names the entry, never the key)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Known keys by digest. ``open`` when none were configured."""

    def __init__(self, entries: list[tuple[str, str, bool]]) -> None:
        self._by_digest: dict[bytes, Caller] = {}
        for name, key, admin in entries:
            digest = _digest(key)
            if digest in self._by_digest:  # one key must name one caller
                other = self._by_digest[digest].name
                raise KeyFileError(f"the keys of {other!r} and {name!r} are the same")
            self._by_digest[digest] = Caller(name, admin)

    @property
    def open(self) -> bool:
        return not self._by_digest

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, key: str | None) -> Caller | None:
        if self.open:
            return Caller(ANONYMOUS, admin=True)
        if not key:
            return None
        digest = _digest(key)
        found = None
        for known, caller in self._by_digest.items():  # constant time per entry
            if hmac.compare_digest(known, digest):
                found = caller
        return found

    def digest_of(self, name: str) -> bytes | None:
        """The digest of ``name``'s key (what a login token is signed under), if known."""
        for digest, caller in self._by_digest.items():
            if caller.name == name:
                return digest
        return None

    def caller_named(self, name: str) -> Caller | None:
        return next((c for c in self._by_digest.values() if c.name == name), None)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries = parse_entries(settings.api_keys.split(","), "FPGALAB_API_KEYS")
        if settings.api_keys_file is not None:
            path = Path(settings.api_keys_file)
            lines = path.read_text().splitlines()
            entries += parse_entries(lines, str(path))
        return cls(entries)


def parse_entries(items: list[str], source: str) -> list[tuple[str, str, bool]]:
    """``name=key[:admin]`` items (blank items and ``#`` comments skipped)."""
    entries: list[tuple[str, str, bool]] = []
    for n, raw in enumerate(items, start=1):
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        name, sep, key = item.partition("=")
        name, key = name.strip(), key.strip()
        admin = False
        if key.endswith(":admin"):
            key, admin = key[: -len(":admin")], True
        if not sep or not name or not key:
            raise KeyFileError(f"{source}: entry {n} is not of the form name=key[:admin]")
        if any(c in name for c in " :{}"):
            raise KeyFileError(f"{source}: entry {n}: the name {name!r} has a space, ':' or brace")
        entries.append((name, key, admin))
    return entries


#: The longest address kept (a trusted proxy's header could hold anything).
_MAX_ADDRESS = 64


def _trusted(address: str, proxies: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(scope: Scope, proxies: Sequence[IPv4Network | IPv6Network]) -> str:
    """Who sent this request, as far as the lab can tell: the socket's peer; if that peer
    is a trusted proxy, the right-most ``X-Forwarded-For`` hop that is not one (each proxy
    appends the peer it saw, so hops left of it are the client's to make up)."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not _trusted(peer, proxies):
        return peer[:_MAX_ADDRESS]
    hops = [
        hop.strip()
        for value in Headers(scope=scope).getlist("x-forwarded-for")
        for hop in value.split(",")
    ]
    for hop in reversed(hops):
        if hop and not _trusted(hop, proxies):
            return hop[:_MAX_ADDRESS]
    return peer[:_MAX_ADDRESS]


def limit_address(address: str) -> str:
    """The address whose bucket a call takes from: an IPv6 client's /64 (one host's or one
    site's subnet: every address in it is the same client's), else the address."""
    try:
        ip = ip_address(address)
    except ValueError:
        return address
    if not isinstance(ip, IPv6Address):
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(IPv6Network((ip, 64), strict=False))
