"""fpgalab: a hardware-in-the-loop lab for FPGA boards.

Installed, this folder is the top of the import name (``import fpgalab``): the client's
names are here too, so that ``fpgalab.Client`` is ``fpgalab.client.Client``. They are
looked up on first use, so ``import fpgalab.service`` (the lab) does not import the
client, nor the client anything of the lab. See docs/client.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fpgalab.client import *  # noqa: F403


def __getattr__(name: str) -> Any:
    client = importlib.import_module("fpgalab.client")
    if name in client.__all__:
        return getattr(client, name)
    raise AttributeError(f"module 'fpgalab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *importlib.import_module("fpgalab.client").__all__])
