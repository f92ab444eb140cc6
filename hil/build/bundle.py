"""What a sandboxed step hands back to the worker: a tar stream written to an inherited
pipe, read by the worker as hostile input — regular files only, names from an
allow-list, bounded in number and size — and never a path it would open.

The step writes its files into its private scratch folder (a tmpfs inside the sandbox
that the worker never sees) and ends with ``send``; whatever else the step's code does
(a design's ``atexit`` hook rewriting a file, turning it into a link) happens where
nothing of the worker looks. The worker gets bytes: ``read`` checks them, and
``write_into`` puts them into a folder only the worker can write.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

from fpgalab.hil.procs import RESULT_FD_VARIABLE

__all__ = [
    "RESULT_FD_VARIABLE",
    "BundleError",
    "open_file",
    "read",
    "read_file",
    "send",
    "write_into",
]

#: One part of a name: what LiteX and our steps write (no leading dot, no separators).
NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
MAX_FILES = 256
MAX_DEPTH = 2


class BundleError(Exception):
    """What a step handed back is not acceptable; the message (one line) says why."""


def check_name(name: str) -> str:
    """``name`` if it is a relative path of at most ``MAX_DEPTH`` plain parts; raises
    BundleError otherwise (``..``, absolute, hidden, odd characters)."""
    parts = name.split("/")
    if not 0 < len(parts) <= MAX_DEPTH or not all(NAME_PART.fullmatch(p) for p in parts):
        raise BundleError(f"a file named {name[:80]!r}")
    return name


# The step's side ---------------------------------------------------------------------------------


def send(folder: Path, names: Iterable[str], extra: Mapping[str, bytes] | None = None) -> None:
    """In the step: write ``names`` (relative to ``folder``), and the files of ``extra``
    from memory (whatever the step's disk holds, or fails to), to the result pipe as a tar
    stream. Without a result pipe (a step run by hand) nothing is sent."""
    fd = os.environ.get(RESULT_FD_VARIABLE)
    if fd is None:
        return
    with os.fdopen(int(fd), "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as tar:
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(check_name(name))
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name in names:
            tar.add(folder / check_name(name), arcname=name, recursive=False)


# The worker's side -------------------------------------------------------------------------------


def read(
    data: bytes, allowed: Callable[[str], bool], max_files: int = MAX_FILES
) -> dict[str, bytes]:
    """The files of a tar stream ``data`` (already bounded in size by its reader), by
    name. Raises BundleError at anything but a regular file under an allowed name."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for member in tar:
                name = check_name(member.name)
                if not member.isreg():
                    raise BundleError(f"{name!r}, which is not a regular file")
                if not allowed(name):
                    raise BundleError(f"a file it has no business writing: {name!r}")
                if name in files:
                    raise BundleError(f"{name!r} twice")
                if len(files) >= max_files:
                    raise BundleError(f"more than {max_files} files")
                extracted = tar.extractfile(member)
                files[name] = extracted.read() if extracted is not None else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"a damaged tar stream ({exc})") from None
    return files


def write_into(folder: Path, files: Mapping[str, bytes], mode: int = 0o644) -> None:
    """Write ``files`` into ``folder``, a folder the worker made and nothing else writes:
    each created anew (``O_EXCL``, never through a link)."""
    for name, content in files.items():
        path = folder / check_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(content)


def open_file(folder: Path, name: str) -> BinaryIO:
    """``folder/name`` open for reading, ``folder`` being one a sandbox could write:
    opened without following a link at any step below ``folder``, and a regular file.
    Raises BundleError (OSError for a file that is simply missing)."""
    parts = check_name(name).split("/")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(folder, flags | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        # O_NONBLOCK: a FIFO planted under the name must not hang the worker
        file_fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise BundleError(f"{name!r} is, or lies under, a link") from None
        raise
    finally:
        os.close(fd)
    f = os.fdopen(file_fd, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise BundleError(f"{name!r} is not a regular file")
    return f


def read_file(folder: Path, name: str, limit: int) -> bytes:
    """The bytes of ``folder/name`` as ``open_file`` opens it, at most ``limit`` of them
    (BundleError if there are more)."""
    with open_file(folder, name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{name!r} is larger than {limit} bytes")
    return data
