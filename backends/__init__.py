"""Lab backends: a registry of names, and ``get_backend`` to make one.

Backends are imported only when asked for, so the service never imports LiteX,
cocotb or pyserial itself.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from fpgalab.backends.base import (
    DEFAULT_BUILD_TIMEOUT,
    FILENAME_RULE,
    MAX_BOARDS,
    NAME_RULE,
    NUM_BOARDS,
    Backend,
    BackendError,
    BackendUnavailable,
    BoardError,
    Build,
    Design,
    DesignError,
    HealthReport,
    LogFn,
    Op,
    TracedRun,
    TraceRequest,
    Transaction,
    TransactResult,
    Waveform,
    filename_problem,
    lab_data_dir,
    name_problem,
    span_problem,
)

__all__ = [
    "DEFAULT_BUILD_TIMEOUT",
    "FILENAME_RULE",
    "MAX_BOARDS",
    "NAME_RULE",
    "NUM_BOARDS",
    "REGISTRY",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "BoardError",
    "Build",
    "Design",
    "DesignError",
    "HealthReport",
    "LogFn",
    "Op",
    "TraceRequest",
    "TracedRun",
    "TransactResult",
    "Transaction",
    "UnknownBackend",
    "Waveform",
    "check_backend",
    "filename_problem",
    "get_backend",
    "lab_data_dir",
    "name_problem",
    "span_problem",
]

#: Backend name -> "module:Class".
REGISTRY: dict[str, str] = {
    "sim": "fpgalab.backends.sim:SimBackend",
    "hardware": "fpgalab.backends.hardware:HardwareBackend",
}


class UnknownBackend(ValueError):
    pass


def _target(name: str) -> tuple[str, str]:
    module_name, sep, class_name = REGISTRY.get(name, name).partition(":")
    if not sep or not module_name or not class_name:
        valid = ", ".join(sorted(REGISTRY))
        raise UnknownBackend(f"unknown backend {name!r}: choose one of {valid} (or module:Class)")
    return module_name, class_name


def check_backend(name: str) -> None:
    """Fail fast on a backend name that cannot work, without importing it."""
    module_name, _ = _target(name)
    try:
        found = importlib.util.find_spec(module_name)
    except ImportError:
        found = None
    if found is None:
        raise UnknownBackend(f"backend {name!r} is not available here: no module {module_name}")


def get_backend(name: str, **options: Any) -> Backend:
    """Make the backend ``name`` (a registered name, or ``package.module:Class``)."""
    module_name, class_name = _target(name)
    target = f"{module_name}:{class_name}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownBackend(f"backend {name!r} is not available here: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UnknownBackend(f"backend {name!r}: {module_name} has no {class_name}")
    backend = cls(**options)
    if not isinstance(backend, Backend):
        raise UnknownBackend(f"backend {name!r}: {target} does not implement the Backend protocol")
    return backend
