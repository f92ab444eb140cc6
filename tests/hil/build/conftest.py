"""Fixtures of the build pipeline's tests: the sandbox they are about."""

from __future__ import annotations

import os

import pytest

from fpgalab.hil.build.sandbox import Sandbox, SandboxUnavailable


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    """The build sandbox (skipped where it cannot run, except in CI, where it must)."""
    sandbox = Sandbox()
    try:
        sandbox.check()
    except SandboxUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    return sandbox
