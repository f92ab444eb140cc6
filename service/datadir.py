"""The lab's data folders (``FPGALAB_DATA_DIR``, the private Redis's): open to the
lab's user alone, as they hold every tenant's designs, builds and Redis's files."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

log = logging.getLogger("fpgalab")

#: Group and other permission bits: none of them on a data folder.
_OTHERS = 0o077


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) mode 0700 if missing; an existing one open to
    other users is tightened to 0700, with one warning."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _OTHERS:
        path.chmod(mode & ~_OTHERS)
        log.warning(
            "%s was mode %04o, open to other users: tightened to %04o", path, mode,
            mode & ~_OTHERS,
        )  # fmt: skip
    return path
