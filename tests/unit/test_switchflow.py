"""The switch's test pause hook (orchestrator/switchflow.py): the crash tests stop a switch with it."""

from __future__ import annotations

import threading
import time

from orchestrator import switchflow


def test_the_pause_hook_does_nothing_unless_its_point_is_named(monkeypatch, tmp_path):
    reached = tmp_path / "reached"
    monkeypatch.setenv("AADS_PAUSE_AT_STEP", "flip:drained")
    monkeypatch.setenv("AADS_PAUSE_SECONDS", "30")
    monkeypatch.setenv("AADS_PAUSE_REACHED_FILE", str(reached))
    switchflow.pause_hook("flip")
    switchflow.pause_hook("flip:enabled")
    assert not reached.exists()


def test_the_pause_hook_says_where_it_waits_and_goes_on_when_the_file_is_deleted(monkeypatch, tmp_path):
    reached = tmp_path / "reached"
    monkeypatch.setenv("AADS_PAUSE_AT_STEP", "flip:enabled")
    monkeypatch.delenv("AADS_PAUSE_SECONDS", raising=False)  # the 60 s default
    monkeypatch.setenv("AADS_PAUSE_REACHED_FILE", str(reached))
    waiter = threading.Thread(target=switchflow.pause_hook, args=("flip:enabled",), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 60
    # the file is created, then written: wait for its content, not just its name
    while not (reached.exists() and reached.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reached.read_text() == "flip:enabled\n"
    assert waiter.is_alive()            # it waits there...
    reached.unlink()
    waiter.join(timeout=60)
    assert not waiter.is_alive()        # ...until the file is gone


def test_the_pause_hook_waits_the_pause_seconds_without_a_file(monkeypatch):
    monkeypatch.setenv("AADS_PAUSE_AT_STEP", "ready")
    monkeypatch.setenv("AADS_PAUSE_SECONDS", "0.2")
    monkeypatch.delenv("AADS_PAUSE_REACHED_FILE", raising=False)
    start = time.monotonic()
    switchflow.pause_hook("ready")
    assert time.monotonic() - start >= 0.2
