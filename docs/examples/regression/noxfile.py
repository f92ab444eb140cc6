"""The ALU's regression suite, as CI runs it: ``nox -s regress``.

    nox -s regress                                       # a private simulated lab
    nox -s regress -- --fpgalab-url http://lab:8000      # a running lab
    nox -s regress -- --fpgalab-local-backend twins      # twins: the hardware backend
    nox -s regress -- -n 4                               # four boards at once

Against a running lab the key comes from ``FPGALAB_API_KEY``. The JUnit XML report is
``reports/regress.xml``; a private lab's log is ``.pytest_cache/d/fpgalab/lab.log``.
"""

import os

import nox

nox.options.sessions = ["regress"]


@nox.session
def regress(session: nox.Session) -> None:
    """The tests in tests/, each on a board with its design, JUnit XML in reports/."""
    args = list(session.posargs)
    remote = any(a.startswith("--fpgalab-url") for a in args) or "FPGALAB_URL" in os.environ
    # a running lab needs only the client; a private lab runs here: the lab extra
    session.install("fpgalab" if remote else "fpgalab[lab]", "pytest", "pytest-xdist")
    if not remote and "--fpgalab-local" not in args:
        args.insert(0, "--fpgalab-local")
    session.run("pytest", "--junitxml=reports/regress.xml", *args)
