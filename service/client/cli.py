"""The ``fpgalab`` command: the lab's own commands (``serve``, ``api``, ``worker``,
``twin``) go to ``fpgalab.service.cli``; everything else is a client command. The lab is
imported only for its own commands, so a client command starts fast and works where only
the client is installed (``pip install fpgalab``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: The commands of the lab itself (they need the "lab" extra).
LAB_COMMANDS = frozenset({"serve", "api", "worker", "twin"})


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in LAB_COMMANDS:
        try:
            from fpgalab.service.cli import main as lab_main
        except ImportError as exc:
            print(f"fpgalab {args[0]}: the lab is not installed here ({exc.name} is missing): "
                  "pip install 'fpgalab[lab]'", file=sys.stderr)  # fmt: skip
            return 2
        return lab_main(args)
    from fpgalab.client.commands import app

    return int(app(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
