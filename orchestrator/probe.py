"""HTTP probes of a serving container: wait until /ready says 200, read JSON endpoints."""

from __future__ import annotations

import time
from typing import Any, Callable

import requests

from orchestrator.errors import ProbeError  # noqa: F401  (raised here; the tree is errors.py)
from orchestrator.polling import NotYet, PollTimeout, poll_until



def get_json(url: str, timeout: float = 10.0) -> Any:
    """GET `url` and return its JSON body; a clear ProbeError on anything but a 2xx JSON answer."""
    try:
        r = requests.get(url, timeout=timeout)
    except requests.RequestException as e:
        raise ProbeError(f"GET {url} failed ({type(e).__name__})") from None
    if not r.ok:
        raise ProbeError(f"GET {url} answered {r.status_code}: {r.text[:200]}")
    try:
        return r.json()
    except ValueError:
        raise ProbeError(f"GET {url} did not answer JSON") from None


def post_json(url: str, body: Any, timeout: float = 60.0, headers: dict[str, str] | None = None) -> Any:
    try:
        r = requests.post(url, json=body, timeout=timeout, headers=headers)
    except requests.RequestException as e:
        raise ProbeError(f"POST {url} failed ({type(e).__name__})") from None
    if not r.ok:
        raise ProbeError(f"POST {url} answered {r.status_code}: {r.text[:200]}")
    try:
        return r.json()
    except ValueError:
        raise ProbeError(f"POST {url} did not answer JSON") from None


def health_failure(base_url: str) -> str | None:
    """The service's own account of a failed start: /health answers state "failed" with an error."""
    try:
        r = requests.get(f"{base_url}/health", timeout=2)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    except (requests.RequestException, ValueError):
        return None
    if isinstance(body, dict) and body.get("state") == "failed":
        return f"loading failed: {body.get('error') or 'no reason given'}"
    return None


def wait_ready(base_url: str, timeout_s: float, abort: Callable[[], str | None] | None = None,
               interval_s: float = 0.25) -> float:
    """Poll GET {base_url}/ready until it answers 200; return the seconds that took.

    `abort()` is asked between polls; a reason it returns (e.g. "the container exited with
    code 1") stops the wait at once instead of running into the timeout.

    Raises:
        ProbeError: on timeout (naming the last answer) or when abort() gives a reason.
    """
    start = time.monotonic()
    url = f"{base_url}/ready"

    def ready() -> bool | NotYet:
        try:
            r = requests.get(url, timeout=2)
            if r.status_code == 200:
                return True
            last = NotYet(f"/ready answered {r.status_code}")
        except requests.RequestException as e:
            last = NotYet(f"/ready unreachable ({type(e).__name__})")
        reason = abort() if abort is not None else None
        if reason:
            raise ProbeError(f"{base_url} never became ready: {reason}")
        return last

    try:
        poll_until(ready, timeout=timeout_s, interval=interval_s, what=url)
    except PollTimeout as e:
        raise ProbeError(f"{base_url} not ready after {timeout_s:g}s ({e.last or 'no answer yet'})") from None
    return time.monotonic() - start
