"""The dashboard's login: a short-lived signed token in an HttpOnly cookie, so that a
browser (whose ``EventSource`` cannot send ``X-API-Key``) reads the lab without its key
ever being stored by the page or put in a URL.

``POST /login`` (with ``X-API-Key``) answers with the cookie; the token names the caller
and its expiry, signed with HMAC-SHA256 under a key made from the lab's secret
(``FPGALAB_LOGIN_SECRET``) and the digest of the caller's API key: never the key itself.
A token is good until it expires, or until that caller's key is changed or removed.
The cookie is ``SameSite=Strict``, and it is taken for reads only (GET: ``/events``, the
views): a call that changes something still needs ``X-API-Key`` — no cross-site request
can act with it, and each mutating call is still rate-limited and audited by its key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from fpgalab.service.auth import Caller, KeyRing

#: The cookie's name.
COOKIE = "fpgalab_login"


async def lab_secret(app: Any) -> str:
    """The secret that signs login cookies: ``FPGALAB_LOGIN_SECRET``, or else the lab's
    own random one from Redis (read once per API process)."""
    configured: str = app.state.settings.login_secret
    if configured:
        return configured
    cached: str | None = getattr(app.state, "login_secret", None)
    if cached is None:
        cached = app.state.login_secret = await app.state.store.login_secret()
    return cached


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, key_digest: bytes, payload: str) -> str:
    signing = hmac.new(key_digest, b"fpgalab-login:" + secret.encode(), hashlib.sha256).digest()
    return _b64(hmac.new(signing, payload.encode(), hashlib.sha256).digest())


def issue(keyring: KeyRing, caller: Caller, secret: str, ttl: int) -> tuple[str, int]:
    """A token for ``caller`` (who just showed its key) and when it expires (Unix time)."""
    expires = int(time.time()) + ttl
    payload = f"{_b64(caller.name.encode())}.{expires}"
    digest = keyring.digest_of(caller.name) or b""
    return f"{payload}.{_mac(secret, digest, payload)}", expires


def verify(keyring: KeyRing, token: str | None, secret: str) -> Caller | None:
    """The caller a token names, if it is well signed, unexpired, and that caller's key
    is still the one it was signed under; else None."""
    if not token or len(token) > 512:
        return None
    try:
        name_b64, expires_text, mac = token.split(".")
        name = _unb64(name_b64).decode()
        expires = int(expires_text)
    except ValueError:
        return None
    digest = keyring.digest_of(name)
    if digest is None or expires < time.time():
        return None
    if not hmac.compare_digest(mac, _mac(secret, digest, f"{name_b64}.{expires_text}")):
        return None
    return keyring.caller_named(name)
