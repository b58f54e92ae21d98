"""Waiting for a serving process the tests started themselves (uvicorn in a subprocess)."""

from __future__ import annotations

import subprocess

import pytest

from orchestrator import probe


def wait_process_ready(url: str, proc: subprocess.Popen, timeout: float, name: str = "service") -> None:
    """orchestrator.probe.wait_ready (the switch's own wait), stopped at once if `proc` exits; fails the test."""
    def exited() -> str | None:
        if proc.poll() is None:
            return None
        return f"{name} exited with {proc.returncode}: {proc.stderr.read()[-2000:] if proc.stderr else ''}"

    try:
        probe.wait_ready(url, timeout, abort=exited)
    except probe.ProbeError as e:
        pytest.fail(str(e))
