"""The content-addressed build cache that the simulated and the hardware builds share:
how a key is made, how a finished build is recognised, and the one way a build is
made (found, or built once under a lock while other builders of it wait).

A build lives in ``builds/<key>/``; its ``build.json``, written last, says it is
complete. ``builds/<key>.lock`` is held while it is built.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from fpgalab.hil.build.slots import BuildSlots

LogFn = Callable[[str], None]
T = TypeVar("T")

#: Bump to invalidate every cached build.
CACHE_VERSION = "1"


def build_key(
    source: bytes | None, filename: str | None, ours: Iterable[Path], **material: Any
) -> str:
    """The key of a build: the design's bytes and type, our own sources (files) and
    whatever else decides the result (``material``, JSON)."""
    digest = hashlib.sha256()
    for path in ours:
        digest.update(path.read_bytes())
    material.update(
        cache=CACHE_VERSION,
        design=hashlib.sha256(source).hexdigest() if source is not None else None,
        suffix=Path(filename).suffix.lower() if filename else None,
        ours=digest.hexdigest(),
    )
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def build_info(builds: Path, key: str) -> dict[str, Any] | None:
    """The ``build.json`` of the complete build ``key``, None if there is none."""
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        return None
    try:
        info = json.loads((builds / key / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def find_or_build(
    builds: Path,
    key: str,
    log: LogFn,
    lookup: Callable[[str], T | None],
    make: Callable[[Path], T],
    *,
    prefix: str,
    slots: BuildSlots | None = None,
) -> T:
    """The build ``key``: from the cache if ``lookup`` finds it, else made by ``make`` in
    ``builds/<key>`` under the key's lock (a build that fails leaves nothing behind),
    holding one of ``slots`` (the host's bound on builds at once) while it runs."""
    found = lookup(key)
    if found is not None:
        # Nothing in the log: whose build it was is not this build's business (the worker
        # tells a caller who had it before).
        return found
    builds.mkdir(parents=True, exist_ok=True)
    with file_lock(builds / f"{key}.lock", log, f"{prefix}: waiting for a build slot"):
        found = lookup(key)
        if found is not None:
            return found
        folder = builds / key
        with slots.hold(log, prefix) if slots is not None else contextlib.nullcontext():
            try:
                return make(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise


@contextlib.contextmanager
def file_lock(path: Path, log: LogFn, waiting: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if need be); if another process holds
    it, log ``waiting`` and wait for it."""
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(waiting)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
