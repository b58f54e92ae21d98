"""The kubectl the Kubernetes tests drive: on PATH, or where `AADS_KUBECTL` points.

`make engine` (scripts/engine.sh) installs Debian trixie's kubectl 1.32 where none new enough is
found, so a missing kubectl is a broken set-up: the tests that need it fail, naming the fix,
instead of skipping and reporting green without checking a single Kubernetes promise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _find() -> str | None:
    if os.environ.get("AADS_KUBECTL"):
        return os.environ["AADS_KUBECTL"]
    # scripts/engine.sh installs into ~/.local/bin when not root, which may not be on PATH.
    fallback = Path.home() / ".local" / "bin" / "kubectl"
    return shutil.which("kubectl") or (str(fallback) if fallback.is_file() else None)


KUBECTL = _find()


def kubectl() -> str:
    """The kubectl binary, or a test failure that says how to install it."""
    if KUBECTL is None:
        pytest.fail("kubectl is not installed: `make engine` (scripts/engine.sh) installs Debian trixie's "
                    "kubectl 1.32; or point AADS_KUBECTL at one")
    return KUBECTL
