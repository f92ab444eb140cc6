"""Install sizes: the client (``pip install fpgalab``, no extras) and the lab (the
``lab`` extra on top of it).

    python benches/install_size.py [--client-venv DIR]

The client: builds the wheel (``pip wheel --no-deps``, from a copy of the tree), makes a
fresh virtualenv without pip of its own, installs the wheel into it without extras from
the package index, and measures that virtualenv's site-packages with ``du``. With
``--client-venv DIR``, it measures DIR's instead (a virtualenv where fpgalab is
installed without extras).

The lab: the distributions the ``lab`` extra pulls in beyond the client's, as installed
in the environment running this script (the dev virtualenv, ``make test`` installs it):
the requirement closure of ``fpgalab[lab]`` less that of ``fpgalab``, read with
``importlib.metadata``, each distribution's files (its RECORD, scripts included)
summed. The whole lab install is the client's plus that.

Sizes in MiB (2**20 bytes), as ``du -sh`` shows them; .pyc files included, as pip
writes them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("service", "backends", "sim", "hil")
MIB = 2**20

#: Run with the measured virtualenv's python: each distribution's size, and whether it
#: is pure Python.
DISTS = """
import json
from importlib.metadata import distributions

rows = {}
for d in distributions():
    size = 0
    for f in d.files or []:
        try:
            size += d.locate_file(f).stat().st_size
        except OSError:
            pass
    wheel = d.read_text("WHEEL") or ""
    rows[d.metadata["Name"]] = [d.version, size, "Root-Is-Purelib: true" in wheel]
print(json.dumps(rows))
"""


def du_kib(path: Path) -> int:
    """``du -sk path``: the disk it takes, in KiB."""
    done = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def client_venv(folder: Path) -> Path:
    """A fresh virtualenv in ``folder`` with the wheel installed without extras."""
    tree = folder / "tree"
    for name in SOURCES:
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(folder), str(tree)], check=True)
    [wheel] = folder.glob("fpgalab-*.whl")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = [*pip, "--python", str(venv / "bin" / "python"), "install"]
    subprocess.run([*install, "--root-user-action=ignore", str(wheel)], check=True)
    return venv


def site_packages(venv: Path) -> Path:
    [found] = (venv / "lib").glob("python3*/site-packages")
    return found


def closure(name: str, extras: frozenset[str] = frozenset()) -> dict[str, Distribution]:
    """The installed distributions ``name[extras]`` requires, itself included."""
    found: dict[str, Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(name, extras)]
    while todo:
        dist_name, wanted = todo.pop()
        key = canonicalize_name(dist_name)
        if (key, wanted) in seen:
            continue
        seen.add((key, wanted))
        try:
            dist = found.get(key) or distribution(dist_name)
        except PackageNotFoundError:
            continue  # a marker-less optional one this platform does not install
        found[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(
                req.marker.evaluate({"extra": extra}) for extra in (*wanted, "")
            ):
                todo.append((req.name, frozenset(req.extras)))
    return found


def size(dist: Distribution) -> int:
    total = 0
    for f in dist.files or []:
        with contextlib.suppress(OSError):  # listed but gone
            total += Path(str(dist.locate_file(f))).stat().st_size
    return total


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client-venv", type=Path, help="measure this virtualenv's client")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fpgalab-install-") as tmp:
        venv = args.client_venv or client_venv(Path(tmp))
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-I", "-c", DISTS],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows = json.loads(done.stdout)
        client_kib = du_kib(site_packages(venv))

    print("client: pip install fpgalab (no extras), a fresh virtualenv's site-packages")
    for name, (version, n, pure) in sorted(rows.items(), key=lambda r: -r[1][1]):
        print(f"  {name:24} {version:18} {mib(n):>10}{'' if pure else '  (compiled)'}")
    print(f"  {'total (du -sk)':43} {mib(client_kib * 1024):>10}")

    client = closure("fpgalab")
    lab = {k: d for k, d in closure("fpgalab", frozenset({"lab"})).items() if k not in client}
    print(f"\nlab: what fpgalab[lab] adds, as installed in {sys.prefix}")
    added = 0
    for dist in sorted(lab.values(), key=lambda d: -size(d)):
        n = size(dist)
        added += n
        print(f"  {dist.metadata['Name']:24} {dist.version:18} {mib(n):>10}")
    print(f"  {'total added':43} {mib(added):>10}")
    print(f"\nclient install: {mib(client_kib * 1024)} in {len(rows)} distributions")
    print(f"lab install (client + lab extra): {mib(client_kib * 1024 + added)}, "
          f"{len(rows) + len(lab)} distributions")  # fmt: skip


if __name__ == "__main__":
    main()
