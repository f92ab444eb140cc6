"""The ``fpgalab`` command's client commands (docs/cli.md): a typer app, one module per
group of commands, each registering its commands on ``app``."""

from fpgalab.client.commands import boards, bus, jobs  # noqa: F401  (they register commands)
from fpgalab.client.commands._app import Outcome, app

__all__ = ["Outcome", "app"]
