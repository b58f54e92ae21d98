"""probe.wait_ready: polls /ready until 200, stops at once on an abort reason, names the last answer on timeout."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import requests

from orchestrator import probe


def answers(monkeypatch, *codes):
    """requests.get answers these status codes in turn (None: connection refused), then the last one."""
    seen: list[str] = []
    queue = list(codes)

    def get(url, timeout):
        seen.append(url)
        code = queue.pop(0) if len(queue) > 1 else queue[0]
        if code is None:
            raise requests.ConnectionError("refused")
        return SimpleNamespace(status_code=code)

    monkeypatch.setattr(probe.requests, "get", get)
    return seen


def test_wait_ready_polls_until_200(monkeypatch):
    seen = answers(monkeypatch, None, 503, 200)
    assert probe.wait_ready("http://slot", timeout_s=30, interval_s=0.001) >= 0
    assert seen == ["http://slot/ready"] * 3


def test_an_abort_reason_stops_the_wait_at_once(monkeypatch):
    seen = answers(monkeypatch, 503)
    with pytest.raises(probe.ProbeError, match=r"^http://slot never became ready: the container exited$"):
        probe.wait_ready("http://slot", timeout_s=30, abort=lambda: "the container exited", interval_s=0.001)
    assert len(seen) == 1


def test_the_timeout_names_the_last_answer(monkeypatch):
    answers(monkeypatch, None, 503)
    with pytest.raises(probe.ProbeError, match=r"not ready after 0.05s \(/ready answered 503\)"):
        probe.wait_ready("http://slot", timeout_s=0.05, interval_s=0.001)
    answers(monkeypatch, None)
    with pytest.raises(probe.ProbeError, match=r"\(/ready unreachable \(ConnectionError\)\)"):
        probe.wait_ready("http://slot", timeout_s=0, interval_s=0.001)
